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


# Every envelope-stage row, as tests/fixtures/rules produce it.
ROWS = {
    "1 unknown command": Scenario("command_unrecognized", "unknown", unknown="XYZZY"),
    "2 sender without domain": Scenario("domain_required", "mail", sender="<nodomain>"),
    "3 unbalanced helo": Scenario("unbalanced", "helo", helo=("[192.0.2.10",)),
    "3 unbalanced sender": Scenario("unbalanced", "mail", sender="<a@sender.example"),
    "3 unbalanced recipient": Scenario("unbalanced", "rcpt", rcpts=('<"a@example.com>',)),
    "4 bad SIZE": Scenario("syntax_error", "mail", params=("SIZE=abc",)),
    "4 bad recipient": Scenario("syntax_error", "rcpt", rcpts=("<a@@example.com>",)),
    "5 helo not a domain": Scenario("helo_requires_domain", "helo", helo=("bad host!",)),
    "9 disallowed operation": Scenario("operation_not_supported", "unknown", unknown="TURN"),
    # libmilter itself drops RCPT before MAIL (the engine's own answer is unit-tested);
    # DATA after every recipient was refused reaches the milter.
    "10 data without recipient": Scenario("bad_sequence", "data",
                                          rcpts=("<nobody@example.com>",)),
    "12 no helo": Scenario("helo_required", "mail", helo=()),
    "13 second helo": Scenario("helo_already_specified", "helo",
                               helo=("mx.sender.example", "mx.sender.example")),
    "15 auth required on listener": Scenario("auth_required", "mail", listener="submission"),
    "15 auth required for sender domain": Scenario("auth_required", "mail",
                                                   sender="<x@partner.example>"),
    "16 relay": Scenario("relay_denied", "rcpt", rcpts=("<x@elsewhere.example>",)),
    "16 percent hack": Scenario("relay_denied", "rcpt",
                                rcpts=("<x%elsewhere.example@example.com>",)),
    "17 account limits": Scenario("account_limits", "rcpt", login="rater",
                                  sender="<rater@quota.example>",
                                  rcpts=tuple(f"<u{i}@catchall.example>" for i in range(5))),
    "18 local domains only": Scenario("local_domains_only", "rcpt", login="intern",
                                      sender="<intern@example.com>",
                                      rcpts=("<x@elsewhere.example>",)),
    "19a black list": Scenario("access_denied", "mail", addr="192.0.2.66"),
    "19b local sender, untrusted client": Scenario("access_denied", "mail",
                                                   sender="<alice@example.com>"),
    "19c members-only list": Scenario("access_denied", "rcpt",
                                      rcpts=("<staff@lists.example.com>",)),
    "20 deny rule": Scenario("permission_denied", "mail", sender="<boss@deny.example>"),
    "21 unknown local user": Scenario("unknown_user_local", "rcpt",
                                      rcpts=("<nobody@example.com>",)),
    "22 unknown relay user": Scenario("unknown_user_relay", "rcpt",
                                      rcpts=("<nobody@backup.example.org>",)),
    "23 moved user": Scenario("user_not_local", "rcpt", rcpts=("<bob@example.com>",)),
    "24 no such list": Scenario("no_such_list", "rcpt", rcpts=("<nosuch@lists.example.com>",)),
    "25 too many recipients": Scenario(
        "too_many_recipients", "rcpt", rcpts=tuple(f"<u{i}@catchall.example>" for i in range(6))),
    "26 declared size": Scenario("message_size_exceeded", "mail", params=("SIZE=10485761",)),
    "26 counted size": Scenario("message_size_exceeded", "eom", sender="<a@small.example>",
                                body=b"x" * (1024**2 + 10)),
    "32 declared size per recipient": Scenario("mailbox_size_exceeded", "rcpt",
                                               params=("SIZE=4096",),
                                               rcpts=("<carol@example.com>",)),
    "32 counted size per recipient": Scenario("mailbox_size_exceeded", "eom",
                                              rcpts=("<carol@example.com>",), body=b"x" * 2000),
    "33 declared size on listener": Scenario("listener_size_exceeded", "mail",
                                             listener="submission", login="alice",
                                             sender="<alice@example.com>",
                                             params=(f"SIZE={5 * 1024**2 + 1}",)),
    "33 counted size on listener": Scenario("listener_size_exceeded", "eom",
                                            listener="submission", login="alice",
                                            sender="<alice@example.com>",
                                            body=b"x" * (5 * 1024**2 + 1)),
    "34 filter rule": Scenario("filter_rejected", "mail", sender="<a@filtered.example>"),
    "34 filter rule at rcpt": Scenario("filter_rejected", "rcpt", sender="<a@mixed.example>"),
}
