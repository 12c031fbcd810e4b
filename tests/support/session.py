"""The start of an SMTP session, as an MTA drives a milter through it, and reply checks."""

from __future__ import annotations

from policy_milter import catalogue
from policy_milter.mtaclient import MilterClient, Reply


def mail_from(client: MilterClient, sender: str = "<a@sender.example>",
              addr: str = "192.0.2.10") -> Reply:
    """Connect from ``addr`` to port 25's service, greet, and send MAIL FROM ``sender``
    like Postfix; the reply to MAIL FROM."""
    assert client.connect("mx.sender.example", addr, 40000,
                          macros={"{daemon_name}": "smtpd"}).passed
    assert client.helo("mx.sender.example").passed
    return client.mail(sender, macros={"{auth_authen}": "", "i": ""})


def assert_reply(reply: Reply, name: str) -> None:
    e = catalogue.get(name)
    assert (reply.action, reply.code, reply.enhanced, reply.text) == (
        "replycode", e.code, e.enhanced, e.text), reply
