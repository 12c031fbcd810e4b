"""What every check receives, and the small helpers checks share."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import catalogue
from ..content import ScanResult, scan
from ..decision import Action, Decision
from ..envelope import Resolved
from ..log import DecisionLog
from ..model import Connection, Transaction
from ..rules.rulelist import CONTENT_FIELDS
from ..services import Services
from ..services.challenges import ChallengeStore
from ..services.clamd import VirusScanner
from ..services.dns import Answer, DnsError
from ..services.dns import key as dns_key
from ..services.factory import Live
from ..services.mailer import Mailer
from ..services.spamd import SpamScanner
from ..services.state import StateStore
from ..stages import Stage

if TYPE_CHECKING:  # the rules loader imports the check order: no import cycle
    from ..rules.policy import Policy
    from ..rules.settings import Settings


class NotChecked(Exception):
    """A check could not look at the whole message, for a reason that retrying will not
    change (too big for the scanner, over the scanner's own limits).  Not a failure:
    the engine applies ``unscannable_action`` and names the cause."""


@dataclass
class Context:
    """One evaluation: the policy pinned for the session, and the session's state."""

    policy: Policy
    services: Services
    live: Live
    log: DecisionLog
    conn: Connection
    txn: Transaction | None = None
    rcpt: Resolved | None = None
    bypass: frozenset[str] = frozenset()
    command: str = ""  # an unknown command, as the MTA passed it
    _values: dict[str, Any] | None = field(default=None, repr=False)
    _facts: ScanResult | None = field(default=None, repr=False)

    @property
    def settings(self) -> Settings:
        return self.policy.settings

    @property
    def virus(self) -> VirusScanner | None:
        return self.live.virus

    @property
    def spam(self) -> SpamScanner | None:
        return self.live.spam

    @property
    def challenges(self) -> ChallengeStore | None:
        return self.live.challenges

    @property
    def state(self) -> StateStore:
        return self.live.state

    @property
    def mailer(self) -> Mailer | None:
        return self.live.mailer

    def lookup(self, name: str, rdtype: str) -> Future[Answer]:
        """A DNS lookup, made once per session (a failed one is not retried within it)."""
        k = dns_key(name, rdtype)
        future = self.conn.lookups.get(k)
        if future is None:
            if self.live.dns is None:
                raise DnsError("no resolver configured")
            future = self.conn.lookups[k] = self.live.dns.submit(name, rdtype)
        return future

    def mark(self, evidence: str) -> None:
        """Note evidence against the message (a DNS listing, a spam score, a rule that
        tags it): such mail is never challenged."""
        if self.txn is not None:
            self.txn.marks.append(evidence)

    @property
    def trusted(self) -> bool:
        """Authenticated, or in the relay networks: allowed to relay and to use local senders."""
        return self.conn.authenticated or self.conn.relay_client

    @property
    def sender(self) -> Resolved:
        assert self.txn is not None
        return self.txn.sender

    @property
    def facts(self) -> ScanResult | None:
        """What the content rules look at, from one pass over the kept message."""
        message = self.txn.message if self.txn else None
        if message is not None and self._facts is None:
            self._facts = scan(message.open(), self.policy.content_patterns,
                               self.policy.content_limits)
        return self._facts

    def rule_values(self) -> dict[str, Any]:
        """The facts rule conditions match against, built once per evaluation."""
        if self._values is None:
            facts = self.facts
            self._values = {
                "client": self.conn.client_addr,
                "client_name": self.conn.client_name or None,
                "helo": self.conn.helo or None,
                "sender": self.txn.sender.address if self.txn else None,
                "recipient": self.rcpt.address if self.rcpt else None,
                "listener": self.conn.listener or None,
                "authenticated": self.conn.authenticated,
            }
            if facts is not None:
                self._values.update(dict.fromkeys(CONTENT_FIELDS, facts))
        return self._values


@dataclass(frozen=True)
class Check:
    """A named check for one stage.  ``name`` is what ``permit skip=`` and the log use;
    ``failure`` names the setting that says what a failing service means for it."""

    name: str
    stage: Stage
    run: Callable[[Context], Decision | None]
    failure: str = "failure_action"
    evidence: bool = False  # its tags and quarantines mark the message (the rule lists)


def reject(entry: str, check: str, rule: str, detail: str = "") -> Decision:
    return Decision(Action.REJECT, catalogue.get(entry), rule=rule, check=check, detail=detail)


def smallest(*limits: tuple[int, str]) -> tuple[int, str]:
    """The smallest non-zero limit and where it is set; (0, '') when none is."""
    set_ = [lim for lim in limits if lim[0] > 0]
    return min(set_) if set_ else (0, "")


def sender_limit(ctx: Context, setting: str, attribute: str) -> tuple[int, str]:
    """Server setting, sender domain and sending account: the smallest non-zero applies."""
    assert ctx.txn is not None
    levels = [(getattr(ctx.settings, setting), ctx.policy.where[setting])]
    for owner in (ctx.txn.sender.domain, ctx.txn.account):
        if owner is not None:
            levels.append((getattr(owner.limits, attribute), owner.where))
    return smallest(*levels)
