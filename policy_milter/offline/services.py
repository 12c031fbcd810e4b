"""The services of a session played offline: the rules decide as they would in the
milter, and nothing leaves a trace anywhere.

Rate counters start at zero in memory; the challenge store is read (allow lists) but
never written, and a challenge is noted rather than sent; DNS is off, canned answers
from a file, or live through the resolver policy.conf names; the scanners are the
configured clamd and spamd, or left out.  What is left out is said in the output.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from ..checks.order import ORDER
from ..rules.policy import Policy
from ..services import DependencyError, Services
from ..services.challenges import DATABASE, ChallengeStore, Held, SqliteChallengeStore
from ..services.dns import DnsResolver, Resolver
from ..services.dnsstub import DnsOff, StubResolver
from ..services.spf import Spf
from ..services.state.memory import MemoryStore

SCANNERS = frozenset(spec.name for spec in ORDER if spec.depends in ("clamd", "spamd"))
DNS_CHECKS = frozenset(spec.name for spec in ORDER if spec.depends == "dns")


class DryRunStore:
    """The challenge store as a test sees it: the real allow lists when the store exists,
    and a hold that spools nothing."""

    def __init__(self, real: ChallengeStore | None) -> None:
        self.real = real
        self.held: list[tuple[str, str]] = []  # (recipient, sender) that would be held

    def allowed(self, recipient: str, sender: str) -> bool:
        return self.real is not None and self.real.allowed(recipient, sender)

    def known(self, sender: str) -> bool:
        return self.real is not None and self.real.known(sender)

    def hold(self, recipient: str, sender: str, message: BinaryIO,
             now: float | None = None) -> tuple[Held, bool]:
        self.held.append((recipient, sender))
        return Held(secrets.token_hex(16), secrets.token_hex(16), sender, recipient,
                    now or time.time(), 0, Path("/dev/null")), True

    def allow(self, recipient: str, sender: str) -> None:
        """Nothing is written."""

    def challenged(self, token: str) -> None:
        """Nothing is written."""

    def answer(self, token: str, sender: str) -> list[Held]:
        return []

    def release(self, held_id: str) -> Held | None:
        return None

    def drop(self, held_id: str) -> bool:
        return False

    def done(self, held: Held) -> None:
        """Nothing is written."""

    def pending(self) -> list[Held]:
        return []

    def released(self, min_age: float = 0.0, now: float | None = None) -> list[Held]:
        return []

    def expire(self, max_age: float, now: float | None = None) -> list[Held]:
        return []

    def open_message(self, held: Held) -> BinaryIO:
        raise FileNotFoundError("a test holds no message")


@dataclass
class NotedMailer:
    """Keeps what would be sent (a challenge) instead of sending it."""

    sent: list[tuple[str, list[str]]] = field(default_factory=list)

    def send(self, sender: str, recipients: list[str], message: bytes | BinaryIO) -> None:
        self.sent.append((sender, recipients))


class NoSpf:
    """SPF asks DNS; without live DNS it is not evaluated (the challenge is withheld)."""

    def check(self, client: str, sender: str, helo: str) -> str:
        return "none (SPF is evaluated only with --dns live)"


@dataclass
class Offline:
    """The services, what is left out and why, and what would have happened outside."""

    services: Services
    leave_out: frozenset[str]
    notes: list[str]
    store: DryRunStore
    mailer: NotedMailer
    owned: list[DnsResolver]

    def close(self) -> None:
        for resolver in self.owned:
            resolver.close()
        if isinstance(self.store.real, SqliteChallengeStore):
            self.store.real.close()


def offline(policy: Policy, dns: str, scanners: bool) -> Offline:
    """``dns``: ``off``, ``live`` or ``stub=FILE`` (StubError on a bad file)."""
    notes: list[str] = []
    leave_out: set[str] = set()
    resolver: Resolver
    owned: list[DnsResolver] = []
    spf = NoSpf()
    if dns == "off":
        resolver = DnsOff()
        leave_out |= _enabled(policy, DNS_CHECKS, notes, "--dns off")
    elif dns == "live":
        resolver = DnsResolver(policy.dns_config)
        owned.append(resolver)
        servers = ", ".join(policy.settings.dns_nameservers) or "the system resolver"
        notes.append(f"DNS: live, through {servers}")
        if policy.settings.challenge_store:
            spf = Spf(policy.dns_config, policy.settings.dns_budget)  # type: ignore[assignment]
    else:
        resolver = StubResolver.load(Path(dns.removeprefix("stub=")))
        notes.append(f"DNS: canned answers from {dns.removeprefix('stub=')}")
    if not scanners:
        leave_out |= _enabled(policy, SCANNERS, notes, "--scanners off")
    leave_out |= _enabled(policy, frozenset({"greylist"}), notes,
                          "it depends on the retries the state store has seen")
    store = DryRunStore(_real_store(policy, notes))
    mailer = NotedMailer()
    notes.append("rate counters start at zero; nothing is held, sent or counted")
    services = Services(dns=resolver, challenges=store, mailer=mailer, spf=spf,
                        run_later=_now, state=MemoryStore())
    return Offline(services, frozenset(leave_out), notes, store, mailer, owned)


def _enabled(policy: Policy, checks: frozenset[str], notes: list[str],
             why: str) -> frozenset[str]:
    """Those of ``checks`` the policy switches on, noted as not run."""
    on = frozenset(spec.name for spec in ORDER if spec.name in checks and spec.enabled(policy))
    if on:
        notes.append(f"not run: {', '.join(sorted(on))} ({why})")
    return on


def _now(work: Callable[[], object]) -> None:
    """What the milter does in the background (sending a challenge) is done at once."""
    work()


def _real_store(policy: Policy, notes: list[str]) -> ChallengeStore | None:
    """The milter's store, for its allow lists, only if it exists: a test creates none."""
    directory = policy.settings.challenge_store
    if not directory:
        return None
    if not (Path(directory) / DATABASE).is_file():
        notes.append(f"challenge store {directory} does not exist: no allow lists")
        return None
    try:
        return SqliteChallengeStore(Path(directory))
    except DependencyError as err:
        notes.append(f"challenge store unreadable ({err}): no allow lists")
        return None
