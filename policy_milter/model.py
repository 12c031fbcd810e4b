"""The session as the policy sees it: connection and transaction value objects.

No pymilter here: the adapter fills these from callbacks and macros, tests build them
directly.  A connection outlives many transactions; a transaction ends at RSET, abort,
the next MAIL, or end of message.
"""

from __future__ import annotations

import ipaddress
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from .addresses import Address
from .decision import Decision
from .message import MessageBuffer

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def client_ip(text: str | None) -> IPAddress | None:
    """The client address as an ip_address, IPv4-mapped IPv6 unwrapped; None when unknown."""
    if not text:
        return None
    text = text.strip().removeprefix("[").removesuffix("]")
    text = text.removeprefix("IPv6:").removeprefix("ipv6:")
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        return ip.ipv4_mapped
    return ip


@dataclass
class Connection:
    """What is known about the SMTP client for the whole session."""

    client_addr: IPAddress | None = None
    client_name: str = ""  # verified reverse name as the MTA reports it; '' when unknown
    relay_client: bool = False  # the address is in relay_networks (fixed for the session)
    listener: str = ""  # {daemon_name}: which MTA service the client came in on
    mta_name: str = ""  # j: the MTA's own host name
    helo: str | None = None
    helo_count: int = 0
    tls: bool = False
    auth_login: str = ""  # {auth_authen}, known from MAIL FROM on
    lookups: dict[tuple[str, str], Future[Any]] = field(default_factory=dict)  # DNS, by key

    @property
    def authenticated(self) -> bool:
        return bool(self.auth_login)


@dataclass
class Transaction:
    """One MAIL FROM ... end-of-message exchange."""

    sender: Address
    params: dict[str, str | None]
    declared_size: int | None = None
    queue_id: str = ""
    recipients: list[Address] = field(default_factory=list)  # accepted so far
    discarded: list[Address] = field(default_factory=list)  # accepted, to be dropped at eom
    discard_reason: Decision | None = None  # the last decision that dropped a recipient
    bypass: frozenset[str] = frozenset()
    deferred: list[Decision] = field(default_factory=list)  # quarantine / add-header for eom
    size: int = 0  # header + body octets counted so far
    message: MessageBuffer | None = None  # kept only when a content check will read it

    def discard(self, recipients: tuple[Address, ...], reason: Decision) -> None:
        self.discarded.extend(recipients)
        self.discard_reason = reason

    def every_recipient_discarded(self) -> bool:
        return {r.key for r in self.recipients} <= {r.key for r in self.discarded}

    def close(self) -> None:
        """Release the spooled message (the transaction ended, however)."""
        if self.message is not None:
            self.message.close()
            self.message = None
