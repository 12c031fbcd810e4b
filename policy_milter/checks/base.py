"""What every check receives, and the small helpers checks share."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from .. import catalogue
from ..addresses import Address
from ..content import MessageFacts
from ..decision import Action, Decision
from ..log import DecisionLog
from ..model import Connection, Transaction
from ..rules.policy import Policy
from ..rules.rulelist import CONTENT_FIELDS
from ..rules.tables import Account, Domain
from ..services import Services
from ..services.challenges import ChallengeStore
from ..services.clamd import VirusScanner
from ..services.dns import Answer, DnsError, Resolver
from ..services.dns import key as dns_key
from ..services.mailer import Mailer
from ..services.spamd import SpamScanner
from ..stages import Stage


@dataclass
class Context:
    """One evaluation: the policy pinned for the session, and the session's state."""

    policy: Policy
    services: Services
    log: DecisionLog
    dns: Resolver | None
    virus: VirusScanner | None
    spam: SpamScanner | None
    challenges: ChallengeStore | None
    mailer: Mailer | None
    conn: Connection
    txn: Transaction | None = None
    rcpt: Address | None = None
    bypass: frozenset[str] = frozenset()
    _values: dict[str, Any] | None = field(default=None, repr=False)

    def lookup(self, name: str, rdtype: str) -> Future[Answer]:
        """A DNS lookup, made once per session (a failed one is not retried within it)."""
        k = dns_key(name, rdtype)
        future = self.conn.lookups.get(k)
        if future is None:
            if self.dns is None:
                raise DnsError("no resolver configured")
            future = self.conn.lookups[k] = self.dns.submit(name, rdtype)
        return future

    @property
    def trusted(self) -> bool:
        """Authenticated, or in the relay networks: allowed to relay and to use local senders."""
        return self.conn.authenticated or self.conn.relay_client

    @property
    def sender(self) -> Address:
        assert self.txn is not None
        return self.txn.sender

    @cached_property
    def sender_account(self) -> Account | None:
        """The account that sends: the authenticated login's, else the sender address's."""
        tables = self.policy.tables
        if self.conn.authenticated:
            return tables.account_for_login(self.conn.auth_login)
        return tables.accounts.get(self.sender.key) if self.txn else None

    @cached_property
    def sender_domain(self) -> Domain | None:
        return self.policy.tables.domain(self.sender.domain) if self.txn else None

    @cached_property
    def facts(self) -> MessageFacts | None:
        """The message's contents for content rules, when it was kept."""
        message = self.txn.message if self.txn else None
        return MessageFacts(message, self.policy.content_max_size) if message else None

    def rule_values(self) -> dict[str, Any]:
        """The facts rule conditions match against, built once per evaluation."""
        if self._values is None:
            facts = self.facts
            self._values = {
                "client": self.conn.client_addr,
                "client_name": self.conn.client_name or None,
                "helo": self.conn.helo or None,
                "sender": self.txn.sender if self.txn else None,
                "recipient": self.rcpt,
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


def base_address(rcpt: Address, delimiter: str) -> Address:
    """``user+tag@domain`` -> ``user@domain`` when ``+`` is the recipient delimiter: the
    mailbox the MTA delivers to, which is what recipient policies are about."""
    if not delimiter or delimiter not in rcpt.local:
        return rcpt
    return dataclasses.replace(rcpt, local=rcpt.local.split(delimiter, 1)[0])


def reject(entry: str, check: str, rule: str, detail: str = "") -> Decision:
    return Decision(Action.REJECT, catalogue.get(entry), rule=rule, check=check, detail=detail)


def smallest(*limits: tuple[int, str]) -> tuple[int, str]:
    """The smallest non-zero limit and where it is set; (0, '') when none is."""
    set_ = [lim for lim in limits if lim[0] > 0]
    return min(set_) if set_ else (0, "")


def sender_limit(ctx: Context, setting: str, attribute: str) -> tuple[int, str]:
    """Server setting, sender domain and sending account: the smallest non-zero applies."""
    levels = [(ctx.policy.settings[setting], ctx.policy.where[setting])]
    for owner in (ctx.sender_domain, ctx.sender_account):
        if owner is not None:
            levels.append((getattr(owner.limits, attribute), owner.where))
    return smallest(*levels)
