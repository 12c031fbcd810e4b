"""The hostile-input battery: each way around the content rules that once worked, and
generated variants of each, over the milter protocol against a real milter process.

Every case gets the rules' answer (refused), or, where the milter could not look at
everything, "not fully checked" (accepted with X-Policy-Unchecked under the default
unscannable_action): never a silent pass, never a 451 for a message that will be the
same on every retry.  After each, a clean message on the same milter still passes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policy_milter import catalogue
from policy_milter.engine import UNCHECKED_HEADER
from policy_milter.mtaclient import EomResult, Reply
from tests.conftest import copy_rules
from tests.milter.conftest import MilterProcess, start_milter
from tests.support.hostile import (
    after_many_fields,
    nested_messages,
    nested_multiparts,
    nested_zips,
    with_attachment,
    zipped,
)
from tests.support.session import mail_from

RULES = ["header Subject=/lottery/i reject", "attachment *.exe reject",
         "body /(x+x+)+y/ reject"]
CLEAN = b"From: a@sender.example\r\nSubject: hello\r\n\r\nHello.\r\n"
SETTINGS = dict(content_max_size="64K", mime_max_depth="100", archive_max_depth="4",
                archive_max_entries="2000")


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MilterProcess]:
    work = tmp_path_factory.mktemp("hostile")
    rules = copy_rules(work / "rules", **SETTINGS)
    (rules / "filters").write_text("".join(f"{r}\n" for r in RULES))
    process = start_milter(rules, work)
    yield process
    assert process.stop() == 0


def send(milter: MilterProcess, raw: bytes) -> EomResult:
    with milter.client() as client:
        assert mail_from(client).passed
        assert client.rcpt("<postmaster@example.com>").passed
        assert client.data().passed
        result = client.message(raw)
    assert isinstance(result, EomResult), result
    return result


def refused(result: EomResult) -> bool:
    e = catalogue.get("content_rejected")
    return (result.reply.action, result.reply.code, result.reply.enhanced,
            result.reply.text) == ("replycode", e.code, e.enhanced, e.text)


def unchecked(result: EomResult) -> str:
    """The X-Policy-Unchecked header of an accepted message, '' when it has none."""
    assert result.reply.action == "continue", result.reply
    headers = {args[0]: args[1] for kind, args in result.modifications if kind == "addheader"}
    return headers.get(UNCHECKED_HEADER, "")


def alive(milter: MilterProcess) -> None:
    result = send(milter, CLEAN)
    assert result.reply.action == "continue" and not unchecked(result)


CASES = {
    "a Subject after 1,200 other fields": (after_many_fields(1200, b"Subject: LOTTERY win"),
                                           "refused"),
    "outer.zip, inner.zip, evil.exe": (with_attachment(nested_zips(3), "outer.zip"),
                                       "refused"),
    "a zip whose 1,001st entry is evil.exe": (
        with_attachment(zipped(*(f"f{i}.txt" for i in range(1000)), "evil.exe"), "many.zip"),
        "refused"),
    "a zip attached as report.pdf": (with_attachment(zipped("evil.exe"), "report.pdf",
                                                     "application/pdf"), "refused"),
    "an .exe in a message over content_max_size": (
        with_attachment(zipped("evil.exe"), "x.zip", text="filler " * 20_000), "refused"),
    "1,000 nested multiparts": (nested_multiparts(1000), "MIME nesting deeper than 100"),
    "1,000 nested attached messages": (nested_messages(1000), "MIME nesting deeper than 100"),
    "a regex built to backtrack": (b"Subject: t\r\n\r\n" + b"x" * 30_000, "clean"),
}


@pytest.mark.parametrize("case", CASES, ids=CASES.keys())
def test_each_dodge_gets_the_rules_answer(hostile: MilterProcess, case: str) -> None:
    raw, expected = CASES[case]
    result = send(hostile, raw)
    if expected == "refused":
        assert refused(result), result.reply
    elif expected == "clean":
        assert not unchecked(result)
    else:
        assert unchecked(result).startswith(f"filters: {expected}")
    alive(hostile)


GENERATED = settings(max_examples=15, deadline=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture,
                                            HealthCheck.too_slow])


@GENERATED
@given(count=st.integers(0, 3000))
def test_a_field_after_any_number_of_others(hostile: MilterProcess, count: int) -> None:
    assert refused(send(hostile, after_many_fields(count, b"Subject: the LOTTERY")))
    alive(hostile)


@GENERATED
@given(depth=st.integers(1, 7))
def test_archives_nested_at_any_depth(hostile: MilterProcess, depth: int) -> None:
    """Found to archive_max_depth (4); deeper: not fully checked, never a pass."""
    result = send(hostile, with_attachment(nested_zips(depth), "a.zip"))
    if depth <= 4:
        assert refused(result), (depth, result.reply)
    else:
        assert "archives nested deeper than 4" in unchecked(result)
    alive(hostile)


@GENERATED
@given(entries=st.integers(1, 2500), where=st.floats(0, 1))
def test_an_entry_anywhere_in_an_archive(hostile: MilterProcess, entries: int,
                                         where: float) -> None:
    """Found within archive_max_entries (2000); past it, found or not fully checked."""
    names = [f"f{i}.txt" for i in range(entries)]
    names.insert(int(where * entries), "evil.exe")
    result = send(hostile, with_attachment(zipped(*names), "list.zip"))
    if entries + 1 <= 2000:
        assert refused(result)
    else:
        assert refused(result) or "more than 2000 entries" in unchecked(result)
    alive(hostile)


@GENERATED
@given(depth=st.one_of(st.integers(1, 300), st.sampled_from([100, 101])),
       messages=st.booleans())
def test_any_mime_depth(hostile: MilterProcess, depth: int, messages: bool) -> None:
    """Followed to mime_max_depth (100); deeper: not fully checked."""
    raw = (nested_messages if messages else nested_multiparts)(depth)
    note = unchecked(send(hostile, raw))
    assert ("MIME nesting deeper than 100" in note) == (depth > 100)
    alive(hostile)


def test_the_battery_ran_against_the_rules_it_claims(hostile: MilterProcess) -> None:
    """The milter under test has the rules above, and its log names them."""
    rules = Path(hostile.rules) / "filters"
    assert rules.read_text().splitlines() == RULES
    send(hostile, CASES["a zip attached as report.pdf"][0])
    line = hostile.wait_for_log("check=filters action=reject")
    assert f"{rules}:2" in line


def test_no_reply_is_a_451(hostile: MilterProcess) -> None:
    """What the battery sends never gets a temporary failure: each would come back the
    same on every retry."""
    for raw, _ in CASES.values():
        assert send(hostile, raw).reply.code[:1] != "4"
    assert not isinstance(send(hostile, CLEAN), Reply)
