"""The golden envelope sessions over the milter protocol, from a real milter process, and
the process itself (reload, stop, start-up failures).

The MTA side is policy_milter.mtaclient, which honours the negotiated no-reply and
no-callback flags as Postfix does.  Replies are compared with the catalogue entry
(the catalogue tests pin those to the seed).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import pytest

from policy_milter import catalogue
from policy_milter.mtaclient import MilterClient, Reply
from policy_milter.rules.policy import load
from policy_milter.stages import Stage
from tests.conftest import FIXTURE_RULES, REPO
from tests.milter.conftest import MilterProcess
from tests.support import golden
from tests.support.cli import cli
from tests.support.golden import SESSIONS, Answer
from tests.support.session import assert_reply, mail_from

MESSAGE = b"From: a@sender.example\r\nTo: postmaster@example.com\r\nSubject: hi\r\n\r\nHello.\r\n"
QUEUE_ID = {"i": "QID1"}


def answer(reply: Reply, dropped: Sequence[str] = ()) -> Answer:
    """The milter's reply as the table states answers."""
    if reply.action == "replycode":
        return Answer.reply(reply.code, reply.enhanced, reply.text, dropped)
    return Answer(golden.OK if reply.passed else reply.action, dropped=tuple(dropped))


def play(client: MilterClient, session: golden.Session, step: golden.Step) -> Answer:
    """One step, sent as Postfix sends it."""
    match step.stage:
        case Stage.HELO:
            return answer(client.helo(step.arg))
        case Stage.MAIL:
            return answer(client.mail(step.arg, *step.params,
                                      macros={"{auth_authen}": session.login, "i": ""}))
        case Stage.RCPT:
            return answer(client.rcpt(step.arg, macros=QUEUE_ID))
        case Stage.DATA:
            return answer(client.data(macros=QUEUE_ID))
        case Stage.EOM:
            result = client.message(session.message(step).raw, macros={"eom": QUEUE_ID})
            if isinstance(result, Reply):  # the milter ended the message before its end
                return answer(result)
            return answer(result.reply, [args[0] for name, args in result.modifications
                                         if name == "delrcpt"])
        case Stage.UNKNOWN:
            return answer(client.unknown(step.arg))
    raise AssertionError(f"{step.where}: the wire replayer cannot play {step.command!r}")


def replay(milter: MilterProcess, session: golden.Session) -> None:
    with milter.client() as client:
        connected = client.connect(session.hostname, session.addr, 40000,
                                   macros={"{daemon_name}": session.listener})
        assert connected.passed, connected
        for step in session.steps:
            session.check(step, play(client, session, step))


@pytest.mark.parametrize("session", SESSIONS.values(), ids=SESSIONS.keys())
def test_golden_session_over_the_wire(milter: MilterProcess, session: golden.Session) -> None:
    replay(milter, session)


def test_every_envelope_row_is_covered() -> None:
    rows = {catalogue.get(name).row for s in SESSIONS.values() for name in s.entries}
    assert rows >= {1, 2, 3, 4, 5, 9, 10, 12, 13, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25,
                    26, 30, 32, 33, 34}


def test_clean_message_is_accepted_with_its_header(milter: MilterProcess) -> None:
    with milter.client() as client:
        assert mail_from(client, "<a@tagged.example>").passed
        assert client.rcpt("<postmaster@example.com>").passed
        assert client.data().passed
        result = client.message(MESSAGE)
    assert not isinstance(result, Reply)
    assert result.reply.action == "continue"
    assert ("addheader", ("X-Policy", "tagged")) in result.modifications


def test_discard_whole_message_30(milter: MilterProcess) -> None:
    with milter.client() as client:
        reply = mail_from(client, "<a@discard.example>")
    assert reply.action == "discard"
    line = milter.wait_for_log("sender=a@discard.example", event="decision")
    assert "action=discard" in line and catalogue.get("deleted_by_filter").text in line


def test_discard_one_recipient_30(milter: MilterProcess) -> None:
    with milter.client() as client:
        assert mail_from(client).passed
        assert client.rcpt("<trap@example.com>").passed
        assert client.rcpt("<postmaster@example.com>").passed
        client.data()
        result = client.message(MESSAGE)
    assert not isinstance(result, Reply)
    assert ("delrcpt", ("<trap@example.com>",)) in result.modifications


def test_transactions_reset_within_a_connection(milter: MilterProcess) -> None:
    with milter.client() as client:
        assert mail_from(client).passed
        for i in range(5):
            assert client.rcpt(f"<u{i}@catchall.example>").passed
        client.abort()
        assert client.mail("<a@sender.example>").passed
        assert client.rcpt("<u9@catchall.example>").passed  # the count started over


def test_decision_log_names_the_rule(milter: MilterProcess) -> None:
    with milter.client() as client:
        assert_reply(mail_from(client, addr="192.0.2.66"), "access_denied")
    line = milter.wait_for_log("client=192.0.2.66", event="decision")
    access = FIXTURE_RULES / "access"
    assert f"rule={access}:1" in line
    assert f'reply="{catalogue.get("access_denied").reply_line()}"' in line
    assert "stage=mail" in line and "duration_ms=" in line


def test_negotiation_asks_only_for_what_it_needs(milter: MilterProcess) -> None:
    with milter.client() as client:
        assert client.macro_lists.get("C") == {"j", "{daemon_name}"}
        assert "{auth_authen}" in client.macro_lists.get("M", set())


# --- the process: reload, stop, start-up failures -----------------------------

def three_recipients(process: MilterProcess) -> Reply:
    """The reply to the third recipient of a message (the first two pass)."""
    with process.client() as client:
        assert mail_from(client).passed
        first, second, third = (client.rcpt(f"<u{i}@catchall.example>") for i in range(3))
        assert first.passed and second.passed
        return third


def test_sighup_reloads_and_keeps_old_rules_on_error(
        fresh_milter: Callable[..., MilterProcess], make_rules: Callable[..., Path]) -> None:
    rules = make_rules()
    process = fresh_milter(rules)
    started = load(rules).digest
    assert f"rules={rules} " in process.wait_for_log("event=start")
    assert three_recipients(process).passed
    assert f" rules_hash={started} session=" in process.wait_for_log("", event="envelope")
    conf = rules / "policy.conf"
    conf.write_text(conf.read_text().replace("max_recipients = 5", "max_recipients = 2"))
    process.proc.send_signal(1)
    reloaded = load(rules).digest
    assert reloaded != started
    assert process.wait_for_log("event=reload status=ok").endswith(
        f"rules={rules} rules_hash={reloaded}")
    assert_reply(three_recipients(process), "too_many_recipients")
    refusal = process.wait_for_log("action=reject", event="decision")
    assert f" rules_hash={reloaded} entry=too_many_recipients " in refusal
    conf.write_text(conf.read_text() + "bogus = 1\n")
    process.proc.send_signal(1)
    error = process.wait_for_log("event=reload_error")
    assert f"{conf}:" in error and "unknown setting 'bogus'" in error
    process.wait_for_log("status=failed")
    assert_reply(three_recipients(process), "too_many_recipients")  # the last good rules
    assert process.proc.poll() is None


def test_run_refuses_bad_rules(make_rules: Callable[..., Path]) -> None:
    rules = make_rules(max_recipients="many")
    result = cli("run", "--rules", str(rules), "--socket", "inet:1@127.0.0.1")
    assert result.returncode == 1
    assert f"{rules / 'policy.conf'}:" in result.stderr and "max_recipients" in result.stderr


def test_check_command() -> None:
    ok = cli("check", "--rules", str(REPO / "rules"))
    assert ok.returncode == 0 and "domains:" in ok.stdout
    missing = cli("check", "--rules", str(REPO / "no-such-dir"))
    assert missing.returncode == 1 and "policy.conf: no such file" in missing.stderr


def test_concurrent_connections(milter: MilterProcess) -> None:
    """libmilter runs each connection in its own thread: sessions must not mix."""
    cases = [SESSIONS[name] for name in ("21 unknown local user", "16 relay", "19a black list",
                                         "25 too many recipients")] * 12
    with ThreadPoolExecutor(max_workers=24) as pool:
        list(pool.map(partial(replay, milter), cases))  # re-raises a session's failure


def test_unix_socket_has_the_requested_mode(milter: MilterProcess) -> None:
    with milter.client():  # negotiated: libmilter's loop runs, so the chmod is done
        pass
    path = Path(milter.socket.partition(":")[2])
    assert path.stat().st_mode & 0o777 == 0o660


def test_sigterm_lets_open_sessions_finish(fresh_milter: Callable[..., MilterProcess]) -> None:
    process = fresh_milter(FIXTURE_RULES)
    with process.client() as client:
        assert mail_from(client).passed
        process.proc.send_signal(15)
        process.wait_for_log("event=stop signal=SIGTERM open_sessions=1")
        assert client.rcpt("<postmaster@example.com>").passed
        assert client.data().passed
        assert not isinstance(client.message(MESSAGE), Reply)
        with process.client() as late:  # new connections are told to come back later
            assert_reply(late.connect("mx.sender.example", "192.0.2.10", 4000),
                         "shutdown_tempfail")
    assert process.proc.wait(timeout=10) == 0
