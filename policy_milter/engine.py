"""The policy engine: walks each stage's checks, first decisive answer wins.

Pure: it never imports pymilter.  The adapter calls one Session method per milter
callback and turns the returned Decision into a reply.  A check that raises
DependencyError gets the configured failure action; any other exception becomes a
logged tempfail, never a crash and never a silent pass.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import Any, TypeVar

from . import catalogue
from .addresses import Address
from .checks import (
    access,
    auth,
    challenge,
    dnsbl,
    limits,
    protocol,
    rdns,
    recipients,
    relay,
    size,
    spam,
    virus,
)
from .checks.base import Check, Context
from .decision import CONTINUE, Action, Decision
from .log import DecisionLog
from .message import MessageBuffer
from .model import Connection, Transaction, client_ip
from .patterns import contains
from .rules.policy import Policy
from .services import DependencyError, Services
from .services.challenges import ChallengeStore, SqliteChallengeStore
from .services.clamd import Clamd, VirusScanner
from .services.dns import DnsResolver, Resolver
from .services.mailer import Mailer
from .services.spamd import Spamd, SpamScanner
from .stages import Stage

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Needs:
    """What the adapter must negotiate with the MTA for this policy."""

    callbacks: frozenset[Stage]
    noreply: frozenset[Stage]
    actions: frozenset[str]  # 'addheader', 'delrcpt', 'quarantine'


Prefetch = Callable[[Context], None]


@dataclass(frozen=True)
class Plan:
    """A policy and the checks it switches on, per stage, in evaluation order."""

    policy: Policy
    checks: dict[Stage, tuple[Check, ...]]
    counts_size: bool
    needs: Needs
    keeps_message: bool  # a content check reads the message: buffer it
    dns: Resolver | None = None
    prefetch: dict[Stage, tuple[Prefetch, ...]] = dataclasses.field(default_factory=dict)
    virus: VirusScanner | None = None
    spam: SpamScanner | None = None
    challenges: ChallengeStore | None = None
    mailer: Mailer | None = None

    @classmethod
    def build(cls, policy: Policy, services: Services, previous: Plan | None = None) -> Plan:
        """``previous`` lends its resolver (and cache) when the DNS settings did not change."""
        rule_checks = [c for rl in policy.rule_lists for c in access.checks(rl)]
        counts_size = size.limits_configured(policy)
        virus_scanner = services.virus or (
            Clamd(policy.clamd, policy.clamd_timeout, policy.clamd_max_size)
            if policy.clamd else None)
        spam_scanner = services.spam or (
            Spamd(policy.spamd, policy.spamd_timeout, policy.spamd_user)
            if policy.spamd else None)
        store, mailer = _challenge_services(policy, services, previous)
        helo_checks = policy.check_helo_syntax or policy.reject_repeated_helo
        plan: dict[Stage, list[Check]] = {
            Stage.HELO: [Check(protocol.CHECK, Stage.HELO, protocol.helo)] if helo_checks else [],
            Stage.MAIL: [
                *([Check(protocol.CHECK, Stage.MAIL, protocol.helo_required)]
                  if policy.require_helo else []),
                Check(size.CHECK, Stage.MAIL, size.declared_mail),
                Check(auth.CHECK, Stage.MAIL, auth.required),
                *(c for c in rule_checks if c.stage is Stage.MAIL),
                *([Check("local_sender", Stage.MAIL, auth.local_sender)]
                  if policy.local_sender_requires_auth else []),
                *([Check(rdns.CHECK, Stage.MAIL, rdns.check)] if policy.rdns != "off" else []),
                *([Check(dnsbl.CHECK, Stage.MAIL, dnsbl.check)] if policy.tables.zones else []),
            ],
            Stage.RCPT: [
                Check(relay.CHECK, Stage.RCPT, relay.relay),
                *([Check(challenge.CHECK, Stage.RCPT, challenge.answer_rcpt)] if store else []),
                Check(recipients.CHECK, Stage.RCPT, recipients.known),
                Check(auth.CHECK, Stage.RCPT, auth.local_only),
                Check(limits.CHECK, Stage.RCPT, limits.account_rate),
                Check(limits.CHECK, Stage.RCPT, limits.too_many),
                Check(size.CHECK, Stage.RCPT, size.declared_rcpt),
                *(c for c in rule_checks if c.stage is Stage.RCPT),
            ],
            Stage.DATA: [Check(protocol.CHECK, Stage.DATA, protocol.has_recipients)],
            Stage.EOM: [
                Check(protocol.CHECK, Stage.EOM, protocol.has_recipients),
                *([Check(size.CHECK, Stage.EOM, size.counted)] if counts_size else []),
                *(c for c in rule_checks if c.stage is Stage.EOM),
                *([Check(virus.CHECK, Stage.EOM, virus.check, failure="virus_failure_action")]
                  if virus_scanner else []),
                *([Check(spam.CHECK, Stage.EOM, spam.check)] if spam_scanner else []),
                *([Check(challenge.CHECK, Stage.EOM, challenge.check)] if store else []),
            ],
        }
        content_fields = {c.field for rl in policy.rule_lists for r in rl.eom.rules
                          for c in r.conditions}
        scans = bool(virus_scanner or spam_scanner or store)
        keeps_message = bool(content_fields) or scans
        reads_body = bool(content_fields - {"header"}) or scans
        decisions = [r.decision for rl in policy.rule_lists
                     for _, index in rl.stages() for r in index.rules]
        rcpt_discards = any(r.decision.action is Action.DISCARD
                            for rl in policy.rule_lists for r in rl.rcpt.rules)
        callbacks = {Stage.CONNECT, Stage.HELO, Stage.MAIL, Stage.RCPT, Stage.DATA,
                     Stage.UNKNOWN, Stage.EOM}
        if counts_size or keeps_message:
            callbacks.add(Stage.HEADER)
        if counts_size or reads_body:
            callbacks.add(Stage.BODY)
        needs = Needs(
            callbacks=frozenset(callbacks),
            noreply=frozenset({Stage.CONNECT, Stage.HEADER, Stage.BODY}
                              | (set() if helo_checks else {Stage.HELO})),
            actions=frozenset(
                [name for name, action in (("addheader", Action.ADD_HEADER),
                                           ("quarantine", Action.QUARANTINE))
                 if any(d.action is action for d in decisions)]
                + (["delrcpt"] if rcpt_discards or store else [])
                + (["addheader"] if spam_scanner else [])
                + (["chgheader"] if spam_scanner and policy.spam_subject_tag else [])
                + (["quarantine"] if virus_scanner and policy.virus_action == "quarantine"
                   else [])),
        )
        prefetch: dict[Stage, tuple[Prefetch, ...]] = {}
        if policy.uses_dns:
            zones = bool(policy.tables.zones)
            prefetch = {
                Stage.CONNECT: ((rdns.prefetch,) if policy.rdns != "off" else ())
                + ((dnsbl.AT_CONNECT,) if zones else ()),
                Stage.HELO: (dnsbl.AT_HELO,) if zones else (),
                Stage.MAIL: (dnsbl.AT_MAIL,) if zones else (),
            }
        return cls(policy, {s: tuple(c) for s, c in plan.items()}, counts_size, needs,
                   keeps_message, _resolver(policy, services, previous), prefetch,
                   virus_scanner, spam_scanner, store, mailer)


def _tagged_subject(txn: Transaction, prefix: str) -> tuple[str, int, str]:
    subject = txn.message.first("Subject") if txn.message else None
    return "Subject", 1, f"{prefix} {subject or ''}".strip()


def _challenge_services(policy: Policy, services: Services, previous: Plan | None
                        ) -> tuple[ChallengeStore | None, Mailer | None]:
    """The store (reused across reloads while its directory stays) and the mailer."""
    if not policy.challenge_store:
        return None, None
    mailer = services.mailer or challenge.smtp_mailer(policy)
    if services.challenges is not None:
        return services.challenges, mailer
    if previous is not None and previous.challenges is not None \
            and previous.policy.challenge_store == policy.challenge_store:
        return previous.challenges, mailer
    return SqliteChallengeStore(Path(policy.challenge_store)), mailer


def _resolver(policy: Policy, services: Services, previous: Plan | None) -> Resolver | None:
    if services.dns is not None or not policy.uses_dns:
        return services.dns
    reusable = previous is not None and isinstance(previous.dns, DnsResolver) \
        and previous.dns.config == policy.dns_config
    return previous.dns if reusable else DnsResolver(policy.dns_config)  # type: ignore[union-attr]


@dataclass
class Outcome:
    """End of message: the decision, and what to change in the message when it passes."""

    decision: Decision
    add_headers: list[tuple[str, str]] = field(default_factory=list)
    change_headers: list[tuple[str, int, str]] = field(default_factory=list)  # name, index, value
    delete_recipients: list[str] = field(default_factory=list)
    quarantine: str = ""


class Engine:
    """Holds the current plan; a reload swaps it whole, sessions keep the one they began with."""

    def __init__(self, policy: Policy, services: Services | None = None,
                 log: DecisionLog | None = None) -> None:
        self.services = services or Services()
        self.log = log or DecisionLog()
        self.plan = Plan.build(policy, self.services)
        self._open = 0
        self._lock = threading.Lock()
        self.stopping = False  # set on SIGTERM: new connections are told to come back

    def reload(self, policy: Policy) -> None:
        self.plan = Plan.build(policy, self.services, self.plan)

    def session(self) -> Session:
        with self._lock:
            self._open += 1
        return Session(self.plan, self.services, self.log, self._closed, self.stopping)

    def _closed(self) -> None:
        with self._lock:
            self._open -= 1

    @property
    def open_sessions(self) -> int:
        """Connections not yet closed: a stopping milter waits for them to finish."""
        return self._open


def _guarded(method: F) -> F:
    """Any unexpected error in a stage is logged and answered with a tempfail."""
    @functools.wraps(method)
    def wrapper(self: Session, *args: Any) -> Any:
        started = time.perf_counter()
        try:
            return method(self, *args)
        except Exception as err:  # the last line of defence: never crash, never pass
            stage = Stage(method.__name__)
            self.log.internal_error(stage, self.conn, self.txn, err)
            failed = Decision(Action.TEMPFAIL, catalogue.DEFAULT_TEMPFAIL, rule="builtin:internal",
                              check="internal", detail=f"{type(err).__name__}: {err}")
            self.log.decision(stage, self.conn, self.txn, None, failed, started)
            return Outcome(failed) if stage is Stage.EOM else failed
    return wrapper  # type: ignore[return-value]


class Session:
    """One SMTP connection as the engine sees it."""

    def __init__(self, plan: Plan, services: Services, log: DecisionLog,
                 on_close: Callable[[], None] = lambda: None, stopping: bool = False) -> None:
        self.plan = plan
        self._on_close = on_close
        self.stopping = stopping
        self.policy = plan.policy
        self.services = services
        self.log = log
        self.conn = Connection()
        self.txn: Transaction | None = None

    def _context(self, rcpt: Address | None = None) -> Context:
        bypass = self.txn.bypass if self.txn else frozenset()
        plan = self.plan
        return Context(self.policy, self.services, self.log, plan.dns, plan.virus, plan.spam,
                       plan.challenges, plan.mailer, self.conn, self.txn, rcpt, bypass)

    def _prefetch(self, stage: Stage) -> None:
        """Start the slow lookups the later stages will need; a failure here only logs."""
        starts = self.plan.prefetch.get(stage, ())
        ctx = self._context() if starts else None
        for start in starts:
            try:
                start(ctx)  # type: ignore[arg-type]
            except Exception as err:  # the check that needs the answer will decide
                self.log.internal_error(stage, self.conn, self.txn, err)

    def _run(self, stage: Stage, ctx: Context, started: float) -> Decision:
        """Walk the stage's checks; return the first decision that stops the client."""
        for check in self.plan.checks.get(stage, ()):
            if check.name in ctx.bypass:
                continue
            decision = self._ask(check, ctx)
            if decision is None or decision.action is Action.CONTINUE:
                continue
            monitored = decision.stops and (decision.monitor or self.policy.monitor)
            if monitored:
                decision = dataclasses.replace(decision, monitor=True)
            self.log.decision(stage, self.conn, self.txn, ctx.rcpt, decision, started)
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
        try:
            return check.run(ctx)
        except DependencyError as err:
            detail = f"{err.service} failed: {err}"
            if self.policy.settings[check.failure] == "accept":
                self.log.dependency_failure(check.name, self.conn, self.txn, detail, "accept")
                return None
            return Decision(Action.TEMPFAIL, catalogue.get(err.entry), rule=f"service:{err.service}",
                            check=check.name, detail=detail)

    def _stopped(self, stage: Stage, decision: Decision, started: float,
                 rcpt: Address | None = None) -> Decision:
        self.log.decision(stage, self.conn, self.txn, rcpt, decision, started)
        return decision

    @_guarded
    def connect(self, address: str | None, name: str, listener: str,
                mta_name: str = "") -> Decision:
        self.conn.mta_name = mta_name
        self.conn.client_addr = client_ip(address)
        self.conn.relay_client = contains(self.policy.relay_networks, self.conn.client_addr)
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
        self._prefetch(Stage.HELO)
        return self._run(Stage.HELO, self._context(), started)

    @_guarded
    def mail(self, arg: str, params: Sequence[str], auth_login: str, queue_id: str) -> Decision:
        started = time.perf_counter()
        self._end_transaction()
        self.conn.auth_login = auth_login
        parsed = protocol.parse_command(arg, params, mail=True)
        if isinstance(parsed, Decision):
            return self._stopped(Stage.MAIL, parsed, started)
        sender, parsed_params, declared = parsed
        self.txn = Transaction(sender, parsed_params, declared, queue_id)
        self._prefetch(Stage.MAIL)
        ctx = self._context()
        decision = self._run(Stage.MAIL, ctx, started)
        if decision.stops:
            self.txn = None
        else:
            self.txn.bypass = ctx.bypass  # a white entry at MAIL holds for every recipient
        return decision

    @_guarded
    def rcpt(self, arg: str, params: Sequence[str], queue_id: str) -> Decision:
        started = time.perf_counter()
        if self.txn is None:
            return self._stopped(Stage.RCPT, protocol.reject(
                "bad_sequence", protocol.CHECK, "builtin:sequence", "RCPT before MAIL"), started)
        self.txn.queue_id = queue_id or self.txn.queue_id
        parsed = protocol.parse_command(arg, params, mail=False)
        if isinstance(parsed, Decision):
            return self._stopped(Stage.RCPT, parsed, started)
        rcpt = parsed[0]
        decision = self._run(Stage.RCPT, self._context(rcpt), started)
        if decision.action is Action.DISCARD:
            self.txn.discard((rcpt,), decision)
        elif decision.stops:
            return decision
        self.txn.recipients.append(rcpt)
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
        ctx = self._context()
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
        limits.record_sent(ctx)
        outcome = Outcome(CONTINUE)
        for decision in txn.deferred:
            if decision.action is Action.ADD_HEADER:
                outcome.add_headers.extend(decision.headers)
                if decision.subject_prefix:
                    outcome.change_headers.append(_tagged_subject(txn, decision.subject_prefix))
            elif decision.action is Action.QUARANTINE and not outcome.quarantine:
                outcome.quarantine = decision.reason
        outcome.delete_recipients = list(dict.fromkeys(str(r) for r in txn.discarded))
        self.log.accepted(self.conn, txn, outcome.quarantine, started)
        return outcome

    @_guarded
    def unknown(self, command: str) -> Decision:
        started = time.perf_counter()
        return self._stopped(Stage.UNKNOWN, protocol.unknown(self._context(), command), started)

    def _end_transaction(self) -> None:
        if self.txn is not None:
            self.txn.close()
        self.txn = None

    def abort(self) -> None:
        self._end_transaction()

    def close(self) -> None:
        """The connection is gone; only the first call counts."""
        self._end_transaction()
        on_close, self._on_close = self._on_close, lambda: None
        on_close()
