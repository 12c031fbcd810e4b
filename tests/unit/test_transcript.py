"""The log as a record of what happened: the envelope line, the rules hash on every
decision, and reading it all back (logread) exactly as it was written."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from policy_milter import logread
from policy_milter.engine import Engine, Session
from policy_milter.log import quote
from policy_milter.rules.policy import Policy, load
from policy_milter.services import Services
from policy_milter.transcript import MAX_RCPTS_CHARS, Envelope
from tests.conftest import FIXTURE_RULES


def records(caplog: pytest.LogCaptureFixture, event: str) -> list[logread.Record]:
    found = [logread.parse(f"level=info {r.getMessage()}") for r in caplog.records]
    return [r for r in found if r is not None and r.event == event]


def greeted(engine: Engine, helo: str = "mx.sender.example") -> Session:
    s = engine.session()
    s.connect("192.0.2.10", "mx.sender.example", "smtpd")
    s.helo(helo, False)
    return s


def test_one_envelope_per_transaction_with_every_answer(
        session: Session, caplog: pytest.LogCaptureFixture, fixture_policy: Policy) -> None:
    with caplog.at_level(logging.INFO):
        session.mail("<a@sender.example>", ["SIZE=1000", "BODY=8BITMIME"], "", "")
        session.rcpt("<nobody@example.com>", [], "Q7")
        session.rcpt("<Postmaster+tag@EXAMPLE.com>", ["NOTIFY=NEVER"], "Q7")
        session.eom("Q7")
    [env] = records(caplog, "envelope")
    assert (env["qid"], env["client"], env["helo"], env["listener"]) == (
        "Q7", "192.0.2.10", "mx.sender.example", "smtpd")
    assert (env["mail_from"], env["params"], env["size"]) == (
        "<a@sender.example>", "SIZE=1000 BODY=8BITMIME", "1000")
    assert (env["result"], env["stage"], env["rcpts_omitted"]) == ("accept", "eom", "0")
    [refusal] = [r for r in records(caplog, "decision") if r["action"] == "reject"]
    nobody, postmaster = json.loads(env["rcpts"])
    assert nobody == ["<nobody@example.com>", "reject", refusal["rule"]]
    assert refusal["rule"].endswith("domains:1")
    assert postmaster == ["<Postmaster+tag@EXAMPLE.com>", "accept", "", ["NOTIFY=NEVER"]]
    assert env["rules_hash"] == fixture_policy.digest


@pytest.mark.parametrize("sender, then, result, stage", [
    ("<a@blocked.example>", lambda s: None, "reject", "mail"),
    ("<a@sender.example>", lambda s: s.abort(), "abort", ""),
    ("<a@sender.example>", lambda s: s.data("Q1"), "reject", "data"),  # no recipient
    ("<a@sender.example>", lambda s: s.rcpt("<postmaster@example.com>", [], "Q1"), "abort", ""),
])
def test_every_way_a_transaction_ends_is_logged_once(
        session: Session, caplog: pytest.LogCaptureFixture, sender: str,
        then: Callable[[Session], object], result: str, stage: str) -> None:
    with caplog.at_level(logging.INFO):
        session.mail(sender, [], "", "Q1")
        then(session)
        session.close()
    [env] = records(caplog, "envelope")
    assert (env["mail_from"], env["result"], env["stage"]) == (sender, result, stage)
    assert env["qid"] == "Q1"  # as the MTA named it at MAIL, refused there or not


def test_a_new_mail_ends_the_previous_transaction(
        session: Session, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        session.mail("<first@sender.example>", [], "", "Q1")
        session.rcpt("<postmaster@example.com>", [], "Q1")
        session.mail("<second@sender.example>", [], "", "Q2")
        session.close()
    first, second = records(caplog, "envelope")
    assert (first["mail_from"], first["result"], first["qid"]) == (
        "<first@sender.example>", "abort", "Q1")
    assert json.loads(first["rcpts"]) == [["<postmaster@example.com>", "accept", ""]]
    assert (second["mail_from"], second["rcpts"]) == ("<second@sender.example>", "[]")


def test_a_refused_greeting_without_mail_is_logged(
        engine: Engine, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        greeted(engine, helo="bad host!").close()
        greeted(engine).close()  # greets and leaves: nothing to replay
        scanner = engine.session()  # connects and leaves
        scanner.connect("192.0.2.11", "", "smtpd")
        scanner.close()
    [env] = records(caplog, "envelope")
    assert (env["helo"], env["mail_from"], env["result"], env["stage"]) == (
        "bad host!", "", "reject", "helo")


def test_message_decisions_name_their_recipients(
        session: Session, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        session.mail("<a@sender.example>", [], "", "Q3")
        session.rcpt("<postmaster@example.com>", [], "Q3")
        session.rcpt("<abuse@example.com>", [], "Q3")
        session.eom("Q3")
    [accepted] = [r for r in records(caplog, "decision") if r["stage"] == "eom"]
    assert accepted["rcpt"] == "postmaster@example.com,abuse@example.com"


def test_a_huge_recipient_list_stays_valid_json() -> None:
    env = Envelope("<a@b.example>")
    env.rcpts = [(f"<user{i:05d}@example.com>", (), "accept", "") for i in range(5000)]
    text, omitted = env.rcpts_json()
    assert len(text) <= MAX_RCPTS_CHARS
    assert len(json.loads(text)) + omitted == 5000 and omitted > 0


@pytest.mark.parametrize("value", [
    'plain', 'with space', 'quote " and \\ backslash', "new\nline\r\ttab",
    "8-bit \udcff\udcfe bytes", "unicode ü € \U0001f600", "\x00\x1b[31m", "", "a=b c=d",
])
def test_logread_reads_back_what_the_log_wrote(value: str) -> None:
    line = f"ts=2026-11-30T10:11:12.345Z level=info event=decision helo={quote(value)} rcpt=x"
    record = logread.parse(line)
    assert record is not None
    assert (record["helo"], record["rcpt"], record.event) == (value, "x", "decision")
    assert record.when is not None and record.when.isoformat() == "2026-11-30T10:11:12.345000+00:00"


@pytest.mark.parametrize("line, stamp", [
    ("Nov 30 10:11:12 mx policy-milter[812]: level=info event=start", "2026-11-30T10:11:12"),
    ("2026-11-30T11:11:12+01:00 mx policy-milter[812]: level=info event=start",
     "2026-11-30T10:11:12"),
    ("policy-milter: level=info event=start", None),
])
def test_logread_takes_the_carriers_time_stamp(line: str, stamp: str | None) -> None:
    record = logread.parse(line, year=2026)
    assert record is not None and record.event == "start"
    assert (record.when.strftime("%Y-%m-%dT%H:%M:%S") if record.when else None) == stamp


@pytest.mark.parametrize("line", ["", "Nov 30 10:11:12 mx postfix/smtpd[1]: connect from x",
                                  "random text with event=decision but no level"])
def test_logread_skips_lines_that_are_not_ours(line: str) -> None:
    assert logread.parse(line) is None


def test_rules_hash_follows_content_not_place(tmp_path: Path) -> None:
    copy = shutil.copytree(FIXTURE_RULES, tmp_path / "copy")
    assert load(copy).digest == load(FIXTURE_RULES).digest
    with (copy / "access").open("a") as access:
        access.write("sender @another.example reject\n")
    assert load(copy).digest != load(FIXTURE_RULES).digest


def test_every_decision_line_carries_the_rules_hash(
        engine: Engine, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        s = greeted(Engine(engine.plan.policy, Services()))
        s.mail("<a@blocked.example>", [], "", "Q1")
        s.close()
    decisions = records(caplog, "decision")
    assert decisions and {r["rules_hash"] for r in decisions} == {engine.plan.policy.digest}
    assert len(engine.plan.policy.digest) == 12
