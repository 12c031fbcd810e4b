"""The engine and every envelope check family, without pymilter.

Sessions run against tests/fixtures/rules; assertions name catalogue entries, never
reply text (the catalogue tests pin the text to the seed).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import pytest

from policy_milter.decision import Action, Decision
from policy_milter.engine import Engine, Outcome, Session
from policy_milter.rules.policy import load
from policy_milter.services import DependencyError, Services
from policy_milter.services.clamd import VirusResult
from policy_milter.services.state.memory import MemoryStore


def entry(decision: Decision) -> str:
    """What the client is told: a catalogue entry name, or the plain action."""
    if decision.action in (Action.REJECT, Action.TEMPFAIL) and decision.entry:
        return decision.entry.name
    return decision.action.value


def open_session(engine: Engine, addr: str = "192.0.2.10", helo: str | None = "mx.sender.example",
                 listener: str = "smtpd", tls: bool = False) -> Session:
    s = engine.session()
    s.connect(addr, "mx.sender.example", listener)
    if helo is not None:
        s.helo(helo, tls)
    return s


def rcpt_after(s: Session, sender: str, rcpt: str, login: str = "", *params: str) -> str:
    assert entry(s.mail(sender, list(params), login, "")) == "continue"
    return entry(s.rcpt(rcpt, [], "Q1"))


# --- protocol -------------------------------------------------------------------

@pytest.mark.parametrize("helo, expected", [
    ("mx.sender.example", "continue"),
    ("[192.0.2.10]", "continue"),
    ("[IPv6:2001:db8::1]", "continue"),
    ("localhost", "continue"),
    ("", "helo_requires_domain"),
    ("192.0.2.10", "helo_requires_domain"),
    ("bad host!", "helo_requires_domain"),
    ("[192.0.2.10", "unbalanced"),
    ("mx.(sender.example", "unbalanced"),
])
def test_helo_syntax(engine: Engine, helo: str, expected: str) -> None:
    assert entry(engine.session().helo(helo, False)) == expected


def test_helo_syntax_exempts_relay_networks(engine: Engine) -> None:
    s = engine.session()
    s.connect("10.1.2.3", "", "smtpd")
    assert entry(s.helo("bad host!", False)) == "continue"


def test_repeated_helo_is_refused_but_not_after_starttls(engine: Engine) -> None:
    s = open_session(engine)
    assert entry(s.helo("mx.sender.example", True)) == "continue"  # after STARTTLS
    assert entry(s.helo("mx.sender.example", True)) == "helo_already_specified"


def test_repeated_helo_allowed_when_policy_allows(make_rules: Callable[..., Path]) -> None:
    s = open_session(Engine(load(make_rules(reject_repeated_helo="no"))))
    assert entry(s.helo("mx.sender.example", False)) == "continue"


def test_mail_without_helo(engine: Engine) -> None:
    s = open_session(engine, helo=None)
    assert entry(s.mail("<a@sender.example>", [], "", "")) == "helo_required"


@pytest.mark.parametrize("sender, params, expected", [
    ("<a@sender.example>", [], "continue"),
    ("<>", [], "continue"),
    ("<a>", [], "domain_required"),
    ("<a@sender.example", [], "unbalanced"),
    ('<"a@sender.example>', [], "unbalanced"),
    ("<a@@sender.example>", [], "syntax_error"),
    ("<a@sender.example>", ["SIZE=abc"], "syntax_error"),
    ("<a@sender.example>", ["=x"], "syntax_error"),
    ("<a\x01@sender.example>", [], "syntax_error"),
])
def test_sender_syntax(session: Session, sender: str, params: list[str], expected: str) -> None:
    assert entry(session.mail(sender, params, "", "")) == expected


def test_rcpt_syntax(session: Session) -> None:
    session.mail("<a@sender.example>", [], "", "")
    assert entry(session.rcpt("<>", [], "")) == "syntax_error"
    assert entry(session.rcpt("<postmaster@example.com", [], "")) == "unbalanced"
    assert entry(session.rcpt("<postmaster>", [], "")) == "continue"


def test_command_sequence(session: Session) -> None:
    assert entry(session.rcpt("<postmaster@example.com>", [], "")) == "bad_sequence"
    assert entry(session.data("")) == "bad_sequence"
    session.mail("<a@sender.example>", [], "", "")
    assert entry(session.rcpt("<nobody@example.com>", [], "")) == "unknown_user_local"
    assert entry(session.data("")) == "bad_sequence"  # no accepted recipient
    assert entry(session.eom("").decision) == "bad_sequence"


@pytest.mark.parametrize("command, expected", [
    ("TURN", "operation_not_supported"),
    ("atrn example.com", "operation_not_supported"),
    ("XYZZY", "command_unrecognized"),
    ("", "command_unrecognized"),
])
def test_unknown_commands(session: Session, command: str, expected: str) -> None:
    assert entry(session.unknown(command)) == expected


# --- relay ----------------------------------------------------------------------

@pytest.mark.parametrize("rcpt", [
    "<someone@elsewhere.example>",
    "<someone%elsewhere.example@example.com>",
    "<elsewhere.example!someone@example.com>",
    '<"someone@elsewhere.example"@example.com>',
    "<@example.com:someone@elsewhere.example>",
    "<someone@[192.0.2.1]>",
    "<someone@partner.example>",  # remote: listed for its senders only
    "<someone@example.com.evil.example>",
    "<someone@evilexample.com>",
])
def test_untrusted_clients_cannot_relay(session: Session, rcpt: str) -> None:
    assert rcpt_after(session, "<a@sender.example>", rcpt) == "relay_denied"


@pytest.mark.parametrize("rcpt", [
    "<postmaster@EXAMPLE.COM>",
    "<postmaster@example.com.>",
    "<info@xn--bcher-kva.example>",
    "<info@BÜCHER.example>",
    "<PostMaster@example.com>",
    "<abuse+tag@example.com>",
    "<anything@catchall.example>",
    "<info@backup.example.org>",
    "<whoever@open-backup.example.net>",
])
def test_our_domains_are_not_relay(session: Session, rcpt: str) -> None:
    assert rcpt_after(session, "<a@sender.example>", rcpt) == "continue"


@pytest.mark.parametrize("addr, login", [("10.1.9.9", ""), ("192.0.2.10", "alice")])
def test_trusted_clients_may_relay(engine: Engine, addr: str, login: str) -> None:
    s = open_session(engine, addr=addr)
    assert rcpt_after(s, "<alice@example.com>", "<x@elsewhere.example>", login) == "continue"


# --- recipients -----------------------------------------------------------------

@pytest.mark.parametrize("rcpt, expected", [
    ("<nobody@example.com>", "unknown_user_local"),
    ("<bob@example.com>", "user_not_local"),
    ("<nobody@backup.example.org>", "unknown_user_relay"),
    ("<nosuch@lists.example.com>", "no_such_list"),
    ("<nosuch-list@example.com>", "no_such_list"),
    ("<team-list@example.com>", "continue"),
    ("<announce@lists.example.com>", "continue"),
    ("<staff@lists.example.com>", "access_denied"),  # members only
])
def test_recipient_lookup(session: Session, rcpt: str, expected: str) -> None:
    assert rcpt_after(session, "<a@sender.example>", rcpt) == expected


def test_members_only_list_accepts_members(engine: Engine) -> None:
    s = open_session(engine)
    assert rcpt_after(s, "<member@sender.example>", "<staff@lists.example.com>") == "continue"


# --- authentication -------------------------------------------------------------

def test_listener_requires_auth(engine: Engine) -> None:
    s = open_session(engine, listener="submission")
    assert entry(s.mail("<x@sender.example>", [], "", "")) == "auth_required"
    assert entry(s.mail("<alice@example.com>", [], "alice", "")) == "continue"


def test_sender_domain_requires_auth(session: Session) -> None:
    assert entry(session.mail("<x@partner.example>", [], "", "")) == "auth_required"


def test_local_sender_from_untrusted_client(session: Session, engine: Engine) -> None:
    assert entry(session.mail("<alice@example.com>", [], "", "")) == "access_denied"
    trusted = open_session(engine, addr="10.1.0.5")
    assert entry(trusted.mail("<alice@example.com>", [], "", "")) == "continue"


def test_white_entry_skips_local_sender_check(engine: Engine) -> None:
    s = open_session(engine, addr="198.51.100.99")
    assert entry(s.mail("<news@example.com>", [], "", "")) == "continue"


def test_local_only_account(engine: Engine) -> None:
    s = open_session(engine)
    assert rcpt_after(s, "<intern@example.com>", "<x@elsewhere.example>",
                      "intern") == "local_domains_only"
    assert entry(s.rcpt("<postmaster@example.com>", [], "")) == "continue"


# --- limits -----------------------------------------------------------------------

def recipients_accepted(s: Session, sender: str, count: int, login: str = "") -> list[str]:
    s.mail(sender, [], login, "")
    return [entry(s.rcpt(f"<user{i}@catchall.example>", [], "")) for i in range(count)]


def test_server_recipient_limit(session: Session) -> None:
    assert recipients_accepted(session, "<a@sender.example>", 6) == ["continue"] * 5 + [
        "too_many_recipients"]


def test_smallest_limit_applies(engine: Engine) -> None:
    s = open_session(engine)
    assert recipients_accepted(s, "<a@small.example>", 4)[-1] == "too_many_recipients"
    assert recipients_accepted(s, "<alice@example.com>", 3, "alice") == [
        "continue", "continue", "too_many_recipients"]


def test_account_recipient_rate(engine: Engine) -> None:
    s = open_session(engine)
    assert recipients_accepted(s, "<rater@quota.example>", 3, "rater") == ["continue"] * 3
    assert entry(s.data("")) == "continue"
    assert entry(s.eom("").decision) == "continue"
    assert recipients_accepted(s, "<rater@quota.example>", 2, "rater") == [
        "continue", "account_limits"]


def test_domain_message_rate(engine: Engine) -> None:
    s = open_session(engine)
    for _ in range(2):
        assert recipients_accepted(s, "<dora@quota.example>", 1, "dora") == ["continue"]
        s.eom("")
    assert recipients_accepted(s, "<dora@quota.example>", 1, "dora") == ["account_limits"]


def test_rate_window_expires(fixture_policy) -> None:  # type: ignore[no-untyped-def]
    now = [0.0]
    engine = Engine(fixture_policy, Services(state=MemoryStore(clock=lambda: now[0])))
    s = open_session(engine)
    for _ in range(2):
        recipients_accepted(s, "<dora@quota.example>", 1, "dora")
        s.eom("")
    now[0] = 3601.0
    assert recipients_accepted(s, "<dora@quota.example>", 1, "dora") == ["continue"]


# --- sizes ------------------------------------------------------------------------

@pytest.mark.parametrize("listener, sender, size, expected", [
    ("smtpd", "<a@sender.example>", 10 * 1024**2, "continue"),
    ("smtpd", "<a@sender.example>", 10 * 1024**2 + 1, "message_size_exceeded"),
    ("smtpd", "<a@small.example>", 1024**2 + 1, "message_size_exceeded"),
    ("submission", "<alice@example.com>", 5 * 1024**2 + 1, "listener_size_exceeded"),
])
def test_declared_size_at_mail(engine: Engine, listener: str, sender: str, size: int,
                               expected: str) -> None:
    s = open_session(engine, listener=listener)
    assert entry(s.mail(sender, [f"SIZE={size}"], "alice", "")) == expected


def test_declared_size_per_recipient(session: Session) -> None:
    session.mail("<a@sender.example>", ["SIZE=4096"], "", "")
    assert entry(session.rcpt("<carol@example.com>", [], "")) == "mailbox_size_exceeded"
    assert entry(session.rcpt("<postmaster@example.com>", [], "")) == "continue"


def test_counted_size_at_end_of_message(session: Session) -> None:
    session.mail("<a@sender.example>", [], "", "")
    session.rcpt("<carol@example.com>", [], "")
    session.body(b"x" * 2000)
    assert entry(session.eom("").decision) == "mailbox_size_exceeded"


# --- access and filter rules ---------------------------------------------------------

@pytest.mark.parametrize("addr, sender, expected", [
    ("192.0.2.66", "<a@sender.example>", "access_denied"),
    ("192.0.2.5", "<a@spam.example>", "access_denied"),
    ("192.0.2.50", "<a@spam.example>", "continue"),
    ("192.0.2.10", "<a@BLOCKED.example>", "access_denied"),
    ("192.0.2.10", "<boss@deny.example>", "permission_denied"),
    ("192.0.2.10", "<a@filtered.example>", "filter_rejected"),
    ("192.0.2.10", "<a@tempfail.example>", "state_tempfail"),
    ("192.0.2.10", "<a@trial.example>", "continue"),  # monitor
    ("192.0.2.10", "<a@discard.example>", "discard"),
])
def test_access_rules_at_mail(engine: Engine, addr: str, sender: str, expected: str) -> None:
    s = open_session(engine, addr=addr)
    assert entry(s.mail(sender, [], "", "")) == expected


def test_helo_rule(engine: Engine) -> None:
    s = open_session(engine, helo="host.bad-helo.example")
    assert entry(s.mail("<a@sender.example>", [], "", "")) == "access_denied"


def test_recipient_rules(session: Session) -> None:
    assert rcpt_after(session, "<a@sender.example>", "<former@example.com>") == "permission_denied"
    assert entry(session.rcpt("<a@example.com>", [], "")) == "unknown_user_local"
    session.mail("<a@mixed.example>", [], "", "")
    assert entry(session.rcpt("<postmaster@example.com>", [], "")) == "filter_rejected"


def test_white_entry_skip_all_keeps_recipient_checks(engine: Engine) -> None:
    s = open_session(engine)
    assert rcpt_after(s, "<a@vip.example>", "<nobody@example.com>") == "unknown_user_local"


def test_discard_one_recipient_then_all(session: Session) -> None:
    session.mail("<a@sender.example>", [], "", "")
    assert entry(session.rcpt("<trap@example.com>", [], "")) == "continue"
    assert entry(session.rcpt("<postmaster@example.com>", [], "")) == "continue"
    outcome = session.eom("")
    assert entry(outcome.decision) == "continue"
    assert outcome.delete_recipients == ["<trap@example.com>"]
    session.mail("<a@sender.example>", [], "", "")
    session.rcpt("<trap@example.com>", [], "")
    dropped = session.eom("").decision
    assert dropped.action is Action.DISCARD and dropped.entry.name == "deleted_by_filter"


def test_deferred_actions_reach_end_of_message(session: Session) -> None:
    session.mail("<a@tagged.example>", [], "", "")
    session.rcpt("<postmaster@example.com>", [], "")
    assert session.eom("").add_headers == [("X-Policy", "tagged")]
    session.mail("<a@quarantine.example>", [], "", "")
    session.rcpt("<postmaster@example.com>", [], "")
    assert session.eom("").quarantine == "held for review"


def test_global_monitor_mode_logs_and_passes(make_rules: Callable[..., Path],
                                             caplog: pytest.LogCaptureFixture) -> None:
    s = open_session(Engine(load(make_rules(monitor="yes"))), addr="192.0.2.66")
    with caplog.at_level(logging.INFO):
        assert entry(s.mail("<a@sender.example>", [], "", "")) == "continue"
        assert rcpt_after(s, "<a@sender.example>", "<x@elsewhere.example>") == "continue"
    lines = [r.getMessage() for r in caplog.records]
    assert any("check=access action=reject" in m and "monitor=yes" in m for m in lines)
    assert any("check=relay action=reject" in m and "monitor=yes" in m for m in lines)


# --- transactions and failures ------------------------------------------------------

def test_transaction_state_resets(session: Session) -> None:
    session.mail("<a@sender.example>", [], "", "")
    session.rcpt("<postmaster@example.com>", [], "")
    session.abort()
    assert entry(session.data("")) == "bad_sequence"
    session.mail("<a@sender.example>", [], "", "")
    assert session.txn is not None and session.txn.recipients == []


def _failing(exc: Exception):  # type: ignore[no-untyped-def]
    class Rates(MemoryStore):
        def total(self, key: str, window: int) -> int:
            raise exc
    return Rates()


def test_dependency_failure_tempfails_by_default(fixture_policy) -> None:  # type: ignore[no-untyped-def]
    engine = Engine(fixture_policy, Services(state=_failing(DependencyError("state", "down"))))
    s = open_session(engine)
    assert recipients_accepted(s, "<dora@quota.example>", 1, "dora") == ["state_tempfail"]


def test_dependency_failure_accept_is_logged(make_rules: Callable[..., Path],
                                             caplog: pytest.LogCaptureFixture) -> None:
    policy = load(make_rules(failure_action="accept"))
    s = open_session(Engine(policy, Services(state=_failing(DependencyError("state", "down")))))
    with caplog.at_level(logging.INFO):
        assert recipients_accepted(s, "<dora@quota.example>", 1, "dora") == ["continue"]
    assert any("event=dependency_failure" in r.getMessage() and "service=state" in r.getMessage()
               and "action=accept" in r.getMessage() for r in caplog.records)


def test_unexpected_error_is_a_logged_tempfail(fixture_policy,  # type: ignore[no-untyped-def]
                                               caplog: pytest.LogCaptureFixture) -> None:
    s = open_session(Engine(fixture_policy, Services(state=_failing(KeyError("bug")))))
    with caplog.at_level(logging.INFO):
        assert recipients_accepted(s, "<dora@quota.example>", 1, "dora") == ["internal_tempfail"]
    assert any("event=internal_error" in r.getMessage() and "KeyError" in r.getMessage()
               for r in caplog.records)


def test_reload_keeps_sessions_on_their_plan(engine: Engine, make_rules: Callable[..., Path]) -> None:
    before = open_session(engine)
    engine.reload(load(make_rules(max_recipients="1")))
    after = open_session(engine)
    assert recipients_accepted(before, "<a@sender.example>", 2) == ["continue", "continue"]
    assert recipients_accepted(after, "<a@sender.example>", 2) == ["continue",
                                                                   "too_many_recipients"]


def test_one_log_line_per_decision(session: Session, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        session.mail("<a@sender.example>", [], "", "")
        session.rcpt("<nobody@example.com>", [], "Q9")
        session.rcpt("<postmaster@example.com>", [], "Q9")
        session.eom("Q9")
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split()[0] for line in lines] == ["event=decision"] * 2 + ["event=envelope"]
    reject, accept = lines[:2]
    assert "stage=rcpt" in reject and "qid=Q9" in reject and "rcpt=nobody@example.com" in reject
    assert "rule=" + str(Path("tests/fixtures/rules/domains")) in reject or "domains:1" in reject
    assert "action=accept" in accept and "rcpt=postmaster@example.com" in accept


def test_white_entry_at_mail_holds_for_recipient_rules(engine: Engine) -> None:
    listed = open_session(engine, addr="198.51.100.100")
    assert rcpt_after(listed, "<a@sender.example>", "<former@example.com>") == "continue"
    other = open_session(engine)
    assert rcpt_after(other, "<a@sender.example>", "<former@example.com>") == "permission_denied"


# --- white entries at RCPT and the message-wide checks -------------------------------

class AlwaysInfected:
    def scan(self, message: BinaryIO) -> VirusResult:
        return VirusResult(("Win.Test.A",))


def skip_rules(make_rules: Callable[..., Path], rule: str, **settings: str) -> Path:
    rules = make_rules(clamd="tcp:127.0.0.1:3310", **settings)
    with open(rules / "access", "a") as access:
        access.write(f"\n{rule}\n")
    return rules


def deliver(engine: Engine, *rcpts: str) -> Outcome:
    s = open_session(engine)
    assert entry(s.mail("<a@sender.example>", [], "", "")) == "continue"
    for rcpt in rcpts:
        assert entry(s.rcpt(rcpt, [], "")) == "continue"
    s.header("Subject", b"test")
    s.body(b"hello\r\n")
    return s.eom("")


def test_a_recipients_white_entry_spares_only_itself(make_rules: Callable[..., Path]) -> None:
    """A message-wide check is skipped only when every recipient's white entry skips it:
    one recipient's permit never lets a virus through to the others."""
    rules = skip_rules(make_rules, "recipient abuse@example.com permit skip=virus")
    engine = Engine(load(rules), Services(virus=AlwaysInfected()))
    assert entry(deliver(engine, "<abuse@example.com>").decision) == "continue"
    assert entry(deliver(engine, "<ABUSE+x@example.com>").decision) == "continue"
    assert entry(deliver(engine, "<abuse@example.com>", "<postmaster@example.com>").decision) \
        == "virus_found"


def test_a_white_entry_at_mail_spares_every_recipient(make_rules: Callable[..., Path]) -> None:
    rules = skip_rules(make_rules, "sender @sender.example permit skip=virus")
    engine = Engine(load(rules), Services(virus=AlwaysInfected()))
    assert entry(deliver(engine, "<abuse@example.com>", "<postmaster@example.com>").decision) \
        == "continue"
