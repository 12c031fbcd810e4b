"""An SMTP session, as an MTA would drive a milter through it, stopped where a test looks."""

from __future__ import annotations

from dataclasses import dataclass

from policy_milter import catalogue
from policy_milter.mtaclient import MilterClient, Reply


@dataclass
class Scenario:
    """One SMTP session, stopped at ``stage`` where the reply is taken."""

    entry: str
    stage: str
    addr: str = "192.0.2.10"
    listener: str = "smtpd"
    helo: tuple[str, ...] = ("mx.sender.example",)
    login: str = ""
    sender: str = "<a@sender.example>"
    params: tuple[str, ...] = ()
    rcpts: tuple[str, ...] = ("<postmaster@example.com>",)
    unknown: str = ""
    body: bytes = b"Hello.\r\n"


def drive(client: MilterClient, s: Scenario) -> Reply:
    """Run the session like an MTA; the reply of the scenario's stage."""
    reply = client.connect("mx.sender.example", s.addr, 40000,
                           macros={"{daemon_name}": s.listener})
    if s.stage == "unknown":
        return client.unknown(s.unknown)
    for name in s.helo:
        reply = client.helo(name)
    if s.stage == "helo":
        return reply
    reply = client.mail(s.sender, *s.params,
                        macros={"{auth_authen}": s.login, "i": ""})
    if s.stage == "mail":
        return reply
    for rcpt in s.rcpts:
        reply = client.rcpt(rcpt, macros={"i": "QID1"})
        if not reply.passed:
            break
    if s.stage == "rcpt":
        return reply
    reply = client.data(macros={"i": "QID1"})
    if s.stage == "data":
        return reply
    result = client.message(b"Subject: test\r\n\r\n" + s.body)
    return result if isinstance(result, Reply) else result.reply


def assert_reply(reply: Reply, name: str) -> None:
    e = catalogue.get(name)
    assert (reply.action, reply.code, reply.enhanced, reply.text) == (
        "replycode", e.code, e.enhanced, e.text), reply
