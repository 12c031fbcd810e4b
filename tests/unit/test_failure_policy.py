"""One failure policy: the engine alone decides what a failed dependency and a message
too big to check mean, from the setting each check declares.

Each ``*_failure_action`` is proven both ways against ``failure_action`` set the other
way, and left empty it follows ``failure_action``.  Scanners here are stand-ins (the
real clamd and spamd are in tests/milter/test_content_wire.py): they fail, or report
what they could not look at, on demand.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import BinaryIO

import pytest

from policy_milter.decision import Action
from policy_milter.engine import UNCHECKED_HEADER, Engine, Outcome
from policy_milter.rules.policy import load
from policy_milter.services import DependencyError, Services
from policy_milter.services.clamd import VirusResult
from policy_milter.services.dns import Answer, DnsError
from policy_milter.services.spamd import SpamResult


class DeadResolver:
    def submit(self, name: str, rdtype: str) -> Future[Answer]:
        future: Future[Answer] = Future()
        future.set_exception(DnsError(f"{rdtype} {name}: timed out"))
        return future


class Virus:
    """A clamd stand-in: fails, or answers ``result``."""

    def __init__(self, result: VirusResult | None = None) -> None:
        self.result = result

    def scan(self, message: BinaryIO) -> VirusResult:
        if self.result is None:
            raise DependencyError("clamd", "connection refused", entry="scanner_tempfail")
        return self.result


class Spam:
    """A spamd stand-in: fails, or scores every message 0."""

    def __init__(self, works: bool = False) -> None:
        self.works = works
        self.checked = 0

    def check(self, message: BinaryIO, size: int) -> SpamResult:
        if not self.works:
            raise DependencyError("spamd", "connection refused", entry="scanner_tempfail")
        self.checked += 1
        return SpamResult(0.0, 5.0, ())


SCANNERS = dict(clamd="tcp:127.0.0.1:3310", spamd="tcp:127.0.0.1:783")


def send(engine: Engine, body: bytes = b"Hello.\r\n") -> Outcome:
    s = engine.session()
    s.connect("192.0.2.20", "mx.sender.example", "smtpd")
    s.helo("mx.sender.example", False)
    mail = s.mail("<a@sender.example>", [], "", "Q1")
    if mail.stops:
        return Outcome(mail)
    assert not s.rcpt("<postmaster@example.com>", [], "Q1").stops
    s.header("Subject", b"test")
    s.body(body)
    return s.eom("Q1")


def answer(outcome: Outcome) -> str:
    d = outcome.decision
    return d.entry.name if d.entry else d.action.value


# (the check's setting, the services that make its dependency fail, extra settings,
#  the tempfail entry, what the unchecked header then names)
DEPENDENCIES = {
    "dns": ("dns_failure_action", lambda: Services(dns=DeadResolver()),
            dict(rdns="required", dns_nameservers="127.0.0.1"), "dns_tempfail",
            "rdns: dns failed"),
    "clamd": ("virus_failure_action", lambda: Services(virus=Virus(), spam=Spam(True)),
              SCANNERS, "scanner_tempfail", "virus: clamd failed"),
    "spamd": ("spam_failure_action", lambda: Services(virus=Virus(VirusResult()), spam=Spam()),
              SCANNERS, "scanner_tempfail", "spam: spamd failed"),
}


@pytest.mark.parametrize("dependency", DEPENDENCIES)
@pytest.mark.parametrize("own, overall", [("accept", "tempfail"), ("tempfail", "accept"),
                                          ("", "tempfail"), ("", "accept")])
def test_each_failure_setting_both_ways(make_rules: Callable[..., Path],
                                       caplog: pytest.LogCaptureFixture, dependency: str,
                                       own: str, overall: str) -> None:
    setting, services, extra, tempfail, note = DEPENDENCIES[dependency]
    rules = make_rules(failure_action=overall, **{setting: own}, **extra)
    with caplog.at_level(logging.INFO):
        outcome = send(Engine(load(rules), services()))
    applied = own or overall
    if applied == "accept":
        assert answer(outcome) == "continue"
        assert (UNCHECKED_HEADER, note) in outcome.add_headers
    else:
        assert answer(outcome) == tempfail and outcome.decision.action is Action.TEMPFAIL
    failure = [r.getMessage() for r in caplog.records
               if "event=dependency_failure" in r.getMessage()]
    assert failure and f"service={dependency}" in failure[0]
    assert f"action={applied}" in failure[0]
    decided_by = setting if own else "failure_action"
    assert f"{rules / 'policy.conf'}:" in failure[0]  # the setting's file:line
    assert load(rules).where[decided_by] in failure[0]


def test_the_case_that_let_mail_through_unscanned(make_rules: Callable[..., Path]) -> None:
    """spam_failure_action = tempfail with failure_action = accept: a spamd outage defers."""
    rules = make_rules(spam_failure_action="tempfail", failure_action="accept", **SCANNERS)
    outcome = send(Engine(load(rules), Services(virus=Virus(VirusResult()), spam=Spam())))
    assert answer(outcome) == "scanner_tempfail"


def test_a_check_without_a_setting_of_its_own_follows_failure_action(
        make_rules: Callable[..., Path]) -> None:
    class DeadRates:
        def total(self, key: str, window: int) -> int:
            raise DependencyError("state", "unreachable")

        def record(self, key: str, amount: int) -> None:
            raise AssertionError("nothing is recorded after a failure")

    for overall, expected in (("tempfail", "state_tempfail"), ("accept", "continue")):
        s = Engine(load(make_rules(failure_action=overall)),
                   Services(state=DeadRates())).session()  # type: ignore[arg-type]
        s.connect("192.0.2.20", "mx.sender.example", "smtpd")
        s.helo("mx.sender.example", False)
        s.mail("<dora@quota.example>", [], "dora", "")
        d = s.rcpt("<postmaster@example.com>", [], "")
        assert (d.entry.name if d.entry else d.action.value) == expected


# --- not fully checked ------------------------------------------------------------------

NOTICES = {
    "limit notice": VirusResult(("Heuristics.Limits.Exceeded.MaxScanSize",)),
    "email limit notice": VirusResult(("Heuristics.Email.ExceedsMax.MIMEParts",)),
    "null name": VirusResult(("(null)",)),
    "too big to send": VirusResult(unscanned="message of 30 bytes is over clamd_max_size (20)"),
}


@pytest.mark.parametrize("result", NOTICES.values(), ids=NOTICES.keys())
def test_not_fully_checked_is_neither_a_virus_nor_a_failure(
        make_rules: Callable[..., Path], result: VirusResult) -> None:
    """With every failure setting on tempfail, what clamd could not look at is accepted
    marked (the default) or refused with a 5xx: never virus_found, never a 451."""
    strict = dict(failure_action="tempfail", virus_failure_action="tempfail", **SCANNERS)
    accepted = send(Engine(load(make_rules(**strict)),
                           Services(virus=Virus(result), spam=Spam(True))))
    assert answer(accepted) == "continue"
    header = dict(accepted.add_headers)[UNCHECKED_HEADER]
    assert header.startswith("virus: ") and result.not_checked in header
    refused = send(Engine(load(make_rules(unscannable_action="reject", **strict)),
                          Services(virus=Virus(result), spam=Spam(True))))
    assert answer(refused) == "content_rejected" and refused.decision.action is Action.REJECT
    named = send(Engine(load(make_rules(unscannable_action="reject message_size_exceeded",
                                        **strict)),
                        Services(virus=Virus(result), spam=Spam(True))))
    assert answer(named) == "message_size_exceeded"


def test_a_virus_beside_a_limit_notice_is_a_virus(make_rules: Callable[..., Path]) -> None:
    found = VirusResult(("Win.Test.A", "Heuristics.Limits.Exceeded.MaxFileSize"))
    outcome = send(Engine(load(make_rules(**SCANNERS)),
                          Services(virus=Virus(found), spam=Spam(True))))
    assert answer(outcome) == "virus_found"


def test_over_spam_max_size_is_not_checked(make_rules: Callable[..., Path],
                                           caplog: pytest.LogCaptureFixture) -> None:
    spam = Spam(True)
    engine = Engine(load(make_rules(spam_max_size="1K", **SCANNERS)),
                    Services(virus=Virus(VirusResult()), spam=spam))
    with caplog.at_level(logging.INFO):
        outcome = send(engine, b"x" * 2048)
    assert spam.checked == 0
    header = dict(outcome.add_headers)[UNCHECKED_HEADER]
    assert header.startswith("spam: message of ") and "spam_max_size (1024)" in header
    assert any("event=not_checked check=spam" in r.getMessage() for r in caplog.records)
    assert answer(send(engine)) == "continue" and spam.checked == 1
