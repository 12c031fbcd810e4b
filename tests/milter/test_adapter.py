"""The pymilter adapter under Milter.testctx: callbacks in, replies and actions out."""

from __future__ import annotations

import socket
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import Milter
import Milter.test  # noqa: F401  (makes NOREPLY callbacks continue in the test context)
import pytest
from Milter import testctx

from policy_milter import catalogue
from policy_milter.engine import Engine
from policy_milter.milter import PolicyMilter
from policy_milter.rules.policy import Policy, load
from policy_milter.services import Services
from policy_milter.services.state import MemoryRateStore
from tests.support.session import ROWS, Scenario

MESSAGE = b"From: a@sender.example\nTo: postmaster@example.com\nSubject: hi\n\nHello.\n"


def context(engine: Engine, listener: str = "smtpd") -> testctx.TestCtx:
    Milter.factory = lambda: PolicyMilter(engine)
    # TestCtx offers a class-level list that negotiation writes into: offer afresh each time.
    testctx.TestCtx.default_opts = [Milter.CURR_ACTS, 0x1FFFFF, 0, 0]
    ctx = testctx.TestCtx()
    ctx._setsymval("{daemon_name}", listener)
    return ctx


def replied(ctx: testctx.TestCtx, name: str) -> bool:
    e = catalogue.get(name)
    return ctx._reply == (e.code, e.enhanced, e.text)


@pytest.fixture
def ctx(fixture_policy: Policy) -> testctx.TestCtx:
    c = context(Engine(fixture_policy, Services()))
    assert c._connect("mx.sender.example", "mx.sender.example", "192.0.2.10") == Milter.CONTINUE
    return c


def test_accepts_a_clean_message(ctx: testctx.TestCtx) -> None:
    rc = ctx._feedFile(BytesIO(MESSAGE), "a@sender.example", "postmaster@example.com")
    assert rc == Milter.CONTINUE and ctx._reply is None


def test_recipient_reject_sets_the_catalogue_reply(ctx: testctx.TestCtx) -> None:
    rc = ctx._feedFile(BytesIO(MESSAGE), "a@sender.example", "nobody@example.com")
    assert rc == Milter.REJECT and replied(ctx, "unknown_user_local")


def test_helo_reject(fixture_policy: Policy) -> None:
    c = context(Engine(fixture_policy, Services()))
    assert c._connect("host", "not a domain", "192.0.2.10") == Milter.REJECT
    assert replied(c, "helo_requires_domain")


def test_unknown_command(ctx: testctx.TestCtx) -> None:
    assert ctx.getpriv().unknown("TURN") == Milter.REJECT
    assert replied(ctx, "operation_not_supported")


def test_header_is_added_at_end_of_message(ctx: testctx.TestCtx) -> None:
    rc = ctx._feedFile(BytesIO(MESSAGE), "a@tagged.example", "postmaster@example.com")
    assert rc == Milter.CONTINUE
    assert ctx._msg["X-Policy"] == "tagged"


def test_discarded_recipient_is_deleted(ctx: testctx.TestCtx) -> None:
    rc = ctx._feedFile(BytesIO(MESSAGE), "a@sender.example", "trap@example.com",
                       "postmaster@example.com")
    assert rc == Milter.CONTINUE and ctx._delrcpt == ["<trap@example.com>"]


def test_internal_error_is_a_tempfail_with_reply(fixture_policy: Policy) -> None:
    class Broken(MemoryRateStore):
        def total(self, key: str, window: int) -> int:
            raise RuntimeError("boom")

    c = context(Engine(fixture_policy, Services(rates=Broken())))
    c._connect("mx.sender.example", "mx.sender.example", "192.0.2.10")
    c._setsymval("{auth_authen}", "dora")
    rc = c._feedFile(BytesIO(MESSAGE), "dora@quota.example", "postmaster@example.com")
    assert rc == Milter.TEMPFAIL and replied(c, "internal_tempfail")


def test_negotiation_follows_the_policy(make_rules: Callable[..., Path]) -> None:
    """No size limit: headers and body are never sent; with one, they are, reply-less."""
    def negotiated(rules: Path) -> int:
        c = context(Engine(load(rules), Services()))
        c._negotiate()
        return c._protocol

    without = negotiated(make_rules(max_message_size="0", listeners="", domains="", accounts=""))
    assert without & Milter.P_NOHDRS and without & Milter.P_NOBODY and without & Milter.P_NOEOH
    assert without & Milter.P_NR_CONN and not without & Milter.P_NR_RCPT
    with_limit = negotiated(make_rules())
    assert not with_limit & Milter.P_NOBODY and with_limit & Milter.P_NR_BODY


def drive_ctx(ctx: testctx.TestCtx, s: Scenario) -> int:
    """The scenario through Milter.testctx, as libmilter would call the adapter."""
    for name, value in (("{daemon_name}", s.listener), ("{auth_authen}", s.login),
                        ("i", "QID1")):
        ctx._setsymval(name, value)
    ctx._negotiate()
    family = socket.AF_INET6 if ":" in s.addr else socket.AF_INET
    rc = Milter.connect_callback(ctx, "mx.sender.example", family, s.addr)
    if s.stage == "unknown":
        return ctx.getpriv().unknown(s.unknown)
    for name in s.helo:
        rc = ctx._helo(name)
    if s.stage == "helo":
        return rc
    rc = ctx._envfrom(s.sender, *s.params)
    if s.stage == "mail":
        return rc
    for rcpt in s.rcpts:
        rc = ctx._envrcpt(rcpt)
        if rc != Milter.CONTINUE:
            break
    if s.stage == "rcpt":
        return rc
    rc = ctx._data()
    if s.stage == "data":
        return rc
    ctx._header("Subject", "test")
    ctx._eoh()
    ctx._feed_body(BytesIO(s.body))
    return ctx._eom()


@pytest.mark.parametrize("scenario", ROWS.values(), ids=ROWS.keys())
def test_catalogue_row_through_testctx(fixture_policy: Policy, scenario: Scenario) -> None:
    ctx = context(Engine(fixture_policy, Services()), scenario.listener)
    rc = drive_ctx(ctx, scenario)
    entry = catalogue.get(scenario.entry)
    assert rc == (Milter.TEMPFAIL if entry.temporary else Milter.REJECT)
    assert replied(ctx, scenario.entry)
