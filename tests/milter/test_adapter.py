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
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from Milter import testctx

from policy_milter import catalogue
from policy_milter.decision import Action, Decision
from policy_milter.engine import Engine
from policy_milter.milter import PolicyMilter
from policy_milter.rules.policy import Policy, load
from policy_milter.services import Services
from policy_milter.services.state.memory import MemoryStore
from policy_milter.stages import Stage
from tests.support import golden
from tests.support.golden import SESSIONS, Answer

MESSAGE = b"From: a@sender.example\nTo: postmaster@example.com\nSubject: hi\n\nHello.\n"


class PymilterCtx(testctx.TestCtx):
    """TestCtx handing out macros as pymilter 1.0.5's C module does: decoded as strict
    UTF-8, so that bytes which are not raise UnicodeDecodeError (set them as bytes)."""

    def getsymval(self, name: str) -> str | None:
        value = super().getsymval(name)
        return value.decode() if isinstance(value, bytes) else value


def context(engine: Engine, listener: str | bytes = "smtpd") -> testctx.TestCtx:
    Milter.factory = lambda: PolicyMilter(engine)
    # TestCtx offers a class-level list that negotiation writes into: offer afresh each time.
    testctx.TestCtx.default_opts = [Milter.CURR_ACTS, 0x1FFFFF, 0, 0]
    ctx = PymilterCtx()
    ctx._setsymval("{daemon_name}", listener)
    return ctx


def replied(ctx: testctx.TestCtx, name: str) -> bool:
    e = catalogue.get(name)
    return ctx._reply == (e.code, e.enhanced, e.text)


def greeted(engine: Engine) -> testctx.TestCtx:
    """A context through connect and HELO, from a client the rules do not trust."""
    c = context(engine)
    assert c._connect("mx.sender.example", "mx.sender.example", "192.0.2.10") == Milter.CONTINUE
    return c


@pytest.fixture
def ctx(fixture_policy: Policy) -> testctx.TestCtx:
    return greeted(Engine(fixture_policy, Services()))


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
    class Broken(MemoryStore):
        def total(self, key: str, window: int) -> int:
            raise RuntimeError("boom")

    c = context(Engine(fixture_policy, Services(state=Broken())))
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


# --- bytes that are not UTF-8 ------------------------------------------------------
# What libmilter hands pymilter, which passes MAIL and RCPT arguments and header values on
# as bytes, and raises for macro values that are not UTF-8 (PymilterCtx).  HELO names,
# unknown commands and header names it decodes in C before the adapter sees them (see
# test_bytes_wire.py); here they come as bytes, as a pymilter that passed them on would.

HELO_ROWS = {"helo_requires_domain", "unbalanced", "syntax_error"}
ENVELOPE_ROWS = {"syntax_error", "unbalanced"}


def entry_of(ctx: testctx.TestCtx, rc: int) -> str:
    """The catalogue entry a callback answered with; '' when it let the command pass."""
    if rc in (Milter.CONTINUE, Milter.DISCARD):
        return ""
    assert rc in (Milter.REJECT, Milter.TEMPFAIL) and ctx._reply is not None, (rc, ctx._reply)
    return next(name for name, e in catalogue.ENTRIES.items()
                if ctx._reply == (e.code, e.enhanced, e.text))


def not_utf8(raw: bytes) -> bool:
    try:
        raw.decode()
    except UnicodeDecodeError:
        return True
    return False


@pytest.mark.parametrize("helo, name", [
    (b"mx\xff.example", "helo_requires_domain"),
    (b"\xc3.example", "helo_requires_domain"),  # a cut UTF-8 sequence
    (b"[mx\xfe", "unbalanced"),
])
def test_8bit_helo_gets_its_catalogue_row(fixture_policy: Policy, helo: bytes, name: str,
                                          caplog: pytest.LogCaptureFixture) -> None:
    ctx = context(Engine(fixture_policy, Services()))
    with caplog.at_level(logging.INFO):
        assert ctx._connect("mx.sender.example", helo, "192.0.2.10") == Milter.REJECT
    assert replied(ctx, name)
    assert any("stage=helo" in r.getMessage() and "\\x" in r.getMessage()
               for r in caplog.records)


def test_8bit_unknown_command_is_unrecognized(ctx: testctx.TestCtx) -> None:
    assert ctx.getpriv().unknown(b"XSEND\xff\xfe") == Milter.REJECT
    assert replied(ctx, "command_unrecognized")
    assert ctx.getpriv().unknown(b"TURN \xff") == Milter.REJECT
    assert replied(ctx, "operation_not_supported")


def test_8bit_envelope_is_a_syntax_error(ctx: testctx.TestCtx) -> None:
    """As libmilter calls it: Milter.Base.envfrom_bytes with the raw arguments."""
    priv = ctx.getpriv()
    ctx._stage = Milter.M_ENVFROM
    assert priv.envfrom_bytes(b"<a\xff@sender.example>") == Milter.REJECT
    assert replied(ctx, "syntax_error")
    assert priv.envfrom_bytes(b"<a@sender.example>", b"SIZE=1\xff") == Milter.REJECT
    assert replied(ctx, "syntax_error")
    assert priv.envfrom_bytes(b"<a@sender.example>") == Milter.CONTINUE
    ctx._stage = Milter.M_ENVRCPT
    assert priv.envrcpt_bytes(b"<postmaster@example.com\xfe>") == Milter.REJECT
    assert replied(ctx, "syntax_error")
    assert priv.envrcpt_bytes(b"<postmaster@example.com>", b"NOTIFY=\xff") == Milter.REJECT
    assert replied(ctx, "syntax_error")


def test_8bit_macros_reach_the_engine(fixture_policy: Policy,
                                      caplog: pytest.LogCaptureFixture) -> None:
    ctx = context(Engine(fixture_policy, Services()), listener=b"smtpd\xff")
    ctx._setsymval("i", b"Q\xfe1")
    with caplog.at_level(logging.INFO):
        assert ctx._connect("mx.sender.example", "mx.sender.example", "192.0.2.10") == \
            Milter.CONTINUE
        ctx._setsymval("{auth_authen}", b"dora\xff")
        assert ctx._envfrom("<a@sender.example>") == Milter.CONTINUE
        assert ctx._envrcpt("<nobody@example.com>") == Milter.REJECT
    assert replied(ctx, "unknown_user_local")
    lines = [r.getMessage() for r in caplog.records]
    assert not any("internal_error" in line for line in lines)
    assert any('qid="Q\\xfe1"' in line and "stage=rcpt" in line for line in lines)


def test_8bit_header_name_and_value_reach_the_engine(ctx: testctx.TestCtx) -> None:
    assert ctx._envfrom("<a@sender.example>") == Milter.CONTINUE
    assert ctx._envrcpt("<postmaster@example.com>") == Milter.CONTINUE
    assert ctx._data() == Milter.CONTINUE
    priv = ctx.getpriv()
    for name, value in ((b"X-\xff\xfe", b"v"), (b"Subject", b"caf\xe9 \xff")):
        assert priv.header_bytes(name, value) in (Milter.CONTINUE, Milter.NOREPLY)
    assert ctx._eoh() == Milter.CONTINUE and priv.body(b"Hello.\r\n") == Milter.CONTINUE
    assert entry_of(ctx, ctx._eom()) == ""


RAW = st.one_of(
    st.binary(max_size=40),
    st.lists(st.sampled_from([b"<", b">", b"@", b"[", b"]", b".", b"a", b"Z", b"9", b" ", b"=",
                              b"\xff", b"\x80", b"\xc3", b"\xc3\xa9", b"\xed\xb2\x80"]),
             max_size=20).map(b"".join),
).map(lambda raw: raw.replace(b"\0", b""))  # protocol strings end at NUL
BYTES = settings(max_examples=150, deadline=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture])


@BYTES
@given(helo=RAW, command=RAW)
def test_any_helo_or_unknown_command_is_answered_from_the_catalogue(
        fixture_policy: Policy, helo: bytes, command: bytes) -> None:
    ctx = context(Engine(fixture_policy, Services()))
    name = entry_of(ctx, ctx._connect("mx.sender.example", helo, "192.0.2.10"))
    assert name in HELO_ROWS or (name == "" and not not_utf8(helo)), (helo, name)
    if name == "":
        assert entry_of(ctx, ctx.getpriv().unknown(command)) in (
            "command_unrecognized", "operation_not_supported")


@BYTES
@given(sender=RAW, recipient=RAW, param=RAW, login=RAW)
def test_any_envelope_bytes_are_answered_from_the_catalogue(
        fixture_policy: Policy, sender: bytes, recipient: bytes, param: bytes,
        login: bytes) -> None:
    ctx = greeted(Engine(fixture_policy, Services()))
    ctx._setsymval("{auth_authen}", login)
    priv = ctx.getpriv()
    ctx._stage = Milter.M_ENVFROM
    for args in ((b"<" + sender + b">",), (b"<a@sender.example>", param)):
        name = entry_of(ctx, priv.envfrom_bytes(*args))
        assert name != catalogue.DEFAULT_TEMPFAIL.name
        assert name in ENVELOPE_ROWS or not any(map(not_utf8, args)), (args, name)
    ctx._stage = Milter.M_ENVRCPT
    name = entry_of(ctx, priv.envrcpt_bytes(b"<" + recipient + b">"))
    assert name != catalogue.DEFAULT_TEMPFAIL.name


@BYTES
@given(name=RAW.filter(bool), value=RAW)
def test_any_header_bytes_reach_the_engine(fixture_policy: Policy, name: bytes,
                                           value: bytes) -> None:
    ctx = greeted(Engine(fixture_policy, Services()))
    assert ctx._envfrom("<a@sender.example>") == Milter.CONTINUE
    assert ctx._envrcpt("<postmaster@example.com>") == Milter.CONTINUE
    assert ctx._data() == Milter.CONTINUE
    priv = ctx.getpriv()
    assert priv.header_bytes(name, value) in (Milter.CONTINUE, Milter.NOREPLY)
    assert ctx._eoh() == Milter.CONTINUE and priv.body(b"Hello.\r\n") == Milter.CONTINUE
    assert entry_of(ctx, ctx._eom()) != catalogue.DEFAULT_TEMPFAIL.name


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
