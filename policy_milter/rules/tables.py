"""The admin's tables: domains, accounts, aliases, mailing lists, relay recipients, listeners.

Each is a Postfix-map-like file: a key, then words.  Words are flags (``local-only``) or
``name=value`` attributes; which ones a table takes is declared once here, so a typo is
a load error with its ``path:line``, never a silently ignored word.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from .. import catalogue
from ..addresses import AddressError, parse_path
from ..catalogue import Kind
from ..patterns import DomainPatterns, PatternError, domain_name, host_bits_set
from ..services.sql import TableSpec
from ..stages import Stage
from .source import Errors, Line, did_you_mean, parse_count, parse_rate, parse_size, unknown_entry


class DomainKind(Enum):
    LOCAL = "local"  # mailboxes here: unknown recipients are refused
    RELAY = "relay"  # backup MX: accepted from anyone, checked against relay_recipients
    LIST = "list"  # mailing lists only
    REMOTE = "remote"  # not ours: listed only to give its senders a policy


@dataclass(frozen=True)
class Limits:
    """Per-level limits; 0 or None means no limit at this level."""

    max_recipients: int = 0
    max_size: int = 0  # message size the sender may send
    max_receive_size: int = 0  # message size a recipient may receive
    limit_messages: tuple[int, int] | None = None  # (count, seconds), authenticated senders
    limit_recipients: tuple[int, int] | None = None


@dataclass(frozen=True)
class Domain:
    name: str
    kind: DomainKind
    where: str
    limits: Limits = Limits()
    require_auth: bool = False

    @property
    def local(self) -> bool:
        """Mail for it is delivered here (what a ``local-only`` account may send to)."""
        return self.kind in (DomainKind.LOCAL, DomainKind.LIST)

    @property
    def ours(self) -> bool:
        """Mail for it is handled here (delivered, or relayed as its backup MX): what the
        relay check lets anyone send to."""
        return self.kind is not DomainKind.REMOTE


@dataclass(frozen=True)
class Account:
    address: str
    where: str
    limits: Limits = Limits()
    local_only: bool = False
    moved: bool = False
    login: str = ""


@dataclass(frozen=True)
class MailingList:
    address: str
    where: str
    members_only: bool
    members: frozenset[str]


@dataclass(frozen=True)
class Listener:
    name: str
    where: str
    require_auth: bool = False
    max_size: int = 0


ZONE_TARGETS = ("client", "sender", "helo", "ptr")


@dataclass(frozen=True)
class Codes:
    """The answers of a DNS list that count: inclusive integer ranges (none: any 127/8),
    and the blocks written with host bits set, with the network each was read as."""

    ranges: tuple[tuple[int, int], ...] = ()
    masked: tuple[tuple[str, IPv4Network], ...] = ()


@dataclass(frozen=True)
class Zone:
    """A DNS list: which session facts it is asked about, and what a listing means."""

    zone: str
    where: str
    targets: frozenset[str]
    weight: int = 1
    codes: Codes = Codes()
    reply: str = "access_denied"
    monitor: bool = False
    txt: bool = False
    allow: bool = False  # a white list: a listing skips the black lists

    def counts(self, answer: IPv4Address) -> bool:
        ranges = self.codes.ranges
        return not ranges or any(lo <= int(answer) <= hi for lo, hi in ranges)


def parse_codes(text: str) -> Codes:
    """``127.0.0.2,127.0.0.4-127.0.0.7,127.0.0.16/28`` -> inclusive integer ranges."""
    ranges, masked = [], []
    for part in filter(None, text.split(",")):
        try:
            if "/" in part:
                net = IPv4Network(part, strict=False)
                ranges.append((int(net.network_address), int(net.broadcast_address)))
                if host_bits_set(part):
                    masked.append((part, net))
            else:
                lo, _, hi = part.partition("-")
                ranges.append((int(IPv4Address(lo)), int(IPv4Address(hi or lo))))
        except ValueError:
            raise ValueError(f"'{part}' is not an address, range or CIDR block") from None
    return Codes(tuple(ranges), tuple(masked))


def parse_reply(name: str) -> str:
    """A reply entry for a DNS list hit: it must be a 5xx the milter can send at MAIL."""
    try:
        entry = catalogue.get(name)
    except catalogue.UnknownEntry:
        raise ValueError(unknown_entry(name)) from None
    if entry.kind is not Kind.REPLY or entry.temporary or Stage.MAIL not in entry.stages:
        raise ValueError(f"'{name}' is not a 5xx reply the milter can send at MAIL")
    return name


_LIMIT_ATTRS: dict[str, Callable[[str], Any]] = {
    "max_recipients": parse_count,
    "max_size": parse_size,
    "max_receive_size": parse_size,
    "limit_messages": parse_rate,
    "limit_recipients": parse_rate,
}


def _attrs(words: list[str], line: Line, errors: Errors, flags: set[str],
           attrs: dict[str, Callable[[str], Any]]) -> tuple[set[str], dict[str, Any]]:
    """Split words into known flags and parsed attributes, reporting the rest."""
    got_flags: set[str] = set()
    got: dict[str, Any] = {}
    for word in words:
        name, eq, value = word.partition("=")
        name = name.lower()
        if not eq:
            if name in flags:
                got_flags.add(name)
            else:
                known = flags | {a + "=" for a in attrs}
                errors.add(line.where, f"unknown word '{word}' (expected one of: "
                           f"{', '.join(sorted(known))}){did_you_mean(word, known)}")
        elif name in attrs:
            try:
                got[name] = attrs[name](value)
            except ValueError as err:
                errors.add(line.where, f"{name}: {err}")
        else:
            errors.add(line.where, f"unknown attribute '{name}'{did_you_mean(name, attrs)}")
    return got_flags, got


def _limits(attrs: dict[str, Any]) -> Limits:
    return Limits(**{k: v for k, v in attrs.items() if k in _LIMIT_ATTRS})


def _domain_entry_name(key: str) -> str:
    """How a domains-table key is named in logs and compared for duplicates."""
    if any(ch in key for ch in "*?["):
        bare = key.lstrip("*").lstrip(".")
        if any(ch in bare for ch in "*?["):
            return key.lower()
        return "." + domain_name(bare)
    return ("." if key.startswith(".") else "") + domain_name(key.lstrip("."))


def address_key(text: str, line: Line, errors: Errors) -> str | None:
    """A table key that must be a full address; normalised as lookups will see it."""
    try:
        addr = parse_path(text, null_ok=False)
    except AddressError as err:
        errors.add(line.where, f"'{text}': {err}")
        return None
    if not addr.domain:
        errors.add(line.where, f"'{text}': an address needs a domain")
        return None
    return addr.key


@dataclass
class Tables:
    """Every table, loaded.  Lookups take normalised keys (``Address.key``, A-label domains)."""

    domains: DomainPatterns[Domain] = field(default_factory=DomainPatterns)
    domain_list: list[Domain] = field(default_factory=list)
    accounts: dict[str, Account] = field(default_factory=dict)
    logins: dict[str, Account] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    catchall: set[str] = field(default_factory=set)
    lists: dict[str, MailingList] = field(default_factory=dict)
    relay_recipients: set[str] = field(default_factory=set)
    relay_domains_listed: set[str] = field(default_factory=set)
    relay_catchall: set[str] = field(default_factory=set)
    listeners: dict[str, Listener] = field(default_factory=dict)
    zones: list[Zone] = field(default_factory=list)
    sql: dict[str, TableSpec] = field(default_factory=dict)  # table name -> its query

    def from_sql(self, *names: str) -> bool:
        """Whether any of these tables comes from SQL: its entries are known only when
        looked up, so nothing can count or list them."""
        return any(name in self.sql for name in names)

    def domain(self, name: str) -> Domain | None:
        """The entry for a domain written any way (case, U-labels, trailing dot), or None."""
        return next(iter(self.domains.find(name)), None) if name else None

    def canonical_domain(self, name: str) -> Domain | None:
        """``domain`` for a name already canonical (an Address's): nothing to normalise."""
        return self.domains.first_canonical(name) if name else None

    def limited(self) -> list[Domain | Account]:
        """Every domain and account: what may carry limits."""
        return [*self.domain_list, *self.accounts.values()]

    def account_for_login(self, login: str) -> Account | None:
        low = login.lower()
        return self.logins.get(low) or self.accounts.get(low)

    def load_domains(self, lines: list[Line], errors: Errors) -> None:
        for line in lines:
            key, *rest = line.words()
            if not rest:
                errors.add(line.where, f"'{key}' needs a kind: "
                           f"{', '.join(k.value for k in DomainKind)}")
                continue
            try:
                kind = DomainKind(rest[0].lower())
            except ValueError:
                kinds = [k.value for k in DomainKind]
                errors.add(line.where, f"unknown domain kind '{rest[0]}' (expected one of: "
                           f"{', '.join(kinds)}){did_you_mean(rest[0], kinds)}")
                continue
            flags, attrs = _attrs(rest[1:], line, errors, {"require_auth"}, _LIMIT_ATTRS)
            try:
                name = _domain_entry_name(key)
            except PatternError as err:
                errors.add(line.where, str(err))
                continue
            entry = Domain(name, kind, line.where, _limits(attrs), "require_auth" in flags)
            first = next((d for d in self.domain_list if d.name == entry.name), None)
            if first is not None:
                errors.add(line.where, f"domain '{key}' is already defined at {first.where}")
                continue
            try:
                self.domains.add(key, entry)
            except PatternError as err:
                errors.add(line.where, str(err))
                continue
            self.domain_list.append(entry)

    def load_accounts(self, lines: list[Line], errors: Errors) -> None:
        attrs_allowed: dict[str, Callable[[str], Any]] = dict(_LIMIT_ATTRS, login=str)
        for line in lines:
            key, *rest = line.words()
            flags, attrs = _attrs(rest, line, errors, {"local-only", "moved"}, attrs_allowed)
            address = address_key(key, line, errors)
            if address is None:
                continue
            if address in self.accounts:
                errors.add(line.where, f"account '{key}' is already defined at "
                           f"{self.accounts[address].where}")
                continue
            account = Account(address, line.where, _limits(attrs), "local-only" in flags,
                              "moved" in flags, attrs.get("login", "").lower())
            if account.login in self.logins:
                errors.add(line.where, f"login '{account.login}' is already used at "
                           f"{self.logins[account.login].where}")
                continue
            self.accounts[address] = account
            if account.login:
                self.logins[account.login] = account

    def load_aliases(self, lines: list[Line], errors: Errors) -> None:
        for line in lines:
            key, *targets = line.words()
            if not targets:
                errors.add(line.where, f"alias '{key}' has no target")
                continue
            if key.startswith("@"):
                self._domain_key(key[1:], line, errors, self.catchall)
            elif (address := address_key(key, line, errors)) is not None:
                if address in self.aliases:
                    errors.add(line.where, f"alias '{key}' is already defined")
                self.aliases[address] = " ".join(targets)

    def load_lists(self, lines: list[Line], errors: Errors) -> None:
        for line in lines:
            key, *rest = line.words()
            mode = rest[0].lower() if rest else ""
            if mode not in ("open", "members-only"):
                errors.add(line.where, f"list '{key}' needs a mode: open or members-only")
                continue
            address = address_key(key, line, errors)
            members = {m for w in rest[1:] for m in w.split(",") if m}
            keys = {k for m in members if (k := address_key(m, line, errors)) is not None}
            if address in self.lists:
                errors.add(line.where, f"list '{key}' is already defined at "
                           f"{self.lists[address].where}")
            elif address is not None:
                self.lists[address] = MailingList(address, line.where, mode == "members-only",
                                                  frozenset(keys))

    def load_relay_recipients(self, lines: list[Line], errors: Errors) -> None:
        for line in lines:
            key, *rest = line.words()
            if rest and [w.upper() for w in rest] != ["OK"]:
                errors.add(line.where, "a relay recipient line is an address or @domain, "
                           "optionally followed by OK")
            if key.startswith("@"):
                domain = self._domain_key(key[1:], line, errors, self.relay_catchall)
                if domain:
                    self.relay_domains_listed.add(domain)
            elif (address := address_key(key, line, errors)) is not None:
                self.relay_recipients.add(address)
                self.relay_domains_listed.add(address.rpartition("@")[2])

    def load_listeners(self, lines: list[Line], errors: Errors) -> None:
        for line in lines:
            key, *rest = line.words()
            flags, attrs = _attrs(rest, line, errors, {"require_auth"}, {"max_size": parse_size})
            if key.lower() in self.listeners:
                errors.add(line.where, f"listener '{key}' is already defined at "
                           f"{self.listeners[key.lower()].where}")
                continue
            self.listeners[key.lower()] = Listener(key.lower(), line.where,
                                                   "require_auth" in flags,
                                                   attrs.get("max_size", 0))

    def load_dnsbl(self, lines: list[Line], errors: Errors) -> None:
        for line in lines:
            key, *rest = line.words()
            targets = set(rest[0].lower().split(",")) if rest else set()
            if not targets or not targets <= set(ZONE_TARGETS):
                errors.add(line.where, f"zone '{key}' needs what to look up: a comma list of "
                           f"{', '.join(ZONE_TARGETS)}")
                continue
            flags, attrs = _attrs(rest[1:], line, errors, {"monitor", "txt", "allow"},
                                  {"weight": parse_count, "codes": parse_codes,
                                   "reply": parse_reply})
            try:
                zone = domain_name(key)
            except PatternError as err:
                errors.add(line.where, str(err))
                continue
            options: dict[str, Any] = {**attrs, **dict.fromkeys(flags, True)}
            self.zones.append(Zone(zone, line.where, frozenset(targets), **options))

    @staticmethod
    def _domain_key(text: str, line: Line, errors: Errors, into: set[str]) -> str | None:
        try:
            into.add(name := domain_name(text))
        except PatternError as err:
            errors.add(line.where, str(err))
            return None
        return name


@dataclass(frozen=True)
class Row(Line):
    """A line an SQL table answered: named by database, table and key, having no line."""

    @property
    def where(self) -> str:
        return self.path


def parse_row(table: str, key: str, text: str, where: str) -> Any:
    """The entry a flat file's line ``KEY TEXT`` would give ``table``: what an SQL row
    reads as (``Directory`` asks for it).  Raises ValueError with every problem."""
    errors = Errors()
    t = Tables()
    getattr(t, f"load_{table}")([Row(where, 0, f"{key} {text}".strip())], errors)
    if errors.items:
        raise ValueError("; ".join(item.removeprefix(f"{where}: ") for item in errors.items))
    match table:
        case "domains":
            return t.domain_list[0]
        case "accounts":
            return next(iter(t.accounts.values()))
        case "aliases":
            return True if t.catchall else next(iter(t.aliases.values()))
        case "lists":
            return next(iter(t.lists.values()))
    return True  # relay_recipients: listed
