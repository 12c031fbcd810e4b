"""The policy engine: walks each stage's checks, first decisive answer wins.

Pure: it never imports pymilter.  The adapter calls one Session method per milter
callback and turns the returned Decision into a reply.  The engine alone decides what
a check's trouble means: DependencyError (something it depends on failed) gets the
failure setting the check declares, NotChecked (the message is too big to check whole)
gets ``unscannable_action``, and any other exception becomes a logged tempfail, never a
crash and never a silent pass.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any, TypeVar

from . import catalogue
from .addresses import client_ip
from .checks import access, protocol
from .checks.base import Check, Context, NotChecked
from .checks.order import ACTIONS, ORDER
from .decision import CONTINUE, Action, Decision
from .envelope import Directory, Resolved
from .log import DecisionLog
from .message import MessageBuffer
from .model import Connection, Transaction
from .patterns import contains
from .rules.policy import Policy
from .services import DependencyError, Services
from .services.factory import Live, build
from .services.sql import TableError
from .stages import Stage
from .transcript import Transcript

F = TypeVar("F", bound=Callable[..., Any])
UNCHECKED_HEADER = "X-Policy-Unchecked"  # what could not be checked, and why
_MAX_UNCHECKED = 900  # characters of that header's value
TABLES = "tables"  # the check the log names when a table from SQL cannot be read


@dataclass(frozen=True)
class Needs:
    """What the adapter must negotiate with the MTA for this policy."""

    callbacks: frozenset[Stage]
    noreply: frozenset[Stage]
    actions: frozenset[str]  # 'addheader', 'chgheader', 'delrcpt', 'quarantine'


Hook = Callable[[Context], None]
# A check's answer as it runs: (stage, check, decision or None when a white entry skipped
# it, seconds taken, the recipient at RCPT).
Trace = Callable[[Stage, str, Decision | None, float, Resolved | None], None]


@dataclass(frozen=True)
class Plan:
    """A policy, the services it uses, and the checks it switches on, per stage, in the
    order of ``checks.order.ORDER``."""

    policy: Policy
    live: Live
    directory: Directory
    checks: dict[Stage, tuple[Check, ...]]
    needs: Needs
    keeps_message: bool  # a content check reads the message: buffer it
    prefetch: dict[Stage, tuple[Hook, ...]]
    after_accept: tuple[Hook, ...]

    @classmethod
    def build(cls, policy: Policy, live: Live, leave_out: frozenset[str] = frozenset()) -> Plan:
        """``leave_out``: checks not to run at all (``policy-milter test --dns off``)."""
        settings = policy.settings
        checks: dict[Stage, list[Check]] = {stage: [] for stage in Stage}
        prefetch: dict[Stage, list[Hook]] = {stage: [] for stage in Stage}
        needs: set[str] = set()
        after: list[Hook] = []
        for spec in ORDER:
            if spec.name in leave_out:
                continue
            if spec.run is None:
                index = policy.rules(spec.name, spec.stage)
                if not index:
                    continue
                checks[spec.stage].append(Check(spec.name, spec.stage, access.walk(index),
                                                evidence=True))
                needs |= access.needs(index, spec.stage)
                continue
            if not spec.enabled(policy):
                continue
            checks[spec.stage].append(Check(spec.name, spec.stage, spec.run, spec.failure))
            needs |= spec.needs
            if spec.after_accept is not None:
                after.append(spec.after_accept)
            for stage, start in spec.prefetch:
                prefetch[stage].append(start)
            marks = (spec.depends and settings.failure(spec.failure) == "accept") or (
                spec.unscannable and settings.unscannable_action is None)
            if marks:
                needs.add("addheader")  # the unchecked header
        keeps_message = bool(needs & {"headers", "message"})
        callbacks = {Stage.CONNECT, Stage.HELO, Stage.MAIL, Stage.RCPT, Stage.DATA,
                     Stage.UNKNOWN, Stage.EOM}
        if needs & {"size", "headers", "message"}:
            callbacks.add(Stage.HEADER)
        if needs & {"size", "message"}:
            callbacks.add(Stage.BODY)
        noreply = {Stage.CONNECT, Stage.HEADER, Stage.BODY}
        if not checks[Stage.HELO]:
            noreply.add(Stage.HELO)
        return cls(policy, live, Directory(policy.tables, settings.recipient_delimiter,
                                           live.tables),
                   {s: tuple(c) for s, c in checks.items()},
                   Needs(frozenset(callbacks), frozenset(noreply), frozenset(needs & ACTIONS)),
                   keeps_message, {s: tuple(p) for s, p in prefetch.items()}, tuple(after))


def _tagged_subject(txn: Transaction, prefix: str) -> tuple[str, int, str]:
    subject = txn.message.first("Subject") if txn.message else None
    return "Subject", 1, f"{prefix} {subject or ''}".strip()


def _unchecked_value(notes: list[str]) -> str:
    text = "".join(c if " " <= c <= "~" else "?" for c in "; ".join(notes))
    return text if len(text) <= _MAX_UNCHECKED else text[: _MAX_UNCHECKED - 3] + "..."


@dataclass
class Outcome:
    """End of message: the decision, and what to change in the message when it passes."""

    decision: Decision
    add_headers: list[tuple[str, str]] = field(default_factory=list)
    change_headers: list[tuple[str, int, str]] = field(default_factory=list)  # name, index, value
    delete_recipients: list[str] = field(default_factory=list)
    quarantine: str = ""


class Engine:
    """Holds the current plan; a reload swaps it whole, sessions keep the one they began
    with.  The services a replaced plan alone used are closed when its last session ends."""

    def __init__(self, policy: Policy, services: Services | None = None,
                 log: DecisionLog | None = None, leave_out: frozenset[str] = frozenset()) -> None:
        self.services = services or Services()
        self.log = log or DecisionLog()
        self.leave_out = leave_out
        self.plan = Plan.build(policy, build(policy, self.services), leave_out)
        self._users: dict[int, int] = {id(self.plan): 0}  # open sessions per plan
        self._retired: list[Plan] = []
        self._lock = threading.Lock()
        self.stopping = False  # set on SIGTERM: new connections are told to come back
        self._ids = itertools.count(1)

    def reload(self, policy: Policy) -> None:
        plan = Plan.build(policy, build(policy, self.services, self.plan.live), self.leave_out)
        with self._lock:
            self._retired.append(self.plan)
            self.plan = plan
            self._users[id(plan)] = 0
            self._close_unused()

    def session(self) -> Session:
        with self._lock:
            plan = self.plan
            self._users[id(plan)] += 1
        session_id = f"{os.getpid():x}.{next(self._ids):x}"
        return Session(plan, self.services, self.log, lambda: self._closed(plan), self.stopping,
                       session_id)

    def _closed(self, plan: Plan) -> None:
        with self._lock:
            self._users[id(plan)] -= 1
            self._close_unused()

    def _close_unused(self) -> None:
        """Close the retired plans no session uses, sparing what a live plan shares."""
        idle = [p for p in self._retired if not self._users[id(p)]]
        if not idle:
            return
        self._retired = [p for p in self._retired if self._users[id(p)]]
        in_use = [item for p in (self.plan, *self._retired) for item in p.live.owned]
        for plan in idle:
            del self._users[id(plan)]
            plan.live.close(in_use)

    def close(self) -> None:
        """Close every service (the milter is stopping)."""
        with self._lock:
            for plan in (*self._retired, self.plan):
                plan.live.close()

    @property
    def open_sessions(self) -> int:
        """Connections not yet closed: a stopping milter waits for them to finish."""
        return sum(self._users.values())


def _guarded(method: F) -> F:
    """Any unexpected error in a stage is logged and answered with a tempfail."""
    stage = Stage(method.__name__)

    @functools.wraps(method)
    def wrapper(self: Session, *args: Any) -> Any:
        started = time.perf_counter()
        txn = self.txn  # the transaction end of message closes
        try:
            result = method(self, *args)
        except Exception as err:  # the last line of defence: never crash, never pass
            self.log.internal_error(stage, self.conn, self.txn, err)
            failed = Decision(Action.TEMPFAIL, catalogue.DEFAULT_TEMPFAIL, rule="builtin:internal",
                              check="internal", detail=f"{type(err).__name__}: {err}")
            self.log.decision(stage, self.conn, self.txn, None, failed, started)
            result = Outcome(failed) if stage is Stage.EOM else failed
        self.transcript.note(stage, args, result, self.txn if stage is Stage.MAIL else txn)
        self.log.metrics.stage(stage, time.perf_counter() - started)
        return result
    return wrapper  # type: ignore[return-value]


class Session:
    """One SMTP connection as the engine sees it."""

    def __init__(self, plan: Plan, services: Services, log: DecisionLog,
                 on_close: Callable[[], None] = lambda: None, stopping: bool = False,
                 session_id: str = "") -> None:
        self.plan = plan
        self._on_close = on_close
        self.stopping = stopping
        self.policy = plan.policy
        self.services = services
        self.log = log
        self.conn = Connection(rules_hash=plan.policy.digest, session_id=session_id)
        self.txn: Transaction | None = None
        self.transcript = Transcript(log, self.conn)
        # policy-milter test follows each check with it; --log-level debug logs each
        self.trace: Trace | None = self._debug if log.logger.isEnabledFor(
            logging.DEBUG) else None

    def _debug(self, stage: Stage, check: str, decision: Decision | None, seconds: float,
               rcpt: Resolved | None) -> None:
        self.log.checked(stage, self.conn, self.txn, rcpt, check, decision, seconds)

    def _context(self, bypass: frozenset[str] = frozenset(), **state: Any) -> Context:
        return Context(self.policy, self.services, self.plan.live, self.log, self.conn,
                       self.txn, bypass=bypass, **state)

    def _prefetch(self, stage: Stage, ctx: Context | None = None) -> None:
        """Start the slow lookups the later stages will need; a failure here only logs.
        ``ctx``: the stage's own evaluation, when its checks follow (the lookups change
        nothing in it but the connection's table of lookups)."""
        starts = self.plan.prefetch[stage]
        if starts and ctx is None:
            ctx = self._context()
        for start in starts:
            try:
                start(ctx)  # type: ignore[arg-type]
            except Exception as err:  # the check that needs the answer will decide
                self.log.internal_error(stage, self.conn, self.txn, err)

    def _run(self, stage: Stage, ctx: Context, started: float) -> Decision:
        """Walk the stage's checks; return the first decision that stops the client."""
        trace = self.trace
        for check in self.plan.checks[stage]:
            if check.name in ctx.bypass:
                if trace is not None:
                    trace(stage, check.name, None, 0.0, ctx.rcpt)
                continue
            if trace is None:
                decision = self._ask(check, ctx)
            else:
                asked = time.perf_counter()
                decision = self._ask(check, ctx)
                trace(stage, check.name, decision or CONTINUE, time.perf_counter() - asked,
                      ctx.rcpt)
            if decision is None or decision.action is Action.CONTINUE:
                continue
            monitored = decision.stops and (decision.monitor or self.policy.settings.monitor)
            if monitored:
                decision = dataclasses.replace(decision, monitor=True)
            self.log.decision(stage, self.conn, self.txn, ctx.rcpt, decision, started)
            if monitored or (check.evidence and decision.action in (Action.QUARANTINE,
                                                                    Action.ADD_HEADER)):
                ctx.mark(f"{check.name} {decision.rule}")
            if monitored:
                continue
            if decision.action is Action.PERMIT:
                ctx.bypass |= decision.skip
            elif decision.action in (Action.QUARANTINE, Action.ADD_HEADER) and self.txn:
                self.txn.deferred.append(decision)
            elif decision.action is Action.DISCARD and stage is Stage.RCPT and self.txn:
                return decision
            elif decision.action is Action.DISCARD and decision.recipients and self.txn:
                self.txn.discard(decision.recipients, decision)
            elif decision.stops:
                return decision
        return CONTINUE

    def _ask(self, check: Check, ctx: Context) -> Decision | None:
        """The check's answer; a failed dependency or a message too big to check gets
        the action its setting names, decided here and nowhere else."""
        try:
            return check.run(ctx)
        except DependencyError as err:
            return self._failed(check, err)
        except NotChecked as err:
            return self._not_checked(check, str(err))

    def _failed(self, check: Check, err: DependencyError) -> Decision | None:
        settings, where = self.policy.settings, self.policy.where
        action = settings.failure(check.failure)
        tempfail = self._dependency(check.name, err, action,
                                    where[settings.failure_setting(check.failure)])
        if action == "accept":
            self._mark(f"{check.name}: {err.service} failed")
            return None
        return tempfail

    def _unreadable(self, err: TableError) -> Decision:
        """A table that cannot be read leaves nothing to judge the address by: accepting
        could relay or take mail for no one, refusing would bounce real mail, so it is a
        tempfail whatever failure_action says (as Postfix defers on a lookup error)."""
        return self._dependency(TABLES, err, "tempfail", err.where)

    def _dependency(self, check: str, err: DependencyError, action: str, rule: str
                    ) -> Decision:
        """Log a failed dependency with what ``action`` (set at ``rule``) makes of it;
        the tempfail it answers unless that is accept."""
        self.log.dependency_failure(check, err.service, self.conn, self.txn, str(err),
                                    action, rule)
        return Decision(Action.TEMPFAIL, catalogue.get(err.entry), rule=rule, check=check,
                        detail=f"{err.service} failed: {err}")

    def _not_checked(self, check: Check, cause: str) -> Decision | None:
        reject = self.policy.settings.unscannable_action
        rule = self.policy.where["unscannable_action"]
        if reject is None:
            self.log.not_checked(check.name, self.conn, self.txn, cause, "accept", rule)
            self._mark(f"{check.name}: {cause}")
            return None
        return Decision(Action.REJECT, reject, rule=rule, check=check.name,
                        detail=f"not checked: {cause}")

    def _mark(self, note: str) -> None:
        """Remember what was not checked; an accepted message says so in a header."""
        if self.txn is not None:
            self.txn.unchecked.append(note)

    def _stopped(self, stage: Stage, decision: Decision, started: float) -> Decision:
        self.log.decision(stage, self.conn, self.txn, None, decision, started)
        return decision

    @_guarded
    def connect(self, address: str | None, name: str, listener: str,
                mta_name: str = "") -> Decision:
        self.conn.mta_name = mta_name
        self.conn.client_addr = client_ip(address)
        self.conn.client = str(self.conn.client_addr or "")
        self.conn.relay_client = contains(self.policy.settings.relay_networks,
                                          self.conn.client_addr)
        self.conn.client_name = "" if name.startswith("[") or name.lower() == "unknown" else name
        self.conn.listener = listener
        if self.stopping:
            return self._stopped(Stage.CONNECT, Decision(
                Action.TEMPFAIL, catalogue.get("shutdown_tempfail"), rule="builtin:stopping",
                check="protocol", detail="the milter is stopping"), time.perf_counter())
        self._prefetch(Stage.CONNECT)
        return CONTINUE

    @_guarded
    def helo(self, name: str, tls: bool) -> Decision:
        started = time.perf_counter()
        if tls and not self.conn.tls:
            self.conn.helo_count = 0  # STARTTLS starts the session over (RFC 3207)
        self.conn.tls = tls
        self.conn.helo_count += 1
        self.conn.helo = name
        ctx = self._context()
        self._prefetch(Stage.HELO, ctx)
        return self._run(Stage.HELO, ctx, started)

    @_guarded
    def mail(self, arg: str, params: Sequence[str], auth_login: str, queue_id: str) -> Decision:
        started = time.perf_counter()
        self.transcript.end(self.txn)
        self._end_transaction()
        self.conn.auth_login = auth_login
        parsed = protocol.parse_command(arg, params, mail=True)
        if isinstance(parsed, Decision):
            return self._stopped(Stage.MAIL, parsed, started)
        address, parsed_params, declared = parsed
        directory = self.plan.directory
        try:
            sender = directory.resolve(arg, address, parsed_params, recipient=False)
            account, account_domain = directory.sending(auth_login, sender)
        except TableError as err:
            return self._stopped(Stage.MAIL, self._unreadable(err), started)
        self.txn = Transaction(sender, declared, queue_id, account, account_domain)
        ctx = self._context()
        self._prefetch(Stage.MAIL, ctx)
        decision = self._run(Stage.MAIL, ctx, started)
        if decision.stops:
            self.txn = None
        else:
            self.txn.bypass = ctx.bypass  # a white entry at MAIL holds for every recipient
        return decision

    @_guarded
    def rcpt(self, arg: str, params: Sequence[str], queue_id: str) -> Decision:
        started = time.perf_counter()
        txn = self.txn
        if txn is None:
            return self._stopped(Stage.RCPT, protocol.reject(
                "bad_sequence", protocol.CHECK, "builtin:sequence", "RCPT before MAIL"), started)
        txn.queue_id = queue_id or txn.queue_id
        parsed = protocol.parse_command(arg, params, mail=False)
        if isinstance(parsed, Decision):
            return self._stopped(Stage.RCPT, parsed, started)
        try:
            rcpt = self.plan.directory.resolve(arg, parsed[0], parsed[1], recipient=True)
        except TableError as err:
            return self._stopped(Stage.RCPT, self._unreadable(err), started)
        ctx = self._context(txn.bypass, rcpt=rcpt)
        decision = self._run(Stage.RCPT, ctx, started)
        if decision.action is Action.DISCARD:
            txn.discard((rcpt,), decision)
        elif decision.stops:
            return decision
        txn.accept(rcpt, ctx.bypass)
        return CONTINUE

    @_guarded
    def data(self, queue_id: str) -> Decision:
        started = time.perf_counter()
        if self.txn is not None:
            self.txn.queue_id = queue_id or self.txn.queue_id
        return self._run(Stage.DATA, self._context(), started)

    def header(self, name: str, value: bytes) -> None:
        """A header field (negotiated only when sizes are counted or content is read)."""
        txn = self.txn
        if txn is None:
            return
        txn.size += len(name) + len(value) + 4  # "Name: value\r\n"
        if self.plan.keeps_message:
            if txn.message is None:
                txn.message = MessageBuffer()
                txn.message.header("Received", self._trace(txn).encode("utf-8", "replace"))
            txn.message.header(name, value)

    def _trace(self, txn: Transaction) -> str:
        """The Received field the MTA adds only after the milter: scanners judge the relay
        path by it, and held mail keeps its origin."""
        conn = self.conn
        ident = f" id {txn.queue_id}" if txn.queue_id else ""
        return (f"from {conn.helo or 'unknown'} ({conn.client_name or 'unknown'} "
                f"[{conn.client_addr or 'unknown'}])\r\n\tby {conn.mta_name or 'localhost'} "
                f"(policy-milter) with ESMTP{ident}"
                f" for <{txn.recipients[0].key if txn.recipients else ''}>;\r\n\t"
                f"{formatdate(localtime=False)}")

    def body(self, chunk: bytes) -> None:
        txn = self.txn
        if txn is None:
            return
        txn.size += len(chunk)
        if txn.message is not None:
            txn.message.body(chunk)

    @_guarded
    def eom(self, queue_id: str) -> Outcome:
        started = time.perf_counter()
        txn = self.txn
        if txn is not None:
            txn.queue_id = queue_id or txn.queue_id
            txn.size += 2  # the empty line after the header
        ctx = self._context(txn.message_bypass() if txn else frozenset())
        try:
            decision = self._run(Stage.EOM, ctx, started)
            if decision.stops or txn is None:
                return Outcome(decision)
            if txn.discard_reason and txn.every_recipient_discarded():
                reason = txn.discard_reason
                dropped = Decision(Action.DISCARD, reason.entry, rule=reason.rule,
                                   check=reason.check, detail="every recipient discarded")
                self.log.decision(Stage.EOM, self.conn, txn, None, dropped, started)
                return Outcome(dropped)
            return self._accept(ctx, txn, started)
        finally:
            self._end_transaction()

    def _accept(self, ctx: Context, txn: Transaction, started: float) -> Outcome:
        for hook in self.plan.after_accept:
            hook(ctx)
        outcome = Outcome(CONTINUE)
        for decision in txn.deferred:
            if decision.action is Action.ADD_HEADER:
                outcome.add_headers.extend(decision.headers)
                if decision.subject_prefix:
                    outcome.change_headers.append(_tagged_subject(txn, decision.subject_prefix))
            elif decision.action is Action.QUARANTINE and not outcome.quarantine:
                outcome.quarantine = decision.reason
        if txn.unchecked:
            outcome.add_headers.append((UNCHECKED_HEADER, _unchecked_value(txn.unchecked)))
        outcome.delete_recipients = list(dict.fromkeys(r.given for r in txn.discarded))
        self.log.accepted(self.conn, txn, outcome.quarantine, started)
        return outcome

    @_guarded
    def unknown(self, command: str) -> Decision:
        started = time.perf_counter()
        return self._run(Stage.UNKNOWN, self._context(command=command), started)

    def _end_transaction(self) -> None:
        if self.txn is not None:
            self.txn.close()
        self.txn = None

    def abort(self) -> None:
        self.transcript.end(self.txn)
        self._end_transaction()

    def close(self) -> None:
        """The connection is gone; only the first call counts."""
        self.transcript.close(self.txn)
        self._end_transaction()
        on_close, self._on_close = self._on_close, lambda: None
        on_close()
