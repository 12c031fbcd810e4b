"""Envelope addresses resolved once against the tables, read by every check and rule.

As Postfix's ``smtpd_resolve_addr`` resolves an address once into a reply that every
restriction shares, the engine resolves the sender at MAIL FROM and each recipient at
RCPT TO into a ``Resolved``: the address as given, its canonical form, the mailbox
without its extension, the domain's table entry, the account, alias or list it names,
and every domain it routes to.  Nothing below this module parses an address again or
looks one up in a table, so no check can see another form of the same mailbox.

Table keys are tried in Postfix's access(5) order: the address with its extension,
then without it (then, where a table has them, ``@domain`` entries).  A table from SQL
is asked the same keys in the same order (a domain: its name, then ``.PARENT`` for each
parent), and its rows read as the flat file's lines: the answers are the same.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, TypeVar

from .addresses import Address, AddressError, normalize_domain
from .patterns import parents
from .rules.tables import Account, Domain, DomainKind, MailingList, Tables
from .services.sql import SqlTable

T = TypeVar("T")
KNOWN_MAX = 4096  # addresses whose facts from flat files are kept, the least used dropped


class Role(Enum):
    """What the domain of an address is to this site."""

    LOCAL = "local"  # mailboxes here
    LIST = "list"  # mailing lists only
    RELAY = "relay"  # backup MX for it
    REMOTE = "remote"  # listed only to give its senders a policy
    NONE = "none"  # not in the domains table (or an address literal)


@dataclass(frozen=True, slots=True)
class Hop:
    """A domain an address routes to besides its own: one in its local part (percent
    hack, bang path, quoted ``@``).  An address literal never has an entry."""

    name: str
    entry: Domain | None

    @property
    def ours(self) -> bool:
        """Mail for it is handled here; an empty name never is."""
        return self.entry is not None and self.entry.ours

    @property
    def local(self) -> bool:
        """Mail for it is delivered here: what a local-only account may write to."""
        return self.entry is not None and self.entry.local


@dataclass(eq=False, slots=True)
class Resolved:
    """One MAIL or RCPT address with every table fact about it, never changed after
    ``Directory.resolve`` built it.  Compared by identity: each command's address is its
    own object.  (Not a frozen dataclass: that costs a microsecond per address.)"""

    given: str  # the argument as the MTA passed it
    address: Address  # canonical, extension split off
    params: Mapping[str, str | None]  # ESMTP parameters, keywords uppercased
    domain: Domain | None = None  # the domains-table entry of the address's own domain
    account: Account | None = None
    routes: tuple[Hop, ...] = ()  # domains named in the local part, in routing order
    # For recipients only (a sender's alias or list means nothing):
    alias: str | None = None  # the target(s) of the alias that names it
    mailing_list: MailingList | None = None
    catchall: bool = False  # an ``@domain`` alias takes every address of the domain
    relay_listed: bool = True  # in relay_recipients, or its domain has no list there

    @property
    def key(self) -> str:
        return self.address.key

    @property
    def mailbox(self) -> str:
        """The mailbox's key, extension removed: what accounts and limits are about."""
        return self.address.mailbox_key

    @property
    def keys(self) -> tuple[str, ...]:
        """Its table keys in lookup order: with the extension, then without."""
        return _keys(self.address)

    @property
    def is_null(self) -> bool:
        return self.address.is_null

    @property
    def role(self) -> Role:
        return Role(self.domain.kind.value) if self.domain is not None else Role.NONE

    def not_ours(self) -> str | None:
        """The first domain it routes to that is not handled here (its own, then those
        in its local part), or None.  A bare ``<postmaster>`` is ours; a literal is not."""
        own = self.address.domain
        if own and (self.domain is None or not self.domain.ours):
            return own
        return next((hop.name or "(empty)" for hop in self.routes if not hop.ours), None)

    def not_local(self) -> str | None:
        """The first domain it routes to that is not delivered here, or None."""
        own = self.address.domain
        if own and (self.domain is None or not self.domain.local):
            return own
        return next((hop.name or "(empty)" for hop in self.routes if not hop.local), None)


def _keys(address: Address) -> tuple[str, ...]:
    """The table keys of an address, in lookup order: with its extension, then without."""
    if address.extension is None:
        return (address.key,)
    return address.key, address.mailbox_key


def _first(table: Mapping[str, T], keys: tuple[str, ...]) -> T | None:
    for key in keys:
        found = table.get(key)
        if found is not None:
            return found
    return None


class Directory:
    """Resolves envelope addresses against one policy's tables (those from SQL through
    ``sql``: TableError when one cannot be read) and recipient delimiter."""

    def __init__(self, tables: Tables, delimiters: str,
                 sql: Mapping[str, SqlTable] | None = None) -> None:
        self.tables = tables
        self.delimiters = delimiters
        self.sql = sql or {}
        self._kept: Callable[[Address, bool], tuple[Any, ...]] = \
            self._facts if self.sql else functools.lru_cache(KNOWN_MAX)(self._facts)

    def resolve(self, given: str, parsed: Address, params: Mapping[str, str | None],
                *, recipient: bool) -> Resolved:
        """Every fact about one address; ``recipient`` adds what only a recipient has.

        From flat files the facts of an argument never change, so they are kept (the
        same recipients come back session after session); from SQL they are asked
        each time, behind the table's own cache."""
        if parsed.is_null:
            return Resolved(given, parsed, params)
        facts = self._kept(parsed, recipient)
        return Resolved(given, facts[0], params, *facts[1:])

    def _facts(self, parsed: Address, recipient: bool) -> tuple[Any, ...]:
        """Resolved's fields after ``params``, with the address split at the delimiter."""
        t = self.tables
        address = parsed.split(self.delimiters)
        keys = _keys(address)
        domain = None if address.is_literal else self.domain(address.domain)
        routes = tuple(Hop(name, self.domain(name)) for name in address.route_domains) \
            if address.route_domains else ()
        account = self._first("accounts", keys)
        if not recipient:
            return address, domain, account, routes
        relay_listed = True
        if domain is not None and domain.kind is DomainKind.RELAY:
            relay_listed = self._relay_listed(address.domain, keys)
        catchall = self.sql["aliases"].get(f"@{address.domain}") is not None \
            if "aliases" in self.sql else address.domain in t.catchall
        return (address, domain, account, routes, self._first("aliases", keys),
                self._first("lists", keys), catchall, relay_listed)

    def domain(self, name: str) -> Domain | None:
        """The domains-table entry of a canonical domain name: the name itself, then
        ``.PARENT`` entries (which cover the subdomains)."""
        table = self.sql.get("domains")
        if table is None:
            return self.tables.canonical_domain(name)
        if not name:
            return None
        found: Domain | None = table.first((name, *(f".{p}" for p in parents(name))))
        return found

    def _first(self, name: str, keys: tuple[str, ...]) -> Any:
        table = self.sql.get(name)
        return table.first(keys) if table is not None else _first(getattr(self.tables, name),
                                                                   keys)

    def _relay_listed(self, domain: str, keys: Iterable[str]) -> bool:
        """A relay domain's recipient is accepted when relay_recipients has it or its
        ``@domain``; in a file, a domain with no line there accepts everyone (from SQL,
        which cannot tell, every relay domain needs its rows)."""
        table = self.sql.get("relay_recipients")
        if table is not None:
            return table.first((*keys, f"@{domain}")) is not None
        t = self.tables
        if domain not in t.relay_domains_listed or domain in t.relay_catchall:
            return True
        return any(k in t.relay_recipients for k in keys)

    def sending(self, login: str, sender: Resolved) -> tuple[Account | None, Domain | None]:
        """Who sends: the logged-in account (else the sender address's), and for a login
        the domain whose period limits apply when the account has none."""
        if not login:
            return sender.account, None
        table = self.sql.get("accounts")
        account: Account | None = table.by_login(login.lower()) if table is not None \
            else self.tables.account_for_login(login)
        name = (account.address if account else login).rpartition("@")[2]
        try:
            return account, self.domain(normalize_domain(name)) if name else None
        except AddressError:
            return account, None
