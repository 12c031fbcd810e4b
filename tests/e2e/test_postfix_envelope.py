"""The golden envelope sessions through a real Postfix, as an SMTP client sees them, and
the rows Postfix answers itself.

Postfix runs with contrib/postfix/main.cf and master.cf as they are, chrooted smtpd and milter
socket included (tests/support/postfix.py adds only ports, paths and the site's own maps), in
front of a real policy-milter process on tests/fixtures/rules.  Clients look remote through
XCLIENT (127.0.0.1 itself is in the rules' relay_networks).  Expected replies come from the
catalogue, never from this file; where Postfix answers before the milter is asked (the golden
sessions marked postfix-answers-first), a test of its own asserts Postfix's own reply and its
docstring says why the milter's row cannot reach the client.

Postfix passes a milter's reply through unchanged (code, enhanced code and text), at the
command the milter refused, except a refused HELO/EHLO: that one still gets 250 and the
refusal answers the next MAIL FROM.
"""

from __future__ import annotations

import base64
import json
import re
import smtplib
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import pytest

from policy_milter import catalogue
from policy_milter.stages import Stage
from tests.conftest import REPO
from tests.e2e.conftest import LOCAL_DOMAINS, MAILBOXES, USERS, Pair, milter_dir
from tests.milter.conftest import MilterProcess
from tests.support import golden
from tests.support.golden import SESSIONS, Answer
from tests.support.postfix import PostfixInstance, reply

Response = tuple[int, bytes]
MAIL_OK = "MAIL FROM:<a@sender.example>"
RCPT_OK = "RCPT TO:<postmaster@example.com>"


def expect(response: Response, name: str) -> None:
    """The client got exactly the catalogue entry's code, enhanced code and text."""
    e = catalogue.get(name)
    assert reply(response) == (int(e.code), e.enhanced, e.text), response


def mta_side_replies() -> dict[str, tuple[int, str, str]]:
    """README's table of what Postfix answers for the rows that happen inside SASL."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| (\d+) `(\w+)` \| [^|]+ \| `(\d{3}) (\d\.\d+\.\d+) ([^`]+)` \|$",
                      readme, re.M)
    table = {name: (int(code), enh, text) for _, name, code, enh, text in rows}
    assert set(table) == {"auth_cancelled", "auth_failed", "auth_already_done",
                          "auth_type_unrecognized"}, table
    return table


def plain(login: str, password: str) -> str:
    return base64.b64encode(f"\0{login}\0{password}".encode()).decode()


def authenticate(s: smtplib.SMTP, login: str) -> None:
    auth = s.docmd("AUTH", f"PLAIN {plain(login, USERS[login])}")
    assert auth[0] == 235, auth


def remote(postfix: PostfixInstance, *, addr: str = "192.0.2.10",
           name: str = "mx.sender.example", port: str = "smtp",
           greeting: str | None = "mx.sender.example", login: str = "") -> smtplib.SMTP:
    """A session that looks like a remote client ``name`` [``addr``]: XCLIENT, then EHLO
    ``greeting`` (None: no greeting yet), then AUTH PLAIN as ``login``."""
    s = postfix.smtp(postfix.ports[port])
    try:
        assert s.ehlo("client.test")[0] == 250
        assert s.docmd("XCLIENT", f"ADDR={addr} NAME={name}")[0] == 220
        if greeting is not None:
            assert s.ehlo(greeting)[0] == 250
        if login:
            authenticate(s, login)
    except BaseException:
        s.close()
        raise
    return s


def command(s: smtplib.SMTP, line: str) -> Response:
    verb, _, args = line.partition(" ")
    return s.docmd(verb, args)


def message(marker: str, sender: str = "a@sender.example", to: str = "postmaster@example.com",
            body: str = "Hello.\r\n") -> bytes:
    return (f"From: <{sender}>\r\nTo: <{to}>\r\nSubject: e2e {marker}\r\n"
            f"Message-ID: <{marker}@client.test>\r\n\r\n{body}").encode()


def marker() -> str:
    return uuid.uuid4().hex[:12]


def new_log_lines(milter: MilterProcess, before: int) -> list[str]:
    return milter.log_lines()[before:]


# --- the golden sessions -------------------------------------------------------------------

PORTS = {"smtpd": "smtp", "submission": "submission"}  # listener -> PostfixInstance.ports
NULL_MAIL = "MAIL FROM:<>"


def answer(response: Response) -> Answer:
    code, enhanced, text = reply(response)
    return Answer.reply(str(code), enhanced, text)


def end_of_data(s: smtplib.SMTP, raw: bytes) -> Response:
    """Send the message after DATA's 354, dot-stuffed, and the dot; the reply."""
    s.send(re.sub(rb"(?m)^\.", b"..", raw) + b".\r\n")
    return s.getreply()


def arrival(postfix: PostfixInstance, session: golden.Session, tag: str) -> Answer:
    """A 250 at end of data as the table states it: nothing arrived is a discard; a
    recipient that passed but got no copy was dropped."""
    arrived = [copy.recipient for copy in postfix.deliveries_of(tag)]
    passed = [step.arg for step in session.steps if step.stage is Stage.RCPT and not step.refused]
    assert sorted(set(arrived)) == sorted(arrived) and set(arrived) <= {
        a.strip("<>") for a in passed}, f"copies for {arrived}, recipients {passed}"
    if not arrived:
        return Answer("discard")
    return Answer(golden.OK, dropped=tuple(a for a in passed if a.strip("<>") not in arrived))


def play(s: smtplib.SMTP, postfix: PostfixInstance, session: golden.Session,
         step: golden.Step, tag: str) -> Answer:
    if step.stage is Stage.EOM:
        response = end_of_data(s, session.message(step, tag).raw)
        return arrival(postfix, session, tag) if response[0] == 250 else answer(response)
    response = command(s, step.command)
    if step.stage is Stage.HELO and step.refused:
        # Postfix greets back and holds the milter's refusal for the next MAIL FROM; the
        # table ends a session at a refusal, so that MAIL FROM is the replayer's own.
        assert response[0] == 250, response
        return answer(command(s, NULL_MAIL))
    return answer(response)


# Every golden session but those Postfix answers itself: each of those names the test
# of this module that shows Postfix's own reply instead.
PLAYED = {name: s for name, s in SESSIONS.items() if not s.postfix_answers_first}


def test_sessions_postfix_answers_first_have_their_own_tests() -> None:
    answered = [s for s in SESSIONS.values() if s.postfix_answers_first]
    assert answered
    for session in answered:
        named = re.findall(r"\b(test_\w+)\b", session.postfix_answers_first)
        assert named and all(callable(globals().get(n)) for n in named), session.where


@pytest.mark.parametrize("session", PLAYED.values(), ids=PLAYED.keys())
def test_golden_session_through_postfix(postfix: PostfixInstance,
                                        session: golden.Session) -> None:
    """A login is given with AUTH right after the first greeting, as a client must."""
    if session.login and session.steps[0].stage is not Stage.HELO:
        pytest.fail(f"{session.where}: {session.name!r} has a login but does not greet "
                    "first: AUTH cannot be played")
    tag = marker()
    with remote(postfix, addr=session.addr, name=session.client_name or "[UNAVAILABLE]",
                port=PORTS[session.listener], greeting=None) as s:
        for number, step in enumerate(session.steps):
            session.check(step, play(s, postfix, session, step, tag))
            if session.login and number == 0:
                authenticate(s, session.login)


def test_every_envelope_row_is_covered() -> None:
    """The golden sessions Postfix plays, plus row 10 (Postfix answers it, below)."""
    rows = {catalogue.get(name).row for s in SESSIONS.values() if not s.postfix_answers_first
            for name in s.entries} | {10}
    assert rows >= {1, 2, 3, 4, 5, 9, 10, 12, 13, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25,
                    26, 30, 32, 33, 34}
    assert {catalogue.get(name).row for name in mta_side_replies()} == {6, 7, 11, 14}


# --- rows Postfix answers itself -------------------------------------------------------------

def postfix_answers(postfix: PostfixInstance, milter: MilterProcess, addr: str,
                    lines: tuple[str, ...]) -> Response:
    """The reply to the last line; every earlier one passes; the milter decided nothing."""
    before = len(milter.log_lines())
    with remote(postfix, addr=addr) as s:
        steps = [command(s, line) for line in lines]
    assert all(code < 400 for code, _ in steps[:-1]), steps
    assert not [line for line in new_log_lines(milter, before) if "event=decision" in line]
    return steps[-1]


def test_3_unbalanced_sender_is_answered_by_postfix(
        postfix: PostfixInstance, e2e_milter: MilterProcess) -> None:
    """Row 3 (`unbalanced`) for MAIL FROM cannot reach a client through Postfix.

    Postfix parses the address itself before it calls the milter and refuses the unbalanced
    ``<`` with its own reply; no setting changes that (strict_rfc821_envelopes = no, the
    default, still refuses it).  The milter's row 3 reaches the client for HELO (above).
    """
    got = postfix_answers(postfix, e2e_milter, "192.0.2.31", ("MAIL FROM:<a@sender.example",))
    assert reply(got) == (501, "5.1.7", "Bad sender address syntax")


def test_3_unbalanced_recipient_is_answered_by_postfix(
        postfix: PostfixInstance, e2e_milter: MilterProcess) -> None:
    """Row 3 for RCPT TO cannot reach a client through Postfix: as for MAIL FROM, Postfix's
    own address parser refuses the unbalanced quote first, whatever the settings."""
    got = postfix_answers(postfix, e2e_milter, "192.0.2.32",
                          (MAIL_OK, 'RCPT TO:<"a@example.com>'))
    assert reply(got) == (501, "5.1.3", "Bad recipient address syntax")


def test_4_bad_size_parameter_is_answered_by_postfix(
        postfix: PostfixInstance, e2e_milter: MilterProcess) -> None:
    """Row 4 (`syntax_error`) for a malformed SIZE= cannot reach a client through Postfix.

    Postfix parses MAIL FROM's parameters itself and refuses ``SIZE=abc`` before the milter
    sees the command; no setting changes that.  Row 4 reaches the client for a malformed
    recipient (above), which Postfix's parser lets through.
    """
    got = postfix_answers(postfix, e2e_milter, "192.0.2.33", (f"{MAIL_OK} SIZE=abc",))
    assert reply(got) == (501, "5.5.4", "Bad message size syntax")


def test_10_data_without_recipient_is_answered_by_postfix(
        postfix: PostfixInstance, e2e_milter: MilterProcess) -> None:
    """Row 10 (`bad_sequence`) cannot reach a client through Postfix.

    Postfix calls the milter's DATA callback only when it has accepted a recipient, and it
    accepts one only after the milter did, so the milter's "an accepted recipient must exist"
    never fails behind Postfix: Postfix itself answers DATA without an accepted recipient
    ("554 5.5.1 Error: no valid recipients" after MAIL FROM, "503 5.5.1 Error: need RCPT
    command" before it) and RCPT before MAIL ("503 5.5.1 Error: need MAIL command"; libmilter
    would not pass that one on either).  These are fixed Postfix texts; no setting hands the
    decision to the milter.
    """
    before = len(e2e_milter.log_lines())
    with remote(postfix, addr="192.0.2.34") as s:
        assert reply(command(s, RCPT_OK)) == (503, "5.5.1", "Error: need MAIL command")
        assert reply(s.docmd("DATA")) == (503, "5.5.1", "Error: need RCPT command")
    with remote(postfix, addr="192.0.2.34") as s:
        assert command(s, MAIL_OK)[0] == 250
        assert reply(s.docmd("DATA")) == (554, "5.5.1", "Error: no valid recipients")
        expect(command(s, "RCPT TO:<nobody@example.com>"), "unknown_user_local")
        assert reply(s.docmd("DATA")) == (554, "5.5.1", "Error: no valid recipients")
    lines = new_log_lines(e2e_milter, before)
    assert not [line for line in lines if "stage=data" in line], lines


# --- what arrives ------------------------------------------------------------------------------

def send(s: smtplib.SMTP, sender: str, recipients: tuple[str, ...], msg: bytes) -> Response:
    assert command(s, f"MAIL FROM:<{sender}>")[0] == 250
    for rcpt in recipients:
        assert command(s, f"RCPT TO:<{rcpt}>")[0] == 250
    return s.data(msg)


def test_accepted_mail_arrives_once_with_the_milters_header(postfix: PostfixInstance) -> None:
    tag = marker()
    with remote(postfix) as s:
        assert send(s, "a@tagged.example", ("postmaster@example.com",),
                    message(tag, sender="a@tagged.example"))[0] == 250
    copies = postfix.deliveries_of(tag)
    assert len(copies) == 1, [c.path for c in copies]
    assert copies[0].recipient == "postmaster@example.com"
    assert copies[0].sender == "a@tagged.example"
    assert copies[0].message.get_all("X-Policy") == ["tagged"]


def test_discarded_message_does_not_arrive_30(postfix: PostfixInstance,
                                              e2e_milter: MilterProcess) -> None:
    gone, kept = marker(), marker()
    with remote(postfix) as s:
        assert send(s, "a@discard.example", ("postmaster@example.com",),
                    message(gone, sender="a@discard.example"))[0] == 250
        assert send(s, "a@sender.example", ("postmaster@example.com",), message(kept))[0] == 250
    assert len(postfix.deliveries_of(kept)) == 1
    assert postfix.deliveries_of(gone) == []
    line = e2e_milter.wait_for_log("sender=a@discard.example", event="decision")
    assert "action=discard" in line and catalogue.get("deleted_by_filter").text in line
    assert "milter-discard" in postfix.log()


def test_discarded_recipient_is_dropped_30(postfix: PostfixInstance) -> None:
    tag = marker()
    with remote(postfix) as s:
        assert send(s, "a@sender.example", ("trap@example.com", "postmaster@example.com"),
                    message(tag))[0] == 250
    copies = postfix.deliveries_of(tag)
    assert [c.recipient for c in copies] == ["postmaster@example.com"]


def test_authenticated_client_may_relay(postfix: PostfixInstance) -> None:
    """AUTH through Postfix makes the client trusted: {auth_authen} is the bare login."""
    tag = marker()
    with remote(postfix, addr="192.0.2.40", port="submission", login="alice") as s:
        assert send(s, "alice@example.com", ("x@elsewhere.example",),
                    message(tag, sender="alice@example.com", to="x@elsewhere.example"))[0] == 250
    copies = postfix.deliveries_of(tag)
    assert [c.recipient for c in copies] == ["x@elsewhere.example"]
    assert "sasl_username=alice\n" in postfix.log()


# --- rows that happen inside Postfix's SASL exchange ------------------------------------------

def test_mta_side_auth_rows_are_postfixs_own(postfix: PostfixInstance,
                                            e2e_milter: MilterProcess) -> None:
    """Rows 6, 7, 11 and 14 are Postfix's SASL replies (README's table); the milter never
    sees the AUTH exchange and logs nothing for these sessions."""
    want = mta_side_replies()
    with remote(postfix, addr="192.0.2.51", port="submission") as s:  # 7: wrong password
        assert reply(s.docmd("AUTH", f"PLAIN {plain('alice', 'wrong')}")) == want["auth_failed"]
        assert reply(s.docmd("AUTH", f"PLAIN {plain('nosuchuser', 'x')}")) == want["auth_failed"]
    with remote(postfix, addr="192.0.2.52", port="submission") as s:  # 6: client cancels
        assert s.docmd("AUTH", "PLAIN")[0] == 334
        assert reply(s.docmd("*")) == want["auth_cancelled"]
    with remote(postfix, addr="192.0.2.53", port="submission", login="alice") as s:  # 11
        assert reply(s.docmd("AUTH", f"PLAIN {plain('alice', USERS['alice'])}")) \
            == want["auth_already_done"]
    with remote(postfix, addr="192.0.2.54", port="submission") as s:  # 14: no such mechanism
        assert reply(s.docmd("AUTH", "CRAM-MD5")) == want["auth_type_unrecognized"]
        assert reply(s.docmd("AUTH", "GSSAPI")) == want["auth_type_unrecognized"]
    # A later session is logged, so the milter has seen everything before it.
    with remote(postfix, addr="192.0.2.55") as s:
        expect(command(s, "MAIL FROM:<boss@deny.example>"), "permission_denied")
    e2e_milter.wait_for_log("client=192.0.2.55", event="decision")
    lines = e2e_milter.log_lines()
    for addr in ("192.0.2.51", "192.0.2.52", "192.0.2.53", "192.0.2.54"):
        assert not [line for line in lines if f"client={addr} " in line], addr


# --- the macros Postfix sends -----------------------------------------------------------------

def start_null_milter(workdir: Path) -> tuple[subprocess.Popen[bytes], Path]:
    """nullmilter.py listening in ``workdir`` where policy-milter would; its log."""
    socket_path, log = workdir / "milter.sock", workdir / "null.log"
    proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "milter" / "nullmilter.py"),
                             f"unix:{socket_path}", str(log)], cwd=REPO,
                            umask=0o007)  # group postfix (setgid directory) may connect
    deadline = time.monotonic() + 20
    while not socket_path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("nullmilter did not start")
        time.sleep(0.05)
    return proc, log


def test_macros_postfix_sends(e2e_root: Path) -> None:
    """{daemon_name} is each service's milter_macro_daemon_name from contrib's master.cf,
    and {auth_authen} the bare SASL login (smtpd_sasl_local_domain empty)."""
    workdir = Path(tempfile.mkdtemp(prefix="macros-", dir=e2e_root))
    workdir.chmod(0o711)
    with ExitStack() as stack:
        postfix = PostfixInstance(workdir / "postfix", users=USERS,
                                  local_domains=LOCAL_DOMAINS, mailboxes=MAILBOXES)
        proc, log = start_null_milter(milter_dir(postfix.milter_directory))
        stack.callback(lambda: (proc.kill(), proc.wait(10)))  # it keeps no state to flush
        stack.callback(postfix.stop)
        postfix.start()
        with remote(postfix) as s:
            assert command(s, "MAIL FROM:<a@sender.example>")[0] == 250
        with remote(postfix, port="submission", login="alice") as s:
            assert command(s, "MAIL FROM:<alice@example.com>")[0] == 250
        events = [json.loads(line) for line in log.read_text().splitlines()]
    # XCLIENT starts a new milter session: the first connect of each is the 127.0.0.1 one.
    connects = [(e["daemon_name"], e["hostaddr"][0]) for e in events if e["event"] == "connect"]
    assert ("smtpd", "192.0.2.10") in connects and ("submission", "192.0.2.10") in connects
    assert {name for name, _ in connects} == {"smtpd", "submission"}
    assert [e["auth"] for e in events if e["event"] == "mail"] == [None, "alice"]


# --- the milter down, then back -----------------------------------------------------------------

def test_milter_down_means_tempfail_and_back_up_means_mail(
        fresh_pair: Callable[[], Pair]) -> None:
    """milter_default_action = tempfail (contrib's main.cf): with the milter stopped nothing
    passes; once it is back the same Postfix, not restarted, lets mail through again."""
    pair = fresh_pair()
    postfix = pair.postfix
    master = postfix.master_pid
    assert pair.milter.stop() == 0
    tag = marker()
    with remote(postfix) as s:
        got = command(s, MAIL_OK)
        assert reply(got) == (451, "4.7.1", "Service unavailable - try again later"), got
    postfix.wait_idle()
    assert postfix.delivered() == []
    pair.restart_milter()  # Postfix is not restarted: its next session finds the milter
    with remote(postfix) as s:
        assert send(s, "a@tagged.example", ("postmaster@example.com",),
                    message(tag, sender="a@tagged.example"))[0] == 250
    copies = postfix.deliveries_of(tag)
    assert len(copies) == 1 and copies[0].message.get_all("X-Policy") == ["tagged"]
    assert postfix.master_pid == master and master is not None and Path(f"/proc/{master}").exists()


# --- why contrib's main.cf says what it says ----------------------------------------------------

# Postfix's own values for the lines contrib/postfix/main.cf sets so that the milter answers
# (smtpd_relay_restrictions: its default from compatibility level 1 on), given to the SMTP
# services as -o options.
POSTFIX_DEFAULTS = {
    "smtpd_relay_restrictions": "permit_mynetworks, permit_sasl_authenticated, "
                                "defer_unauth_destination",
    "smtpd_reject_unlisted_recipient": "yes",
    "smtpd_helo_required": "yes",  # a common site setting; Postfix's default is no
    "message_size_limit": "10240000",
}


def test_without_contribs_settings_postfix_answers_first(
        fresh_pair: Callable[..., Pair]) -> None:
    """Each envelope line of contrib/postfix/main.cf is what lets a milter row reach the
    client: with Postfix's own values Postfix answers first, in its own words, and the milter
    is never asked (rows 12, 16, 21, 22, 26)."""
    pair = fresh_pair(smtpd_options=POSTFIX_DEFAULTS)
    postfix = pair.postfix
    before = len(pair.milter.log_lines())
    with remote(postfix, greeting=None) as s:  # smtpd_helo_required = yes
        assert reply(command(s, MAIL_OK)) == (503, "5.5.1", "Error: send HELO/EHLO first")
    with remote(postfix) as s:
        assert command(s, MAIL_OK)[0] == 250
        assert reply(command(s, "RCPT TO:<x@elsewhere.example>")) == (  # relay restrictions
            454, "4.7.1", "<x@elsewhere.example>: Relay access denied")
        assert reply(command(s, "RCPT TO:<nobody@example.com>")) == (  # unlisted recipient
            550, "5.1.1", "<nobody@example.com>: Recipient address rejected: "
                          "User unknown in virtual mailbox table")
        assert reply(command(s, "RCPT TO:<nobody@backup.example.org>")) == (
            550, "5.1.1", "<nobody@backup.example.org>: Recipient address rejected: "
                          "User unknown in relay recipient table")
    with remote(postfix) as s:  # message_size_limit
        assert reply(command(s, f"{MAIL_OK} SIZE=10485761")) == (
            552, "5.3.4", "Message size exceeds fixed limit")
    lines = new_log_lines(pair.milter, before)
    assert not [line for line in lines if "event=decision" in line], lines


def test_postfix_knows_a_tagged_recipient_as_its_mailbox(fresh_pair: Callable[..., Pair]) -> None:
    """contrib's recipient_delimiter is policy.conf's: where Postfix looks a recipient up
    in its own maps (smtpd_reject_unlisted_recipient = yes), carol+tag@example.com is the
    mailbox carol@example.com, as the milter takes it, and a tag makes no one known."""
    pair = fresh_pair(smtpd_options={"smtpd_reject_unlisted_recipient": "yes"})
    with remote(pair.postfix) as s:
        assert command(s, MAIL_OK)[0] == 250
        assert command(s, "RCPT TO:<carol+tag@example.com>")[0] == 250
        assert reply(command(s, "RCPT TO:<nobody+tag@example.com>")) == (
            550, "5.1.1", "<nobody+tag@example.com>: Recipient address rejected: "
                          "User unknown in virtual mailbox table")
