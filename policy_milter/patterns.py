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
from typing import Any, Generic, TypeVar

from .addresses import Address, AddressError, IPAddress, client_ip, normalize_domain

T = TypeVar("T")
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
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


def network(text: str) -> IPNetwork:
    """An address or CIDR block as a pattern set reads it: brackets dropped, IPv4-mapped
    IPv6 as IPv4, and host bits cleared (``192.0.2.1/24`` is 192.0.2.0/24)."""
    clean = text.strip().replace("[", "").replace("]", "")
    try:
        net = ipaddress.ip_network(clean, strict=False)
    except ValueError:
        raise PatternError(f"'{text}' is not an IP address or CIDR block") from None
    if isinstance(net, ipaddress.IPv6Network) and net.network_address.ipv4_mapped \
            and net.prefixlen >= 96:
        net = ipaddress.ip_network(f"{net.network_address.ipv4_mapped}/{net.prefixlen - 96}")
    return net


def host_bits_set(text: str) -> bool:
    """Whether a block ``network`` reads has bits set past its prefix, which it clears:
    the writer of ``192.0.2.1/24`` may have meant one address and got 256."""
    try:
        ipaddress.ip_network(text.strip().replace("[", "").replace("]", ""))
    except ValueError:  # network() read it, so only the host bits can be wrong
        return True
    return False


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

    # What ``policy-milter check`` proves about rules.  Each answer is True only when it
    # follows from the patterns themselves; a glob covers only the same glob, or ``*``.

    def covers(self, other: PatternSet[Any]) -> bool:
        """Whether this set matches every value ``other`` matches."""
        return type(other) is type(self) and all(self._hit(k) for k in other._exact) \
            and self._covers_globs(other)

    def disjoint(self, other: PatternSet[Any]) -> bool:
        """Whether no value matches both sets."""
        return type(other) is type(self) and not (self._globs and other._globs) \
            and not any(self._hit(k) for k in other._exact) \
            and not any(other._hit(k) for k in self._exact)

    def example(self) -> Any:
        """A value this set matches, or None when only globs could say which."""
        return next(iter(self._exact), None)

    def _hit(self, value: Any) -> bool:
        return any(True for _ in self.find(value))

    def _covers_globs(self, other: PatternSet[Any]) -> bool:
        mine = {rx.pattern for rx, _ in self._globs}
        return _ANYTHING in mine or all(rx.pattern in mine for rx, _ in other._globs)


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

    def covers(self, other: PatternSet[Any]) -> bool:
        return isinstance(other, DomainPatterns) and super().covers(other) and all(
            self._covers_below(p) for p in other._parents)

    def disjoint(self, other: PatternSet[Any]) -> bool:
        if not isinstance(other, DomainPatterns) or not super().disjoint(other):
            return False
        if self._globs and other._parents or other._globs and self._parents:
            return False
        return not any(p == q or _under(p, q) or _under(q, p)
                       for p in self._parents for q in other._parents)

    def example(self) -> str | None:
        found: str | None = super().example()
        if found is None and self._parents:
            found = f"x.{next(iter(self._parents))}"  # a subdomain: what '.domain' matches
        return found

    def _hit(self, value: Any) -> bool:
        return any(True for _ in self.find_canonical(value))

    def _covers_below(self, parent: str) -> bool:
        """Whether every subdomain of ``parent`` is matched."""
        return parent in self._parents or any(p in self._parents for p in parents(parent)) \
            or _ANYTHING in {rx.pattern for rx, _ in self._globs}


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

    def covers(self, other: PatternSet[Any]) -> bool:
        """An address written ``user@domain`` is covered by the same address, its
        domain's patterns, ``user@`` and globs matching it: each matches every form of it
        (with or without an extension) that the address pattern does."""
        return isinstance(other, AddressPatterns) \
            and all(self._hit(_address(k)) for k in other._exact) \
            and self._domains.covers(other._domains) \
            and all(local in self._locals for local in other._locals) \
            and self._covers_globs(other)

    def disjoint(self, other: PatternSet[Any]) -> bool:
        """Proven by the null sender against any address, and by domains: two patterns
        that name different domains never match the same address."""
        if not isinstance(other, AddressPatterns) or ("" in self._exact and "" in other._exact):
            return False
        for one, two in ((self, other), (other, self)):
            if (one._locals or one._globs) and two._addresses():
                return False
            if any(two._domains._hit(d) or d in two._exact_domains() for d in one._exact_domains()):
                return False
        return self._domains.disjoint(other._domains)

    def example(self) -> Address | None:
        if self._exact:
            return _address(next(iter(self._exact)))
        domain = self._domains.example()
        if domain is not None:
            return Address("x", domain)
        local = next(iter(self._locals), None)
        return None if local is None else Address(local, "example.invalid")

    def domains(self) -> frozenset[str] | None:
        """The domains every address it matches is in, or None when they are not a
        known few (``user@``, ``@.domain``, globs, the null sender)."""
        if self._locals or self._globs or "" in self._exact or not self._domains.hashable() \
                or self._domains._parents:
            return None
        return self._exact_domains() | frozenset(self._domains._exact)

    def _exact_domains(self) -> frozenset[str]:
        return frozenset(k.rpartition("@")[2] for k in self._exact if k)

    def _addresses(self) -> bool:
        """Whether it matches any address but the null sender."""
        return bool(self._exact.keys() - {""} or self._domains or self._locals or self._globs)


class NetworkPatterns(PatternSet[T]):
    """Client addresses and CIDR blocks, IPv4 and IPv6 (IPv4-mapped IPv6 is IPv4)."""

    def __init__(self) -> None:
        super().__init__()
        self._nets: dict[tuple[int, int], dict[int, list[T]]] = {}
        # Blocks written with host bits set, and the network each was read as.
        self.masked: list[tuple[str, IPNetwork]] = []

    def add(self, pattern: str, payload: T) -> None:
        net = network(pattern)
        if host_bits_set(pattern):
            self.masked.append((pattern.strip(), net))
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

    def networks(self) -> Iterator[IPNetwork]:
        for (version, prefixlen), table in self._nets.items():
            kind = ipaddress.IPv4Network if version == 4 else ipaddress.IPv6Network
            for number in table:
                yield kind((number, prefixlen))

    def covers(self, other: PatternSet[Any]) -> bool:
        mine = list(self.networks())
        return isinstance(other, NetworkPatterns) and all(
            any(_within(net, big) for big in mine) for net in other.networks())

    def disjoint(self, other: PatternSet[Any]) -> bool:
        return isinstance(other, NetworkPatterns) and not any(
            _within(one, two) or _within(two, one)
            for one in self.networks() for two in other.networks())

    def example(self) -> IPAddress | None:
        return next((net.network_address for net in self.networks()), None)


_ANYTHING = _glob("*").pattern  # the glob that matches every value


def _under(name: str, parent: str) -> bool:
    """Whether ``name`` is a subdomain of ``parent``."""
    return name.endswith(f".{parent}")


def _within(net: IPNetwork, big: IPNetwork) -> bool:
    """Whether ``net`` lies inside ``big`` (two blocks either nest or are apart)."""
    return net.version == big.version and net.subnet_of(big)  # type: ignore[arg-type]


def _address(key: str) -> Address:
    """The address a table key names (``""`` is the null sender)."""
    local, _, domain = key.rpartition("@")
    return Address(local, domain)


def contains(patterns: PatternSet[None], value: object) -> bool:
    """Whether any pattern matches ``value``."""
    return bool(patterns) and any(True for _ in patterns.find(value))  # type: ignore[arg-type]
