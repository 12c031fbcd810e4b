"""Every envelope-stage catalogue row, over the milter protocol, from a real milter process.

The MTA side is policy_milter.mtaclient, which honours the negotiated no-reply and
no-callback flags as Postfix does.  Replies are compared with the catalogue entry
(the catalogue tests pin those to the seed).
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from policy_milter import catalogue
from policy_milter.mtaclient import Reply
from tests.conftest import FIXTURE_RULES, REPO
from tests.milter.conftest import MilterProcess
from tests.support.session import ROWS, Scenario, assert_reply, drive

MESSAGE = b"From: a@sender.example\r\nTo: postmaster@example.com\r\nSubject: hi\r\n\r\nHello.\r\n"


@pytest.mark.parametrize("scenario", ROWS.values(), ids=ROWS.keys())
def test_catalogue_row_over_the_wire(milter: MilterProcess, scenario: Scenario) -> None:
    with milter.client() as client:
        assert_reply(drive(client, scenario), scenario.entry)


def test_every_envelope_row_is_covered() -> None:
    rows = {catalogue.get(s.entry).row for s in ROWS.values()}
    assert rows >= {1, 2, 3, 4, 5, 9, 10, 12, 13, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25,
                    26, 32, 33, 34}


def test_clean_message_is_accepted_with_its_header(milter: MilterProcess) -> None:
    with milter.client() as client:
        drive(client, Scenario("", "mail", sender="<a@tagged.example>"))
        assert client.rcpt("<postmaster@example.com>").passed
        assert client.data().passed
        result = client.message(MESSAGE)
    assert not isinstance(result, Reply)
    assert result.reply.action == "continue"
    assert ("addheader", ("X-Policy", "tagged")) in result.modifications


def test_discard_whole_message_30(milter: MilterProcess) -> None:
    with milter.client() as client:
        reply = drive(client, Scenario("", "mail", sender="<a@discard.example>"))
    assert reply.action == "discard"
    line = milter.wait_for_log("sender=a@discard.example")
    assert "action=discard" in line and catalogue.get("deleted_by_filter").text in line


def test_discard_one_recipient_30(milter: MilterProcess) -> None:
    with milter.client() as client:
        drive(client, Scenario("", "mail"))
        assert client.rcpt("<trap@example.com>").passed
        assert client.rcpt("<postmaster@example.com>").passed
        client.data()
        result = client.message(MESSAGE)
    assert not isinstance(result, Reply)
    assert ("delrcpt", ("<trap@example.com>",)) in result.modifications


def test_transactions_reset_within_a_connection(milter: MilterProcess) -> None:
    with milter.client() as client:
        drive(client, Scenario("", "mail"))
        for i in range(5):
            assert client.rcpt(f"<u{i}@catchall.example>").passed
        client.abort()
        assert client.mail("<a@sender.example>").passed
        assert client.rcpt("<u9@catchall.example>").passed  # the count started over


def test_decision_log_names_the_rule(milter: MilterProcess) -> None:
    with milter.client() as client:
        drive(client, Scenario("", "mail", addr="192.0.2.66"))
    line = milter.wait_for_log("client=192.0.2.66")
    access = FIXTURE_RULES / "access"
    assert f"rule={access}:1" in line
    assert f'reply="{catalogue.get("access_denied").reply_line()}"' in line
    assert "stage=mail" in line and "duration_ms=" in line


def test_negotiation_asks_only_for_what_it_needs(milter: MilterProcess) -> None:
    with milter.client() as client:
        assert client.macro_lists.get("C") == {"j", "{daemon_name}"}
        assert "{auth_authen}" in client.macro_lists.get("M", set())


# --- the process: reload, stop, start-up failures -----------------------------

def test_sighup_reloads_and_keeps_old_rules_on_error(
        fresh_milter: Callable[..., MilterProcess], make_rules: Callable[..., Path]) -> None:
    rules = make_rules()
    process = fresh_milter(rules)
    six = Scenario("", "rcpt", rcpts=tuple(f"<u{i}@catchall.example>" for i in range(3)))
    with process.client() as client:
        assert drive(client, six).passed
    conf = rules / "policy.conf"
    conf.write_text(conf.read_text().replace("max_recipients = 5", "max_recipients = 2"))
    process.proc.send_signal(1)
    process.wait_for_log("event=reload status=ok")
    with process.client() as client:
        assert_reply(drive(client, six), "too_many_recipients")
    conf.write_text(conf.read_text() + "bogus = 1\n")
    process.proc.send_signal(1)
    error = process.wait_for_log("event=reload_error")
    assert f"{conf}:" in error and "unknown setting 'bogus'" in error
    process.wait_for_log("status=failed")
    with process.client() as client:
        assert_reply(drive(client, six), "too_many_recipients")  # the last good rules
    assert process.proc.poll() is None


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "policy_milter.cli", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def test_run_refuses_bad_rules(make_rules: Callable[..., Path]) -> None:
    rules = make_rules(max_recipients="many")
    result = run_cli("run", "--rules", str(rules), "--socket", "inet:1@127.0.0.1")
    assert result.returncode == 1
    assert f"{rules / 'policy.conf'}:" in result.stderr and "max_recipients" in result.stderr


def test_run_fails_when_the_socket_is_taken() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("run", "--rules", str(FIXTURE_RULES), "--socket",
                         f"inet:{port}@127.0.0.1")
    assert result.returncode == 3
    assert "event=error" in result.stderr


def test_check_command() -> None:
    ok = run_cli("check", "--rules", str(REPO / "rules"))
    assert ok.returncode == 0 and "domains:" in ok.stdout
    missing = run_cli("check", "--rules", str(REPO / "no-such-dir"))
    assert missing.returncode == 1 and "policy.conf: no such file" in missing.stderr


def test_concurrent_connections(milter: MilterProcess) -> None:
    """libmilter runs each connection in its own thread: sessions must not mix."""
    cases = [ROWS["21 unknown local user"], ROWS["16 relay"], ROWS["19a black list"],
             ROWS["25 too many recipients"]] * 12

    def one(scenario: Scenario) -> tuple[str, str]:
        with milter.client() as client:
            return drive(client, scenario).line, catalogue.get(scenario.entry).reply_line()

    with ThreadPoolExecutor(max_workers=24) as pool:
        results = list(pool.map(one, cases))
    assert all(got == want for got, want in results), results


def test_unix_socket_has_the_requested_mode(milter: MilterProcess) -> None:
    path = Path(milter.socket.partition(":")[2])
    assert path.stat().st_mode & 0o777 == 0o660


def test_sigterm_lets_open_sessions_finish(fresh_milter: Callable[..., MilterProcess]) -> None:
    process = fresh_milter(FIXTURE_RULES)
    with process.client() as client:
        assert drive(client, Scenario("", "mail")).passed
        process.proc.send_signal(15)
        process.wait_for_log("event=stop signal=SIGTERM open_sessions=1")
        assert client.rcpt("<postmaster@example.com>").passed
        assert client.data().passed
        assert not isinstance(client.message(MESSAGE), Reply)
        with process.client() as late:  # new connections are told to come back later
            assert_reply(late.connect("mx.sender.example", "192.0.2.10", 4000),
                         "shutdown_tempfail")
    assert process.proc.wait(timeout=10) == 0
