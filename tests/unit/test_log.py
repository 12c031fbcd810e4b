"""The log line format and the log file's life under logrotate."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policy_milter.log import (
    MAX_TRACE,
    MAX_VALUE,
    DecisionLog,
    configure,
    fields,
    quote,
    reopen,
)
from policy_milter.model import Connection
from policy_milter.stages import Stage


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
    ("\U000e0001 tag", '"\\U000e0001 tag"'),  # unassigned: escaped in eight digits
])
def test_values_are_quoted_so_no_input_forges_a_line(value: str, expected: str) -> None:
    assert quote(value) == expected
    assert "\n" not in fields(k=value)


_UNESCAPE = {'"': '"', "\\": "\\", "n": "\n", "r": "\r", "t": "\t"}
_CUT = re.compile(r"\.\.\.\[\+(\d+) chars\]\Z")


def unquote(value: str) -> str:
    """The text a logfmt value stands for: what a log reader recovers."""
    if not value.startswith('"'):
        return value
    assert value.endswith('"') and len(value) >= 2
    out, body, i = [], value[1:-1], 0
    while i < len(body):
        ch = body[i]
        assert ch != '"' and ch.isprintable(), f"unescaped {ch!r} at {i} in {value!r}"
        if ch != "\\":
            out.append(ch)
            i += 1
        elif body[i + 1] in _UNESCAPE:
            out.append(_UNESCAPE[body[i + 1]])
            i += 2
        elif body[i + 1] == "x":
            out.append(chr(0xDC00 + int(body[i + 2:i + 4], 16)))
            i += 4
        else:
            digits = {"u": 4, "U": 8}[body[i + 1]]
            out.append(chr(int(body[i + 2:i + 2 + digits], 16)))
            i += 2 + digits
    return "".join(out)


def logged(text: str, limit: int = MAX_VALUE) -> str:
    """What ``quote`` must keep of ``text``: all of it, or its head and a count."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...[+{len(text) - limit} chars]"


@pytest.mark.parametrize("text", [
    "h" * 60_000,  # a 60 KB HELO
    "\x07" * 5_000,  # every character an escape of six
    '"' * (MAX_VALUE - 1) + "\n" * 10,  # the cut right after an escape
    "a" * (MAX_VALUE - 1) + "\udcff" * 3,  # and in the middle of undecodable bytes
    "ü\udcfe\\" * 700,
])
def test_long_values_are_cut_with_a_count_and_stay_escaped(text: str) -> None:
    value = quote(text)
    assert unquote(value) == logged(text)
    assert _CUT.search(unquote(value))
    assert len(value) <= 10 * MAX_VALUE + 30 and "\n" not in value


def test_values_up_to_the_cap_are_whole() -> None:
    assert quote("a" * MAX_VALUE) == "a" * MAX_VALUE
    assert quote("a" * (MAX_VALUE + 1)) == f'"{"a" * MAX_VALUE}...[+1 chars]"'


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=3 * MAX_VALUE) | st.text(st.sampled_from('"\\\n\x00\udcff a='),
                                                      min_size=MAX_VALUE - 5,
                                                      max_size=MAX_VALUE + 5))
def test_any_value_reads_back_as_its_text_or_its_cut_head(text: str) -> None:
    value = quote(text)
    assert unquote(value) == logged(text)
    assert "\n" not in value and "\r" not in value


def test_a_hostile_session_is_one_bounded_line(caplog: pytest.LogCaptureFixture) -> None:
    """Every value is cut, the traceback at its own larger cap."""
    conn = Connection(client_name="n" * 50_000, helo="\x00" * 50_000)
    err = ValueError("\x00" * 50_000)
    with caplog.at_level(logging.ERROR):
        DecisionLog().internal_error(Stage.HELO, conn, None, err)
    (line,) = [r.getMessage() for r in caplog.records]
    assert "\n" not in line
    assert len(line) < 10 * (4 * MAX_VALUE + MAX_TRACE) + 500
    trace = f"ValueError: {err}"
    assert line.count("...[+49000 chars]") == 2  # client_name, helo
    assert f"...[+{len(repr(err)) - MAX_VALUE} chars]" in line
    assert line.endswith(f'...[+{len(trace) - MAX_TRACE} chars]" session=""')


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
