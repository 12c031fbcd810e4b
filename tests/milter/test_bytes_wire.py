"""Bytes that are not UTF-8, sent over the milter protocol to a real milter process.

MAIL and RCPT arguments and parameters, macro values and header values reach the engine
and are answered from the catalogue.  HELO names, unknown commands and header names
pymilter 1.0.5 decodes as strict UTF-8 in C, before the adapter is called, and answers
itself (``451 4.3.0 pymilter: untrapped exception``): those are pinned here as refused
and logged, and the catalogue answer they should get as an expected failure.  After
each, a normal session on the same milter still passes.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policy_milter import catalogue
from policy_milter.log import MAX_VALUE
from policy_milter.mtaclient import MilterClient, MilterTimeout, Reply
from tests.milter.conftest import MilterProcess
from tests.support.session import assert_reply, mail_from

MESSAGE = b"From: a@sender.example\r\nTo: postmaster@example.com\r\nSubject: hi\r\n\r\nHello.\r\n"
FF = "\udcff\udcfe"  # sent as the bytes ff fe (mtaclient encodes with surrogateescape)
PYMILTER_451 = "pymilter: untrapped exception in policy-milter"


def raw(data: bytes) -> str:
    """``data`` as mtaclient sends it byte for byte."""
    return data.decode("utf-8", "surrogateescape")


def entry(reply: Reply) -> str:
    """The catalogue entry a reply is, '' for a pass; anything else fails the test."""
    if reply.passed:
        return ""
    name = next((name for name, e in catalogue.ENTRIES.items()
                 if (reply.action, reply.code, reply.enhanced, reply.text)
                 == ("replycode", e.code, e.enhanced, e.text)), None)
    assert name is not None, f"not a catalogue reply: {reply}"
    return name


def assert_alive(milter: MilterProcess) -> None:
    """A clean message still passes on the same milter."""
    with milter.client() as client:
        assert mail_from(client).passed
        assert client.rcpt("<postmaster@example.com>").passed
        assert client.data().passed
        result = client.message(MESSAGE)
    assert not isinstance(result, Reply) and result.reply.action == "continue"


def session_lines(milter: MilterProcess, client: str) -> list[str]:
    return [line for line in milter.log_lines() if f"client={client} " in line]


def test_8bit_mail_and_rcpt_are_syntax_errors(milter: MilterProcess) -> None:
    with milter.client() as client:
        assert_reply(mail_from(client, f"<a{FF}@sender.example>", addr="192.0.2.201"),
                     "syntax_error")
        assert_reply(client.mail("<a@sender.example>", f"SIZE=1{FF}"), "syntax_error")
        assert client.mail("<a@sender.example>", macros={"i": ""}).passed
        assert_reply(client.rcpt(f"<postmaster{FF}@example.com>"), "syntax_error")
        assert_reply(client.rcpt("<postmaster@example.com>", f"NOTIFY={FF}"), "syntax_error")
    milter.wait_for_log("client=192.0.2.201 ", event="decision")
    refused = f'reply="{catalogue.get("syntax_error").reply_line()}"'
    assert sum(refused in line for line in session_lines(milter, "192.0.2.201")) == 4
    assert_alive(milter)


def test_8bit_macros_reach_the_engine(milter: MilterProcess) -> None:
    with milter.client() as client:
        assert client.connect("mx.sender.example", "192.0.2.202", 40000,
                              macros={"{daemon_name}": f"smtpd{FF}", "j": f"mx{FF}"}).passed
        assert client.helo("mx.sender.example").passed
        assert client.mail("<a@sender.example>",
                           macros={"{auth_authen}": f"dora{FF}", "i": f"Q{FF}"}).passed
        assert_reply(client.rcpt("<nobody@example.com>", macros={"i": f"Q{FF}"}),
                     "unknown_user_local")
    line = milter.wait_for_log("client=192.0.2.202 ", event="decision")
    assert r'qid="Q\xff\xfe"' in line and "stage=rcpt" in line
    assert not any("internal_error" in line for line in session_lines(milter, "192.0.2.202"))
    assert_alive(milter)


def test_8bit_header_value_reaches_the_engine(milter: MilterProcess) -> None:
    with milter.client() as client:
        assert mail_from(client, addr="192.0.2.203").passed
        assert client.rcpt("<postmaster@example.com>").passed
        assert client.data().passed
        result = client.message(MESSAGE.replace(b"Subject: hi", b"Subject: caf\xe9 \xff"))
    assert not isinstance(result, Reply) and result.reply.action == "continue"
    assert "action=accept" in milter.wait_for_log("client=192.0.2.203 ", event="decision")
    assert_alive(milter)


def test_60kb_helo_is_one_bounded_line(milter: MilterProcess) -> None:
    with milter.client() as client:
        assert client.connect("mx.sender.example", "192.0.2.204", 40000).passed
        assert_reply(client.helo("h" * 60_000 + ".example"), "helo_requires_domain")
    line = milter.wait_for_log("client=192.0.2.204 ", event="decision")
    assert f"...[+{60_008 - MAX_VALUE} chars]" in line and len(line) < 6 * MAX_VALUE
    assert_alive(milter)


def helo(client: MilterClient, text: str, addr: str) -> Reply:
    assert client.connect("mx.sender.example", addr, 40000).passed
    return client.helo(text)


def unknown(client: MilterClient, text: str, addr: str) -> Reply:
    assert client.connect("mx.sender.example", addr, 40000).passed
    assert client.helo("mx.sender.example").passed
    return client.unknown(text)


def header_name(client: MilterClient, text: str, addr: str) -> Reply:
    """The header goes without a reply (negotiated); end of message is what answers."""
    assert mail_from(client, addr=addr).passed
    assert client.rcpt("<postmaster@example.com>").passed
    assert client.data().passed
    assert client.header(text, "v").action == "noreply"
    client.eoh()
    return client.eom().reply


Send = Callable[[MilterClient, str, str], Reply]
DECODED_IN_C = pytest.mark.parametrize("send, text, rows, addr", [
    (helo, f"mx{FF}.example", {"helo_requires_domain"}, "192.0.2.211"),
    (unknown, f"XSEND{FF}", {"command_unrecognized"}, "192.0.2.212"),
    (header_name, f"X-{FF}", {"", "content_rejected"}, "192.0.2.213"),
], ids=["helo", "unknown", "header-name"])


@DECODED_IN_C
def test_what_pymilter_decodes_in_c_is_refused_and_logged(
        milter: MilterProcess, send: Send, text: str, rows: set[str], addr: str) -> None:
    with MilterClient(milter.socket, timeout=2) as client:
        try:
            reply = send(client, text, addr)
        except MilterTimeout:  # libmilter dropped the message: end of message is unanswered
            assert send is header_name
        else:
            assert reply.tempfailed and reply.text == PYMILTER_451
    line = milter.wait_for_log(f"event=internal_error stage=\"\" qid=\"\" client={addr} ")
    assert r"UnicodeDecodeError('utf-8', b'" in line and r"\\xff\\xfe" in line
    assert_alive(milter)


@pytest.mark.xfail(strict=True, reason="pymilter 1.0.5 decodes these as strict UTF-8 in C "
                                       "and answers with its own 451 before the adapter runs")
@DECODED_IN_C
def test_what_pymilter_decodes_in_c_gets_its_catalogue_row(
        milter: MilterProcess, send: Send, text: str, rows: set[str], addr: str) -> None:
    with MilterClient(milter.socket, timeout=2) as client:
        assert entry(send(client, text, addr)) in rows


BYTES = st.binary(max_size=30).map(lambda data: data.replace(b"\0", b""))


@settings(max_examples=100, deadline=None)
@given(sender=BYTES, param=BYTES, recipient=BYTES, login=BYTES, qid=BYTES, value=BYTES)
def test_any_envelope_macro_and_header_value_bytes_are_answered_from_the_catalogue(
        milter: MilterProcess, sender: bytes, param: bytes, recipient: bytes, login: bytes,
        qid: bytes, value: bytes) -> None:
    with milter.client() as client:
        assert client.connect("mx.sender.example", "192.0.2.206", 40000).passed
        assert client.helo("mx.sender.example").passed
        macros = {"{auth_authen}": raw(login), "i": raw(qid)}
        first = entry(client.mail(raw(b"<" + sender + b">"), macros=macros))
        client.abort()
        second = entry(client.mail("<a@sender.example>", raw(b"X-P=" + param), macros=macros))
        client.abort()
        assert client.mail("<a@sender.example>", macros=macros).passed
        third = entry(client.rcpt(raw(b"<" + recipient + b">"), macros={"i": raw(qid)}))
        client.abort()
        assert client.mail("<a@sender.example>", macros=macros).passed
        assert client.rcpt("<postmaster@example.com>").passed
        assert client.data().passed
        client.header("X-Any", value)
        client.eoh()
        fourth = entry(client.eom().reply)
    assert catalogue.DEFAULT_TEMPFAIL.name not in (first, second, third, fourth)
    assert_alive(milter)
