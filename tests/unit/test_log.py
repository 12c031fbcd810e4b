"""The log line format and the log file's life under logrotate."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from policy_milter.log import configure, fields, quote, reopen


@pytest.mark.parametrize("value, expected", [
    ("plain", "plain"),
    ("", '""'),
    ("two words", '"two words"'),
    ('say "hi"', '"say \\"hi\\""'),
    ("a=b", '"a=b"'),
    ("back\\slash", '"back\\\\slash"'),
    ("line\nbreak\r", '"line\\nbreak\\r"'),
    ("bell\x07", '"bell\\u0007"'),
    ("bytes\udcff", '"bytes\\xff"'),
    ("grüße", '"grüße"'),
])
def test_values_are_quoted_so_no_input_forges_a_line(value: str, expected: str) -> None:
    assert quote(value) == expected
    assert "\n" not in fields(k=value)


def test_log_file_is_reopened_after_rotation(tmp_path: Path) -> None:
    path = tmp_path / "milter.log"
    logger = configure(f"file:{path}")
    try:
        logger.info("before")
        path.rename(tmp_path / "milter.log.1")
        logger.info("still to the moved file")
        reopen(logger)
        logger.info("after")
    finally:
        for handler in list(logger.handlers):
            handler.close()
            logger.removeHandler(handler)
        logger.propagate = True
        logger.setLevel(logging.NOTSET)
    assert "still to the moved file" in (tmp_path / "milter.log.1").read_text()
    new = path.read_text()
    assert "after" in new and "before" not in new and new.startswith("ts=")
