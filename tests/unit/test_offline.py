"""The admin's offline tools on the fixture rules: a session played stage by stage
(policy-milter test), the stub resolver, replaying logged envelopes, and explaining a
decision line.  Expected answers name catalogue entries, never reply text."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from policy_milter import catalogue, logread
from policy_milter.engine import Engine
from policy_milter.log import DecisionLog, quote
from policy_milter.offline.explain import explain, transaction
from policy_milter.offline.play import OUTCOMES, Played, Script, captured_log, play
from policy_milter.offline.replay import Summary, replay
from policy_milter.offline.services import offline
from policy_milter.rules.policy import Policy, load
from policy_milter.services.dnsstub import StubError, StubResolver
from tests.conftest import FIXTURE_RULES

REMOTE = {"client": "192.0.2.10", "client_name": "mx.sender.example",
          "helo": "mx.sender.example"}


def session(sender: str, *rcpts: str, message: bytes | None = None, **facts: object) -> Script:
    given = {**REMOTE, **facts}
    return Script(sender=sender, rcpts=tuple((r, ()) for r in rcpts), message=message,
                  **given)  # type: ignore[arg-type]


def played(policy: Policy, script: Script, dns: str = "off") -> Played:
    world = offline(policy, dns, scanners=False)
    try:
        return play(Engine(policy, world.services, DecisionLog(), world.leave_out), script,
                    world.notes)
    finally:
        world.close()


def answers(result: Played) -> list[tuple[str, str, str]]:
    """(stage, answer, catalogue entry) of every stage."""
    return [(run.stage, run.answer, run.entry) for run in result.stages]


MESSAGE = b"From: a@sender.example\r\nSubject: hello\r\n\r\nHello.\r\n"


# --- policy-milter test ---------------------------------------------------------------

@pytest.mark.parametrize("script, outcome", [
    (session("<a@sender.example>", "<postmaster@example.com>"), "accepted"),
    (session("<a@sender.example>", "<nobody@example.com>"), "rejected"),
    (session("<a@blocked.example>", "<postmaster@example.com>"), "rejected"),
    (session("<a@tempfail.example>", "<postmaster@example.com>"), "tempfailed"),
    (session("<a@discard.example>", "<postmaster@example.com>"), "discarded"),
    (session("<a@quarantine.example>", "<postmaster@example.com>", message=MESSAGE), "held"),
    (session("<a@sender.example>", "<postmaster@example.com>", client="192.0.2.66"),
     "rejected"),
    (session("<a@sender.example>", "<postmaster@example.com>", helo="bad host!"), "rejected"),
])
def test_each_outcome_has_its_exit_status(fixture_policy: Policy, script: Script,
                                          outcome: str) -> None:
    result = played(fixture_policy, script)
    assert result.outcome == outcome
    assert result.exit_code == OUTCOMES[outcome]
    assert len(set(OUTCOMES.values())) == len(OUTCOMES)


def test_every_check_is_shown_with_the_rule_and_reply_that_decided(
        fixture_policy: Policy) -> None:
    result = played(fixture_policy, session("<a@sender.example>", "<nobody@example.com>",
                                            "<postmaster@example.com>"))
    assert answers(result) == [("connect", "continue", ""), ("helo", "continue", ""),
                               ("mail", "continue", ""),
                               ("rcpt", "reject", "unknown_user_local"),
                               ("rcpt", "continue", ""), ("data", "continue", "")]
    refused = result.stages[3]
    [decider] = [step for step in refused.steps if step.answer != "continue"]
    assert (decider.check, decider.entry) == ("recipients", "unknown_user_local")
    assert decider.rule == f"{FIXTURE_RULES}/domains:1"
    assert [step.check for step in result.stages[2].steps] == [
        "protocol", "size", "auth", "access", "filters", "local_sender"]
    assert result.outcome == "accepted"  # for the other recipient
    assert any("end of message not run" in note for note in result.notes)


@pytest.mark.parametrize("form", ["<nobody@example.com>", "<NOBODY@EXAMPLE.COM>",
                                  "<nobody+tag@example.com>", "<\"nobody\"@example.com>",
                                  "<@relay.example:nobody@example.com>"])
def test_every_form_of_an_address_gets_the_same_answer(fixture_policy: Policy,
                                                       form: str) -> None:
    result = played(fixture_policy, session("<a@sender.example>", form))
    assert answers(result)[-1] == ("rcpt", "reject", "unknown_user_local")


def test_a_monitor_rule_is_shown_and_not_applied(fixture_policy: Policy) -> None:
    result = played(fixture_policy, session("<a@trial.example>", "<postmaster@example.com>"))
    [monitored] = [step for step in result.stages[2].steps if step.monitor]
    assert (monitored.check, monitored.answer, monitored.entry) == (
        "access", "reject", "access_denied")
    assert monitored.rule.endswith("access:8")
    assert result.outcome == "accepted"


def test_a_white_entry_shows_what_it_skips(fixture_policy: Policy) -> None:
    result = played(fixture_policy, session("<someone@example.com>", "<postmaster@example.com>",
                                            client="198.51.100.99"))
    assert ("local_sender", "skipped") in [(s.check, s.answer) for s in result.stages[2].steps]
    assert result.outcome == "accepted"


def test_quarantine_is_shown_as_a_change(fixture_policy: Policy) -> None:
    result = played(fixture_policy, session("<a@quarantine.example>", "<postmaster@example.com>",
                                            message=MESSAGE))
    assert result.changes == ["quarantine held for review"]


# --- DNS: off, or canned answers -----------------------------------------------------

@pytest.fixture
def rdns_policy(make_rules: Callable[..., Path]) -> Policy:
    return load(make_rules(rdns="required", dns_nameservers="127.0.0.1"))


def stub(tmp_path: Path, text: str) -> str:
    path = tmp_path / "answers"
    path.write_text(text)
    return f"stub={path}"


def test_dns_off_leaves_the_dns_checks_out_and_says_so(rdns_policy: Policy) -> None:
    result = played(rdns_policy, session("<a@sender.example>", "<postmaster@example.com>"))
    assert "rdns" not in [s.check for s in result.stages[2].steps]
    assert "not run: rdns (--dns off)" in result.notes


@pytest.mark.parametrize("answers_file, expected", [
    ("192.0.2.10 PTR mx.sender.example\n", ("mail", "continue", "")),
    ("# nothing for this client\n", ("mail", "reject", "not_allowed_to_send")),
    ("10.2.0.192.in-addr.arpa PTR SERVFAIL\n", ("mail", "tempfail", "dns_tempfail")),
])
def test_a_stub_file_answers_for_dns(rdns_policy: Policy, tmp_path: Path,
                                     answers_file: str, expected: tuple[str, str, str]) -> None:
    result = played(rdns_policy, session("<a@sender.example>", "<postmaster@example.com>"),
                    dns=stub(tmp_path, answers_file))
    assert answers(result)[2] == expected
    rdns = [s for s in result.stages[2].steps if s.check == "rdns"]
    assert rdns and rdns[0].answer == expected[1]


@pytest.mark.parametrize("text, line", [
    ("mx.example A\n", 1), ("\n# ok\nmx.example BOGUS 1.2.3.4\n", 3)])
def test_a_bad_stub_file_names_its_line(tmp_path: Path, text: str, line: int) -> None:
    path = tmp_path / "answers"
    path.write_text(text)
    with pytest.raises(StubError, match=rf"^{path}:{line}: "):
        StubResolver.load(path)


def test_a_test_writes_nothing(make_rules: Callable[..., Path], tmp_path: Path) -> None:
    store = tmp_path / "store"
    policy = load(make_rules(challenge_store=str(store), challenge_address="c@example.com",
                             challenge_recipients="postmaster@example.com"))
    result = played(policy, session("<a@sender.example>", "<postmaster@example.com>",
                                    message=MESSAGE))
    assert not store.exists()
    assert result.outcome == "held"
    assert any("does not exist" in note for note in result.notes)


# --- replay ------------------------------------------------------------------------

class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"ts=2026-11-30T10:00:00.000Z level=info {record.getMessage()}")


def log_sessions(policy: Policy, path: Path,
                 sessions: list[tuple[str, list[str]]]) -> Path:
    """``path``: a log of these (sender, recipients) sessions decided by ``policy``, as
    the milter writes it."""
    logger = logging.getLogger("policy_milter.test_traffic")
    logger.propagate, handler = False, Lines()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    engine = Engine(policy, log=DecisionLog(logger))
    for sender, rcpts in sessions:
        s = engine.session()
        s.connect("192.0.2.10", "mx.sender.example", "smtpd")
        s.helo("mx.sender.example", False)
        s.mail(sender, [], "", "")
        for i, rcpt in enumerate(rcpts):
            s.rcpt(rcpt, [], f"Q{len(rcpt)}{i}")
        s.close()
    logger.removeHandler(handler)
    path.write_text("\n".join(handler.lines) + "\nnot a line of ours\n")
    return path


@pytest.fixture
def traffic(fixture_policy: Policy, tmp_path: Path) -> Iterator[Path]:
    """A log of a few sessions decided by the fixture rules, as the milter writes it."""
    yield log_sessions(fixture_policy, tmp_path / "mail.log", [
        ("<a@sender.example>", ["<postmaster@example.com>", "<nobody@example.com>"]),
        ("<b@blocked.example>", []),
        ("<c@sender.example>", ["<abuse@example.com>"])])


def replayed(rules: Path | Policy, log: Path) -> Summary:
    policy = rules if isinstance(rules, Policy) else load(rules)
    world = offline(policy, "off", scanners=False)
    try:
        return replay(Engine(policy, world.services, DecisionLog(), world.leave_out),
                      logread.records([str(log)]), [])
    finally:
        world.close()


def test_replay_against_the_same_rules_changes_nothing(fixture_policy: Policy,
                                                       traffic: Path) -> None:
    summary = replayed(fixture_policy, traffic)
    assert (summary.envelopes, summary.answers, summary.unchanged) == (3, 4, 4)
    assert summary.changes == [] and summary.unreadable == []
    assert dict(summary.hashes) == {fixture_policy.digest: 3}


def test_replay_groups_changes_by_the_rule_that_decides(
        traffic: Path, make_rules: Callable[..., Path]) -> None:
    rules = make_rules()
    access = rules / "access"
    text = access.read_text().replace("sender @blocked.example                      reject\n",
                                      "")
    access.write_text(text + "recipient abuse@example.com  reject\n"
                             "recipient postmaster@example.com  reject\n")
    new_rule = len(access.read_text().splitlines())
    summary = replayed(rules, traffic)
    refused = summary.groups("newly refused")
    assert [(rule.rsplit("/", 1)[1], len(c)) for rule, c in refused] == [
        (f"access:{new_rule - 1}", 1), (f"access:{new_rule}", 1)]
    [(old_rule, [accepted])] = summary.groups("newly accepted")
    assert old_rule.endswith("access:3") and accepted.rcpt == ""  # never sent recipients
    assert (accepted.before.answer, accepted.now.answer) == ("reject", "accept")
    assert summary.unchanged == 1


def test_replay_reports_an_unreadable_envelope_and_goes_on(
        fixture_policy: Policy, traffic: Path) -> None:
    lines = traffic.read_text().splitlines()
    broken = next(i for i, line in enumerate(lines) if "event=envelope" in line)
    lines[broken] = lines[broken].replace("rcpts=", "rcpts=garbage")
    traffic.write_text("\n".join(lines))
    summary = replayed(fixture_policy, traffic)
    assert summary.envelopes == 2 and len(summary.unreadable) == 1
    assert summary.unreadable[0].startswith(f"{traffic}:{broken + 1}: ")


DISCARD_RULE = "sender @discard.example                      discard\n"  # access, fixture


def test_replay_sees_a_transaction_discarded_at_mail(
        fixture_policy: Policy, tmp_path: Path, make_rules: Callable[..., Path]) -> None:
    """A discard at MAIL is the transaction's answer, as a refusal there is: the client
    never sent its recipients, so it counts once, and a refusal now is a change."""
    log = log_sessions(fixture_policy, tmp_path / "discarded.log",
                       [("<a@discard.example>", ["<postmaster@example.com>"])])
    [env] = [r for r in logread.records([str(log)]) if r.event == "envelope"]
    assert (env["result"], env["stage"], env["rcpts"]) == ("discard", "mail", "[]")
    same = replayed(fixture_policy, log)
    assert (same.envelopes, same.answers, same.unchanged, same.changes) == (1, 1, 1, [])
    rules = make_rules()
    access = rules / "access"
    assert DISCARD_RULE in access.read_text()
    access.write_text(access.read_text().replace(DISCARD_RULE, DISCARD_RULE.replace(
        "discard\n", "reject\n")))
    summary = replayed(rules, log)
    assert (summary.answers, summary.unchanged) == (1, 0)
    [change] = summary.changes
    assert (change.kind, change.rcpt, change.sender) == ("newly refused", "",
                                                         "<a@discard.example>")
    assert (change.before.answer, change.before.stage) == ("discard", "mail")
    assert change.before.rule.endswith("access:9") and change.now.rule.endswith("access:9")
    assert (change.now.answer, change.now.stage) == ("reject", "mail")


def test_replay_sees_a_candidate_that_discards_at_mail(
        traffic: Path, make_rules: Callable[..., Path]) -> None:
    rules = make_rules()
    with (rules / "access").open("a") as access:
        access.write("sender c@sender.example  discard\n")
    summary = replayed(rules, traffic)
    [change] = summary.changes  # abuse@, accepted then: not an accept now
    assert (change.kind, change.rcpt) == ("changed", "<abuse@example.com>")
    assert (change.before.answer, change.now.answer, change.now.stage) == (
        "accept", "discard", "mail")
    assert summary.unchanged == 3


# --- explain -----------------------------------------------------------------------

def decision_line(traffic: Path, text: str) -> logread.Record:
    found = [r for r in logread.records([str(traffic)]) if r.event == "decision"
             and text in r["rcpt"] + r["sender"]]
    return found[0]


def test_explain_shows_the_rule_text_entry_and_what_to_change(
        fixture_policy: Policy, traffic: Path) -> None:
    lines = explain(decision_line(traffic, "nobody@"), fixture_policy, "rules").lines
    text = "\n".join(lines)
    domains = (FIXTURE_RULES / "domains").read_text().splitlines()[0]
    assert f"     1 | {domains}" in text
    assert "catalogue  unknown_user_local (row " in text
    assert "rules holds the rules that decided, unchanged" in text
    assert fixture_policy.where["accounts"] in text  # where to add the mailbox


def test_explain_warns_when_the_rules_changed(traffic: Path,
                                              make_rules: Callable[..., Path]) -> None:
    changed = load(make_rules(max_recipients="4"))
    text = "\n".join(explain(decision_line(traffic, "blocked"), changed, "rules").lines)
    assert f"WARNING: the rules changed since" in text and changed.digest in text
    assert "sender @blocked.example" in text  # the line as it is now
    assert "a white entry above that line in access: 'client 192.0.2.10 permit'" in text


def test_explain_names_a_setting_that_decided(fixture_policy: Policy) -> None:
    record = logread.parse(
        "level=info event=decision stage=rcpt qid=Q1 client=192.0.2.10 client_name=\"\" "
        f"helo=h sender=a@b.example rcpt=c@example.com rule={fixture_policy.where['max_recipients']}"
        " check=limits action=reject reply=x monitor=no duration_ms=1 detail=\"\" "
        f"rules_hash={fixture_policy.digest} entry=too_many_recipients")
    assert record is not None
    text = "\n".join(explain(record, fixture_policy, "rules").lines)
    assert "max_recipients = 5" in text
    assert "the setting max_recipients at" in text and "(now 5)" in text


def dns_tempfail_line(policy: Policy, tmp_path: Path) -> str:
    """The decision line the engine writes when the client's PTR lookup fails."""
    world = offline(policy, stub(tmp_path, "10.2.0.192.in-addr.arpa PTR SERVFAIL\n"),
                    scanners=False)
    log, lines = captured_log()
    try:
        play(Engine(policy, world.services, log, world.leave_out),
             session("<a@sender.example>", "<postmaster@example.com>"), world.notes)
    finally:
        world.close()
    [line] = [line for line in lines if "event=decision " in line]
    return f"level=info {line}"


@pytest.mark.parametrize("check", ["rdns", "dnsbl"])
@pytest.mark.parametrize("own, decided", [(False, "failure_action"),
                                          (True, "dns_failure_action")])
def test_explain_names_the_failure_setting_the_engine_used(
        make_rules: Callable[..., Path], tmp_path: Path, check: str, own: bool,
        decided: str) -> None:
    """dns_failure_action left unset follows failure_action: explain names the one that
    decided, at the place the line logs, never the unset one."""
    settings = {"dns_failure_action": "tempfail"} if own else {}
    policy = load(make_rules(rdns="required", dns_nameservers="127.0.0.1", **settings))
    line = dns_tempfail_line(policy, tmp_path).replace(" check=rdns ", f" check={check} ")
    record = logread.parse(line)
    assert record is not None and record["check"] == check
    assert record["action"] == "tempfail" and record["rule"] == policy.where[decided]
    text = "\n".join(explain(record, policy, "rules").lines)
    assert f"dns failed: {decided} ({policy.where[decided]}) says what that means" in text
    assert f"the setting {decided} at {policy.where[decided]} decided" in text
    if not own:
        assert "dns_failure_action" not in text and "(default)" not in text


def test_explain_survives_a_missing_file_and_foreign_values(fixture_policy: Policy) -> None:
    reply = quote(catalogue.get("access_denied").reply_line())
    record = logread.parse(
        'level=info event=decision stage=mail client="<script>" rule=/nonexistent/access:3 '
        f'check=access action=reject reply={reply} monitor=no '
        'rules_hash=000000000000 detail="\\x00\\n"')
    assert record is not None
    text = "\n".join(explain(record, None, "rules").lines)
    assert "(that file is not there now)" in text
    assert "catalogue  access_denied" in text  # found by its reply line
    assert "\n\n" not in text and "\x00" not in text


def test_envelope_json_in_the_traffic_is_what_replay_reads(traffic: Path) -> None:
    [env] = [r for r in logread.records([str(traffic)]) if r.event == "envelope"
             and r["mail_from"] == "<a@sender.example>"]
    assert [r[:2] for r in json.loads(env["rcpts"])] == [
        ["<postmaster@example.com>", "accept"], ["<nobody@example.com>", "reject"]]


def test_a_queue_id_finds_the_decisions_made_before_the_mta_named_it() -> None:
    """Postfix names no queue id before the first recipient it accepts: the session's
    earlier lines of the same transaction belong to it, other sessions' lines do not."""
    def line(event: str, session: str, qid: str = "", rcpt: str = "") -> str:
        return f"level=info event={event} qid={qid} rcpt={rcpt} session={session}"
    log = [line("decision", "a.1", rcpt="old@x"), line("envelope", "a.1", "Q0"),
           line("decision", "a.1", rcpt="early@x"), line("decision", "a.2", rcpt="other@x"),
           line("decision", "a.1", "Q1", "late@x"), line("envelope", "a.2", "Q2"),
           line("envelope", "a.1", "Q1")]
    records = [r for n, text in enumerate(log, 1) if (r := logread.parse(text, f"log:{n}"))]
    decisions, envelope = transaction(records, "Q1")
    assert [r["rcpt"] for r in decisions] == ["early@x", "late@x"]
    assert envelope is not None and envelope.source == "log:7"
    assert transaction(records, "Q9") == ([], None)
