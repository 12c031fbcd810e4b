"""The catalogue is pinned, row by row, to the seed FAQ it comes from."""

from __future__ import annotations

from pathlib import Path

import pytest

from policy_milter import catalogue
from policy_milter.catalogue import Kind
from policy_milter.stages import Stage

SEED_ROWS = Path(__file__).resolve().parents[1] / "fixtures" / "seed_rows.tsv"


def seed_rows() -> list[tuple[str, str, str]]:
    """(code, enhanced code, text) of each row of the seed FAQ, in order ('' for none)."""
    rows = []
    for line in SEED_ROWS.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            continue
        code, enhanced, text = line.split("\t")
        rows.append((code.strip("-"), enhanced.strip("-"), text))
    return rows


def test_seed_has_34_rows() -> None:
    assert len(seed_rows()) == 34


@pytest.mark.parametrize("row", range(1, 35))
def test_row_matches_seed_character_for_character(row: int) -> None:
    (entry,) = [e for e in catalogue.ENTRIES.values() if e.row == row]
    assert (entry.code, entry.enhanced, entry.text) == seed_rows()[row - 1]


def test_reply_lines_render_code_enhanced_and_text() -> None:
    entry = catalogue.get("relay_denied")
    assert entry.reply_line() == f"{entry.code} {entry.enhanced} {entry.text}"


def test_setreply_doubles_percent_and_sanitises_detail() -> None:
    code, enhanced, text = catalogue.get("virus_found").setreply_args("Eicar 100%\r\nX: y")
    assert (code, enhanced) == ("554", "5.7.1")
    assert text.endswith("(Eicar 100%%??X: y)")
    assert "\r" not in text and "\n" not in text


def test_outcomes_and_mta_side_rows_are_marked() -> None:
    kinds = {e.row: e.kind for e in catalogue.ENTRIES.values() if e.row}
    assert {r for r, k in kinds.items() if k is Kind.OUTCOME} == {30, 31}
    assert {r for r, k in kinds.items() if k is Kind.MTA_SIDE} == {6, 7, 11, 14}


def test_temporary_failures_are_4xx_with_class_4_enhanced_codes() -> None:
    temporary = [e for e in catalogue.ENTRIES.values() if e.row is None]
    assert temporary and all(e.temporary and e.enhanced.startswith("4.") for e in temporary)


def test_stage_restrictions_follow_the_catalogue() -> None:
    assert catalogue.get("helo_requires_domain").stages == {Stage.HELO}
    assert catalogue.get("permission_denied").stages == set(Stage)


@pytest.mark.parametrize("bad, message", [
    (dict(code="250"), "4xx or 5xx"),
    (dict(enhanced="4.7.1"), "class must match"),
    (dict(text="two\r\nlines"), "printable ASCII"),
    (dict(text="x" * 600), "too long"),
])
def test_validation_refuses_malformed_entries(bad: dict[str, str], message: str) -> None:
    good = catalogue.get("relay_denied")
    fields = dict(name="broken", row=None, code=good.code, enhanced=good.enhanced,
                  text=good.text, stages=good.stages) | bad
    rows = tuple(e for e in catalogue.ENTRIES.values()) + (catalogue.Entry(**fields),)
    with pytest.raises(ValueError, match=message):
        catalogue._validate(rows)


def test_unknown_name_is_an_error() -> None:
    with pytest.raises(catalogue.UnknownEntry):
        catalogue.get("no_such_entry")
