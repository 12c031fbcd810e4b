"""The session as the policy sees it: connection and transaction value objects.

No pymilter here: the adapter fills these from callbacks and macros, tests build them
directly.  A connection outlives many transactions; a transaction ends at RSET, abort,
the next MAIL, or end of message.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from .addresses import IPAddress
from .decision import Decision
from .envelope import Resolved
from .message import MessageBuffer
from .rules.tables import Account, Domain


@dataclass
class Connection:
    """What is known about the SMTP client for the whole session."""

    client_addr: IPAddress | None = None
    client: str = ""  # client_addr as text, made once: the log and DNS names need it
    client_name: str = ""  # verified reverse name as the MTA reports it; '' when unknown
    relay_client: bool = False  # the address is in relay_networks (fixed for the session)
    listener: str = ""  # {daemon_name}: which MTA service the client came in on
    mta_name: str = ""  # j: the MTA's own host name
    helo: str | None = None
    helo_count: int = 0
    tls: bool = False
    auth_login: str = ""  # {auth_authen}, known from MAIL FROM on
    lookups: dict[tuple[str, str], Future[Any]] = field(default_factory=dict)  # DNS, by key
    rules_hash: str = ""  # the short hash of the rules that decide this connection
    session_id: str = ""  # names the connection in the log: PID.N, in hex

    @property
    def authenticated(self) -> bool:
        return bool(self.auth_login)


@dataclass
class Transaction:
    """One MAIL FROM ... end-of-message exchange; every address in it resolved once."""

    sender: Resolved
    declared_size: int | None = None
    queue_id: str = ""
    account: Account | None = None  # who sends: the logged-in account, else the sender's
    account_domain: Domain | None = None  # a login's domain: its period limits' fallback
    recipients: list[Resolved] = field(default_factory=list)  # accepted so far
    discarded: list[Resolved] = field(default_factory=list)  # accepted, to be dropped at eom
    discard_reason: Decision | None = None  # the last decision that dropped a recipient
    bypass: frozenset[str] = frozenset()  # checks a white entry at MAIL skips for everyone
    rcpt_bypass: dict[Resolved, frozenset[str]] = field(default_factory=dict)  # ... at RCPT
    deferred: list[Decision] = field(default_factory=list)  # quarantine / add-header for eom
    unchecked: list[str] = field(default_factory=list)  # checks that could not look, and why
    marks: list[str] = field(default_factory=list)  # evidence against it: never challenged
    size: int = 0  # header + body octets counted so far
    message: MessageBuffer | None = None  # kept only when a content check will read it

    def accept(self, rcpt: Resolved, bypass: frozenset[str]) -> None:
        """A recipient passed RCPT; ``bypass`` is what white entries skip for it."""
        self.recipients.append(rcpt)
        self.rcpt_bypass[rcpt] = bypass

    def message_bypass(self) -> frozenset[str]:
        """What message-wide checks skip: what a white entry at MAIL said, and what one
        at RCPT said for every recipient (one recipient's entry never spares the others)."""
        if not self.recipients:
            return self.bypass
        return self.bypass | frozenset.intersection(
            *(self.rcpt_bypass.get(r, self.bypass) for r in self.recipients))

    def skips_for(self, rcpt: Resolved, check: str) -> bool:
        """A per-recipient check (challenge-response) is skipped for this recipient."""
        return check in self.rcpt_bypass.get(rcpt, self.bypass)

    def discard(self, recipients: tuple[Resolved, ...], reason: Decision) -> None:
        self.discarded.extend(recipients)
        self.discard_reason = reason

    def every_recipient_discarded(self) -> bool:
        return {r.key for r in self.recipients} <= {r.key for r in self.discarded}

    def close(self) -> None:
        """Release the spooled message (the transaction ended, however)."""
        if self.message is not None:
            self.message.close()
            self.message = None
