"""Catalogue rows through a real Sendmail, as an SMTP client sees them.

Sendmail 8.17 (Debian 12's packages, unpacked, never installed: tests/support/sendmail.py)
runs with contrib/sendmail/policy-milter.mc as it is (only the socket path replaced) in a
private mount namespace that resolves on loopback only, listens on 127.0.0.1 and relays
what it accepts to a sink in this process.  The milter is a real policy-milter process on
a copy of tests/fixtures/rules whose relay_networks leave 127.0.0.1 out, so that a
loopback client is an untrusted outside client.  Expected replies come from the catalogue,
never from this file, put in the form Sendmail gives them:

- Sendmail passes a milter's code, enhanced code and text through, but (err.c) writes the
  address before the text of a reply to MAIL or RCPT whose code is 450, 550 or 553:
  ``unknown_user_local`` for ``<nobody@example.com>`` reads ``550 5.1.1
  <nobody@example.com>... `` followed by the entry's text, and so does ``access_denied``
  at MAIL; ``user_not_local`` (551) or ``too_many_recipients`` (552) arrive as the
  milter wrote them.
- A refused HELO/EHLO still gets 250 (with a shortened extension list); the milter's reply
  then answers the session's MAIL, RCPT and DATA (not HELO, NOOP, RSET or QUIT), and the
  milter is not asked again in that session (an unknown command gets Sendmail's own 500).
- With the milter down, F=T makes MAIL FROM answer ``451 4.3.2 Please try again later``
  (Sendmail's text); the greeting and EHLO still succeed.

Some replies never come from the milter because Sendmail answers first (asserted below
with Sendmail's own texts): TURN, malformed addresses, DATA without an accepted recipient.
The site around the contrib lines sets confALLOW_BOGUS_HELO (else Sendmail itself refuses
a HELO name with characters outside letters, digits and ``[].-_#:``) and
FEATURE(accept_unqualified_senders) and FEATURE(accept_unresolvable_domains) (else
Sendmail refuses ``MAIL FROM:<nodomain>`` and, with no DNS here, every sender domain).

Macros.  Sendmail's default lists (cf/m4/cfhead.m4) are connect ``j _ {daemon_name}
{if_name} {if_addr}``, helo the TLS ones, mail ``i {auth_*} {mail_mailer} {mail_host}
{mail_addr}``, rcpt ``{rcpt_mailer} {rcpt_host} {rcpt_addr}``, eom ``{msg_id}``.  A
recording milter (tried once, not part of this suite) saw those arrive: {if_addr} not on
a 127.0.0.1 listener, no TLS or AUTH ones without STARTTLS or AUTH.  Sendmail honours a
milter's own request (setsymlist) stage by stage in place of these lists, so
policy-milter gets what it asks for.  Its log lines below show ``{daemon_name}`` (a
listener named ``submission`` brings that listener's rules) and ``i`` (the queue id of
Sendmail's "Message accepted" reply, in the MAIL, RCPT and end-of-message lines);
``client_name`` (``localhost``) is the connect callback's host name, not a macro.
"""

from __future__ import annotations

import re
import smtplib
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from policy_milter import catalogue
from tests.conftest import FIXTURE_RULES, copy_rules
from tests.milter.conftest import MilterProcess, start_milter
from tests.support.sendmail import SendmailInstance, running

Reply = tuple[int, str]
# Sendmail's err.c: the "<address>... " prefix goes before replies with these codes.
ADDRESS_PREFIXED = ("450", "550", "553")


def sendmail_form(name: str, command: str) -> Reply:
    """The catalogue entry ``name`` as Sendmail gives it in answer to ``command``."""
    e = catalogue.get(name)
    text = e.text
    address = re.match(r"(?i)(?:MAIL FROM|RCPT TO):\s*(<[^>]*>)", command)
    if address and e.code in ADDRESS_PREFIXED:
        text = f"{address.group(1)}... {text}"
    return int(e.code), f"{e.enhanced} {text}"


@dataclass
class Site:
    milter: MilterProcess
    mta: SendmailInstance


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """One milter on the fixture rules minus 127.0.0.0/8 as relay network, one Sendmail."""
    root = tmp_path_factory.mktemp("sendmail")
    rules = copy_rules(root / "rules", relay_networks="10.1.0.0/16")
    (root / "milter").mkdir()
    milter = start_milter(rules, root / "milter")
    try:
        with running(root / "mta", milter.socket) as mta:
            yield Site(milter, mta)
    finally:
        status = milter.stop()
    assert status == 0, "the milter did not stop cleanly"


def message(sender: str, subject: str = "test", body: bytes = b"Hello.\r\n") -> tuple[str, bytes]:
    msgid = f"<{uuid.uuid4().hex}@sender.test>"
    head = f"From: {sender}\r\nTo: postmaster@example.com\r\nSubject: {subject}\r\n" \
           f"Message-ID: {msgid}\r\n\r\n"
    return msgid, head.encode() + body


def converse(client: smtplib.SMTP, commands: tuple[str, ...], body: bytes | None) -> Reply:
    """Send ``commands`` (each but the last must succeed), then DATA and ``body`` if given;
    the last reply."""
    reply: Reply = (0, "")
    for i, command in enumerate(commands):
        code, text = client.docmd(command)
        reply = (code, text.decode())
        if i < len(commands) - 1 or body is not None:
            assert code < 400, (command, reply)
    if body is not None:
        try:
            code, text = client.data(body)
        except smtplib.SMTPDataError as refused:
            code, text = refused.smtp_code, refused.smtp_error
        reply = (code, text.decode())
    return reply


@dataclass
class Case:
    entry: str
    commands: tuple[str, ...]
    helo: str | None = "mx.sender.example"  # EHLO sent first; None: none
    body: bytes | None = None  # sent with DATA after the commands; the reply to "." counts


SENDER = "MAIL FROM:<a@sender.example>"
POSTMASTER = "RCPT TO:<postmaster@example.com>"
CATCHALL = tuple(f"RCPT TO:<u{i}@catchall.example>" for i in range(6))

ROWS = {
    "1 unknown command": Case("command_unrecognized", ("XYZZY",)),
    "2 sender without domain": Case("domain_required", ("MAIL FROM:<nodomain>",)),
    "3 unbalanced helo": Case("unbalanced", ("EHLO [192.0.2.10", SENDER), helo=None),
    "4 bad SIZE": Case("syntax_error", (f"{SENDER} SIZE=abc",)),
    "5 helo not a domain": Case("helo_requires_domain", ("EHLO bad!host", SENDER), helo=None),
    "5 helo refusal answers RCPT too": Case("helo_requires_domain",
                                            ("EHLO bad!host", POSTMASTER), helo=None),
    "5 helo refusal answers DATA too": Case("helo_requires_domain", ("EHLO bad!host", "DATA"),
                                            helo=None),
    "9 disallowed operation": Case("operation_not_supported", ("ATRN",)),
    "12 no helo": Case("helo_required", (SENDER,), helo=None),
    "13 second helo": Case("helo_already_specified", ("EHLO mx.sender.example", SENDER)),
    "15 auth required for sender domain": Case("auth_required",
                                               ("MAIL FROM:<x@partner.example>",)),
    "16 relay": Case("relay_denied", (SENDER, "RCPT TO:<x@elsewhere.example>")),
    "16 percent hack": Case("relay_denied",
                            (SENDER, "RCPT TO:<x%elsewhere.example@example.com>")),
    "19b local sender, untrusted client": Case("access_denied",
                                               ("MAIL FROM:<alice@example.com>",)),
    "19 black-listed sender domain": Case("access_denied", ("MAIL FROM:<x@blocked.example>",)),
    "19c members-only list": Case("access_denied",
                                  (SENDER, "RCPT TO:<staff@lists.example.com>")),
    "20 deny rule": Case("permission_denied", ("MAIL FROM:<boss@deny.example>",)),
    "20 deny rule at rcpt": Case("permission_denied", (SENDER, "RCPT TO:<former@example.com>")),
    "21 unknown local user": Case("unknown_user_local", (SENDER, "RCPT TO:<nobody@example.com>")),
    "22 unknown relay user": Case("unknown_user_relay",
                                  (SENDER, "RCPT TO:<nobody@backup.example.org>")),
    "23 moved user": Case("user_not_local", (SENDER, "RCPT TO:<bob@example.com>")),
    "24 no such list": Case("no_such_list", (SENDER, "RCPT TO:<nosuch@lists.example.com>")),
    "25 too many recipients": Case("too_many_recipients", (SENDER, *CATCHALL)),
    "26 declared size": Case("message_size_exceeded", (f"{SENDER} SIZE=10485761",)),
    "26 counted size": Case("message_size_exceeded", ("MAIL FROM:<a@small.example>", POSTMASTER),
                            body=message("a@small.example", body=(b"x" * 998 + b"\r\n")
                                         * 1100)[1]),
    "32 declared size per recipient": Case("mailbox_size_exceeded",
                                           (f"{SENDER} SIZE=4096", "RCPT TO:<carol@example.com>")),
    "32 counted size per recipient": Case("mailbox_size_exceeded",
                                          (SENDER, "RCPT TO:<carol@example.com>"),
                                          body=message("a@sender.example", body=b"x" * 2000)[1]),
    "34 filter rule": Case("filter_rejected", ("MAIL FROM:<a@filtered.example>",)),
    "34 filter rule at rcpt": Case("filter_rejected", ("MAIL FROM:<a@mixed.example>", POSTMASTER)),
    "tempfail rule": Case("state_tempfail", ("MAIL FROM:<a@tempfail.example>",)),
}


@pytest.mark.parametrize("case", ROWS.values(), ids=ROWS.keys())
def test_catalogue_row_through_sendmail(site: Site, case: Case) -> None:
    with site.mta.smtp(helo=case.helo) as client:
        got = converse(client, case.commands, case.body)
    assert got == sendmail_form(case.entry, case.commands[-1]), site.mta.diagnostics()[-2000:]


def test_rows_covered() -> None:
    rows = {catalogue.get(c.entry).row for c in ROWS.values()}
    assert rows >= {1, 2, 3, 4, 5, 9, 12, 13, 15, 16, 19, 20, 21, 22, 23, 24, 25, 26, 32, 34}


# What Sendmail answers itself, before the milter is asked (Sendmail's texts).
SENDMAIL_ITSELF = {
    "TURN is a Sendmail command (row 9 cannot answer it)": (
        ("TURN",), (502, '5.5.1 Command not implemented: "TURN"')),
    "unbalanced sender (row 3)": (
        ("MAIL FROM:<a@sender.example",), (553, "5.0.0 <a@sender.example... Unbalanced '<'")),
    "unbalanced recipient (row 3)": (
        (SENDER, 'RCPT TO:<"a@example.com>'),
        (553, '5.0.0 <"a@example.com>... Unbalanced \'"\'')),
    "malformed recipient (row 4)": (
        (SENDER, "RCPT TO:<a@@example.com>"),
        (553, "5.1.3 <a@@example.com>... Invalid route address")),
    "DATA without an accepted recipient (row 10)": (
        (SENDER, "RCPT TO:<nobody@example.com>", "DATA"), (503, "5.0.0 Need RCPT (recipient)")),
}


@pytest.mark.parametrize("commands, expected", SENDMAIL_ITSELF.values(),
                         ids=SENDMAIL_ITSELF.keys())
def test_what_sendmail_answers_itself(site: Site, commands: tuple[str, ...],
                                      expected: Reply) -> None:
    with site.mta.smtp() as client:
        for command in commands[:-1]:
            client.docmd(command)
        code, text = client.docmd(commands[-1])
    assert (code, text.decode()) == expected


def test_accepted_message_reaches_the_sink_once_with_the_header(site: Site) -> None:
    msgid, data = message("a@tagged.example")
    with site.mta.smtp() as client:
        assert converse(client, ("MAIL FROM:<a@tagged.example>", POSTMASTER), data)[0] == 250
    site.mta.sink.wait_for(lambda m: msgid in m.header("Message-ID"))
    time.sleep(0.3)  # delivery is interactive: a second copy would already be there
    arrived = [m for m in site.mta.sink.messages if msgid in m.header("Message-ID")]
    assert len(arrived) == 1
    assert arrived[0].header("X-Policy") == ["tagged"]
    assert arrived[0].sender == "<a@tagged.example>"
    assert arrived[0].recipients == ["<postmaster@example.com>"]


def test_discarded_message_is_accepted_and_dropped_30(site: Site) -> None:
    msgid, data = message("a@discard.example")
    with site.mta.smtp() as client:
        assert converse(client, ("MAIL FROM:<a@discard.example>", POSTMASTER), data)[0] == 250
    line = site.milter.wait_for_log("sender=a@discard.example", event="decision")
    assert catalogue.get("deleted_by_filter").text in line
    # Interactive delivery ends before Sendmail's 250: had it delivered, the sink would have it.
    assert not [m for m in site.mta.sink.messages if msgid in m.header("Message-ID")]


def test_queue_id_reaches_the_milter_at_every_stage(site: Site) -> None:
    """``i``: Sendmail's queue id is in the milter's MAIL, RCPT and end-of-message lines."""
    msgid, data = message("a@tagged.example")
    with site.mta.smtp() as client:
        client.docmd("MAIL FROM:<a@tagged.example>")
        client.docmd("RCPT TO:<nobody@example.com>")  # refused: a RCPT decision line
        client.docmd(POSTMASTER)
        code, text = client.data(data)
    assert code == 250
    qid = re.fullmatch(r"2\.0\.0 (\w+) Message accepted for delivery", text.decode()).group(1)
    for stage in ("mail", "rcpt", "eom"):
        line = site.milter.wait_for_log(f"stage={stage} qid={qid} ", event="decision")
        assert "client=127.0.0.1 client_name=localhost helo=mx.sender.example" in line
    [arrived] = site.mta.sink.wait_for(lambda m: msgid in m.header("Message-ID"))
    assert f"id {qid}" in " ".join(arrived.header("Received"))


def test_daemon_name_selects_the_listener_rules_15(site: Site, tmp_path: Path) -> None:
    """``{daemon_name}`` is DAEMON_OPTIONS' Name=: the fixture's listener ``submission``
    requires AUTH."""
    with running(tmp_path / "submission", site.milter.socket, daemon_name="submission") as mta:
        with mta.smtp() as client:
            code, text = client.docmd(SENDER)
    assert (code, text.decode()) == sendmail_form("auth_required", SENDER)


def test_milter_down_tempfails_and_recovers(tmp_path: Path) -> None:
    """F=T: with the milter stopped Sendmail refuses with a 4xx; nothing passes unchecked."""
    (tmp_path / "milter").mkdir()
    milter = start_milter(FIXTURE_RULES, tmp_path / "milter")
    try:
        with running(tmp_path / "mta", milter.socket) as mta:
            assert milter.stop() == 0
            msgid, data = message("a@sender.example")
            with mta.smtp() as client:
                code, text = client.docmd(SENDER)
                assert (code, text.decode()) == (451, "4.3.2 Please try again later")
                assert client.docmd(POSTMASTER)[0] == 503  # no transaction was opened
            milter = start_milter(FIXTURE_RULES, tmp_path / "milter")
            with mta.smtp() as client:  # Sendmail opens the milter anew for each connection
                assert converse(client, (SENDER, POSTMASTER), data)[0] == 250
            mta.sink.wait_for(lambda m: msgid in m.header("Message-ID"))
    finally:
        milter.stop()
