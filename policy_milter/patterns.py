"""Pattern sets for client addresses, host names, mail addresses and words.

Each set maps patterns to payloads and answers ``find(value)`` with the payloads of
every pattern that matches.  Lookups are hash and prefix-table probes, so the cost of
a lookup does not grow with the number of entries; only shell-style globs, which
cannot be hashed, are tried one by one.  Rule conditions use a set with ``None``
payloads; the rule index uses rule numbers as payloads.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from collections import defaultdict
from collections.abc import Iterator
from typing import Generic, TypeVar

from .addresses import Address, AddressError, IPAddress, client_ip, normalize_domain

T = TypeVar("T")
_GLOB = re.compile(r"[*?\[]")


class PatternError(ValueError):
    """A pattern that cannot be understood; the message is for the admin."""


def _glob(pattern: str) -> re.Pattern[str]:
    return re.compile(fnmatch.translate(pattern), re.IGNORECASE)


def domain_name(text: str) -> str:
    """A domain as written in a rule file, normalised; PatternError when it is not one."""
    try:
        return normalize_domain(text)
    except AddressError as err:
        raise PatternError(str(err)) from None


def parents(domain: str) -> Iterator[str]:
    """``a.b.example`` -> ``b.example``, ``example``: the suffixes a wildcard can name."""
    while "." in domain:
        domain = domain.split(".", 1)[1]
        yield domain


class PatternSet(Generic[T]):
    """Common storage: exact keys, and globs tried in order."""

    def __init__(self) -> None:
        self._exact: dict[str, list[T]] = defaultdict(list)
        self._globs: list[tuple[re.Pattern[str], T]] = []

    def add(self, pattern: str, payload: T) -> None:
        if _GLOB.search(pattern):
            self._globs.append((_glob(pattern), payload))
        else:
            self._exact[pattern.lower()].append(payload)

    def find(self, value: str) -> Iterator[T]:
        key = value.lower()
        yield from self._exact.get(key, ())
        yield from (p for rx, p in self._globs if rx.fullmatch(key))

    def __bool__(self) -> bool:
        return bool(self._exact or self._globs)

    def hashable(self) -> bool:
        """True when no glob needs a linear scan: such a set can index rules."""
        return not self._globs


class DomainPatterns(PatternSet[T]):
    """``example.com`` (exact), ``.example.com`` or ``*.example.com`` (any subdomain), globs."""

    def __init__(self) -> None:
        super().__init__()
        self._parents: dict[str, list[T]] = defaultdict(list)

    def add(self, pattern: str, payload: T) -> None:
        pattern = pattern.strip()
        parent = pattern.lstrip("*").lstrip(".")
        if pattern.startswith(("*.", ".")) and not _GLOB.search(parent):
            self._parents[domain_name(parent)].append(payload)
        elif _GLOB.search(pattern):
            self._globs.append((_glob(pattern), payload))
        else:
            self._exact[domain_name(pattern)].append(payload)

    def find(self, value: str) -> Iterator[T]:
        if not value:
            return
        try:
            name = normalize_domain(value)
        except AddressError:
            name = value.lower()
        yield from self.find_canonical(name)

    def first_canonical(self, name: str) -> T | None:
        """The first payload ``find_canonical`` would give, or None; an exact entry is
        one dictionary probe."""
        exact = self._exact.get(name)
        if exact:
            return exact[0]
        if not self._parents and not self._globs:
            return None
        return next(self.find_canonical(name), None)

    def find_canonical(self, name: str) -> Iterator[T]:
        """``find`` for a name already in canonical form (an Address's domain)."""
        yield from self._exact.get(name, ())
        if self._parents:
            for parent in parents(name):
                yield from self._parents.get(parent, ())
        yield from (p for rx, p in self._globs if rx.fullmatch(name))

    def __bool__(self) -> bool:
        return super().__bool__() or bool(self._parents)


class AddressPatterns(PatternSet[T]):
    """Mail addresses: ``user@example.com``, ``@example.com`` (whole domain), ``@.example.com``
    (subdomains), ``user@`` (that local part anywhere), ``<>`` (null sender), globs."""

    def __init__(self) -> None:
        super().__init__()
        self._domains: DomainPatterns[T] = DomainPatterns()
        self._locals: dict[str, list[T]] = defaultdict(list)

    def add(self, pattern: str, payload: T) -> None:
        pattern = pattern.strip()
        if pattern == "<>":
            self._exact[""].append(payload)
            return
        local, at, domain = pattern.rpartition("@")
        if not at or not (local or domain):
            raise PatternError(f"'{pattern}' is not an address pattern (use user@domain, "
                               "@domain, user@ or <>)")
        if local in ("", "*") and domain:
            self._domains.add(domain, payload)  # it knows .domain, *.domain and globs
        elif not domain and not _GLOB.search(local):
            self._locals[local.lower()].append(payload)
        elif _GLOB.search(local) or _GLOB.search(domain):
            # ``abuse*@`` is that local part in any domain: the glob must cover the domain.
            self._globs.append((_glob(pattern if domain else f"{local}@*"), payload))
        else:
            self._exact[f"{local.lower()}@{domain_name(domain)}"].append(payload)

    def find(self, value: Address) -> Iterator[T]:  # type: ignore[override]
        """In Postfix's access(5) order: the address with its extension, then without it,
        then its domain (and parents, for ``.domain`` patterns), then ``user@`` with and
        without the extension; globs see both forms.  A pattern written for the mailbox
        therefore matches every extension of it, in any letter case."""
        if value.is_null:
            yield from self._exact.get("", ())
            return
        keys = (value.key,) if value.extension is None else (value.key, value.mailbox_key)
        for key in keys:
            yield from self._exact.get(key, ())
        if self._domains:
            yield from self._domains.find_canonical(value.domain)
        if self._locals:
            yield from self._locals.get(value.local.lower(), ())
            if value.extension is not None:
                yield from self._locals.get(value.mailbox_local.lower(), ())
        for rx, payload in self._globs:
            if any(rx.fullmatch(key) for key in keys):
                yield payload

    def __bool__(self) -> bool:
        return bool(self._exact or self._globs or self._domains or self._locals)

    def hashable(self) -> bool:
        return not self._globs and self._domains.hashable()


class NetworkPatterns(PatternSet[T]):
    """Client addresses and CIDR blocks, IPv4 and IPv6 (IPv4-mapped IPv6 is IPv4)."""

    def __init__(self) -> None:
        super().__init__()
        self._nets: dict[tuple[int, int], dict[int, list[T]]] = {}

    def add(self, pattern: str, payload: T) -> None:
        text = pattern.strip().replace("[", "").replace("]", "")
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise PatternError(f"'{pattern}' is not an IP address or CIDR block") from None
        if isinstance(net, ipaddress.IPv6Network) and net.network_address.ipv4_mapped \
                and net.prefixlen >= 96:
            net = ipaddress.ip_network(
                f"{net.network_address.ipv4_mapped}/{net.prefixlen - 96}")
        table = self._nets.setdefault((net.version, net.prefixlen), {})
        table.setdefault(int(net.network_address), []).append(payload)

    def find(self, value: IPAddress | str | None) -> Iterator[T]:
        ip = client_ip(value) if isinstance(value, str) or value is None else value
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped  # as client_ip does for text: patterns store mapped as IPv4
        if ip is None:
            return
        bits = ip.max_prefixlen
        number = int(ip)
        for (version, prefixlen), table in self._nets.items():
            if version == ip.version:
                mask = ((1 << bits) - 1) ^ ((1 << (bits - prefixlen)) - 1)
                yield from table.get(number & mask, ())

    def __bool__(self) -> bool:
        return bool(self._nets)


def contains(patterns: PatternSet[None], value: object) -> bool:
    """Whether any pattern matches ``value``."""
    return bool(patterns) and any(True for _ in patterns.find(value))  # type: ignore[arg-type]
