"""The pymilter adapter under Milter.testctx: callbacks in, replies and actions out."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Sequence
from io import BytesIO
from pathlib import Path

import Milter
import Milter.test  # noqa: F401  (makes NOREPLY callbacks continue in the test context)
import pytest
from Milter import testctx

from policy_milter import catalogue
from policy_milter.decision import Action, Decision
from policy_milter.engine import Engine
from policy_milter.milter import PolicyMilter
from policy_milter.rules.policy import Policy, load
from policy_milter.services import Services
from policy_milter.services.state import MemoryRateStore
from policy_milter.stages import Stage
from tests.support import golden
from tests.support.golden import SESSIONS, Answer

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


@pytest.mark.parametrize("odd", [
    Decision(Action.PERMIT, skip=frozenset({"dnsbl"})),
    Decision(Action.ADD_HEADER, headers=(("X-A", "b"),)),
    Decision(Action.QUARANTINE, reason="held"),
])
def test_an_answer_with_no_reply_is_a_logged_tempfail(
        ctx: testctx.TestCtx, odd: Decision, caplog: pytest.LogCaptureFixture) -> None:
    """Whatever the engine might hand back that has no SMTP reply, the adapter answers
    the catalogue's generic tempfail: never a silent continue."""
    session = ctx.getpriv().session
    session.rcpt = lambda *args: odd  # type: ignore[method-assign]
    assert ctx._envfrom("<a@sender.example>") == Milter.CONTINUE
    with caplog.at_level(logging.ERROR):
        assert ctx._envrcpt("<postmaster@example.com>") == Milter.TEMPFAIL
    assert replied(ctx, catalogue.DEFAULT_TEMPFAIL.name)
    assert any("event=internal_error stage=rcpt" in r.getMessage()
               and odd.action.value in r.getMessage() for r in caplog.records)


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


ACTIONS = {Milter.CONTINUE: golden.OK, Milter.DISCARD: "discard", Milter.REJECT: "reject",
           Milter.TEMPFAIL: "tempfail"}


def answer(ctx: testctx.TestCtx, rc: int, dropped: Sequence[str] = ()) -> Answer:
    """A callback's return code and the reply it set, as the table states answers."""
    code, enhanced, text = ctx._reply or ("", "", "")
    return Answer(ACTIONS.get(rc, f"return code {rc}"), code, enhanced, text, tuple(dropped))


def play(ctx: testctx.TestCtx, session: golden.Session, step: golden.Step) -> Answer:
    """One step through the adapter, as libmilter would call it."""
    ctx._reply = None
    match step.stage:
        case Stage.HELO:
            return answer(ctx, ctx._helo(step.arg))
        case Stage.MAIL:
            return answer(ctx, ctx._envfrom(step.arg, *step.params))
        case Stage.RCPT:
            return answer(ctx, ctx._envrcpt(step.arg))
        case Stage.DATA:
            return answer(ctx, ctx._data())
        case Stage.EOM:
            message = session.message(step)
            for name, value in message.headers:
                if (rc := ctx._header(name, value)) != Milter.CONTINUE:
                    return answer(ctx, rc)
            for rc in (ctx._eoh(), ctx._feed_body(BytesIO(message.body))):
                if rc != Milter.CONTINUE:
                    return answer(ctx, rc)
            return answer(ctx, ctx._eom(), ctx._delrcpt)
        case Stage.UNKNOWN:
            return answer(ctx, ctx.getpriv().unknown(step.arg))
    raise AssertionError(f"{step.where}: the testctx replayer cannot play {step.command!r}")


@pytest.mark.parametrize("session", SESSIONS.values(), ids=SESSIONS.keys())
def test_golden_session_through_testctx(fixture_policy: Policy, session: golden.Session) -> None:
    ctx = context(Engine(fixture_policy, Services()), session.listener)
    for name, value in (("{auth_authen}", session.login), ("i", "QID1")):
        ctx._setsymval(name, value)
    ctx._negotiate()
    family = socket.AF_INET6 if ":" in session.addr else socket.AF_INET
    assert Milter.connect_callback(ctx, session.hostname, family, session.addr) == Milter.CONTINUE
    for step in session.steps:
        session.check(step, play(ctx, session, step))
