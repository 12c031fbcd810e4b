"""DNS lookups for the checks: parallel, de-duplicated, cached by record TTL.

Three outcomes, as in Postfix's maps: records found, nothing there (NXDOMAIN or no
data: cached for the SOA's negative TTL), or a lookup error (timeout, SERVFAIL, no
server answered): never cached, raised as DnsError so the engine applies the failure
action.  Lookups run on a shared thread pool and return futures, so a session can
start them at connect and collect them at MAIL FROM; identical lookups in flight are
made once.
"""

from __future__ import annotations

import functools
import ipaddress
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Protocol

import dns.exception
import dns.message
import dns.name
import dns.rdatatype
import dns.resolver
from cachetools import TLRUCache

from ..metrics import OFF, Metrics
from .errors import DependencyError

Key = tuple[str, str]  # (name without trailing dot, lowercase; record type)


class DnsError(DependencyError):
    """A lookup that could not be answered: a temporary failure, never 'not listed'."""

    def __init__(self, message: str) -> None:
        super().__init__("dns", message, entry="dns_tempfail")


@dataclass(frozen=True)
class DnsConfig:
    nameservers: tuple[str, ...] = ()  # empty: the system resolver (/etc/resolv.conf)
    port: int = 53
    timeout: float = 3.0  # one lookup, all tries included
    min_ttl: int = 5
    max_ttl: int = 86400
    negative_ttl: int = 300  # for a negative answer that carries no SOA
    cache_size: int = 20000


@dataclass(frozen=True)
class Answer:
    """Records as text: addresses for A/AAAA, names (no trailing dot) for PTR/CNAME,
    joined strings for TXT.  Empty when the name or type does not exist."""

    name: str
    rdtype: str
    records: tuple[str, ...]
    ttl: int


class Resolver(Protocol):
    def submit(self, name: str, rdtype: str) -> Future[Answer]:
        """Start (or join) a lookup; the future raises DnsError on failure."""


def key(name: str, rdtype: str) -> Key:
    return name.rstrip(".").lower(), rdtype.upper()


def collect(future: Future[Answer], deadline: float) -> Answer:
    """The answer, or DnsError when it is not there by ``deadline`` (time.monotonic).

    A failed lookup raises a fresh DnsError: raising the one the future keeps would hang
    this session's frames on it, and the future hangs on the session."""
    try:
        failed = future.exception(timeout=max(0.0, deadline - time.monotonic()))
    except FutureTimeout:
        raise DnsError("no answer within the DNS time budget") from None
    if failed is not None:
        raise DnsError(failed.message if isinstance(failed, DependencyError) else repr(failed))
    return future.result()


@functools.lru_cache(maxsize=4096)
def reverse_name(address: str) -> str:
    """PTR owner name: IPv4 in-addr.arpa, IPv6 nibbles under ip6.arpa."""
    return ipaddress.ip_address(address).reverse_pointer


def list_query(address: str, zone: str) -> str:
    """A DNSBL query name (RFC 5782): reversed octets or nibbles, then the zone."""
    reverse = reverse_name(address)
    for suffix in (".in-addr.arpa", ".ip6.arpa"):
        reverse = reverse.removesuffix(suffix)
    return f"{reverse}.{zone}"


def _text(rdata: object, rdtype: str) -> str:
    if rdtype == "TXT":
        return b"".join(rdata.strings).decode("utf-8", "replace")  # type: ignore[attr-defined]
    return rdata.to_text().rstrip(".").lower()  # type: ignore[attr-defined]


class DnsResolver:
    """The production resolver: dnspython behind a TTL cache and an in-flight table."""

    def __init__(self, config: DnsConfig, workers: int = 64,
                 clock: Callable[[], float] = time.monotonic, metrics: Metrics = OFF) -> None:
        self.config = config
        self.metrics = metrics
        self._resolver = dns.resolver.Resolver(configure=not config.nameservers)
        if config.nameservers:
            self._resolver.nameservers = list(config.nameservers)
            self._resolver.port = config.port
        self._resolver.cache = None  # ours clamps TTLs; dnspython's does not
        # The finished lookups themselves: a hit hands out the same done future
        self._cache: TLRUCache[Key, Future[Answer]] = TLRUCache(
            config.cache_size, ttu=lambda _k, done, now: now + done.result().ttl, timer=clock)
        self._inflight: dict[Key, Future[Answer]] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="dns")

    def submit(self, name: str, rdtype: str) -> Future[Answer]:
        k = key(name, rdtype)
        with self._lock:
            cached = self._cache.get(k)
            if cached is not None:
                self.metrics.dns("hit")
                return cached
            running = self._inflight.get(k)
            if running is not None:
                self.metrics.dns("joined")
                return running
            self.metrics.dns("miss")
            future = self._pool.submit(self._query, k)
            self._inflight[k] = future
        future.add_done_callback(lambda f: self._finished(k, f))
        return future

    def _finished(self, k: Key, future: Future[Answer]) -> None:
        """Cache an answer; a lookup cancelled by close() (a reload, the end of a test)
        has none, and asking it for its exception would raise."""
        with self._lock:
            if not future.cancelled() and future.exception() is None:
                # A future of its own: the lookup's keeps its done-callbacks, and with them
                # the session that asked (its context, its rules) for as long as it is kept
                done: Future[Answer] = Future()
                done.set_result(future.result())
                self._cache[k] = done
            self._inflight.pop(k, None)

    def _clamp(self, ttl: int) -> int:
        return max(self.config.min_ttl, min(self.config.max_ttl, ttl))

    def _negative_ttl(self, response: dns.message.Message | None) -> int:
        """RFC 2308: the SOA's own TTL, at most its MINIMUM field; a default without SOA."""
        for rrset in response.authority if response is not None else ():
            if rrset.rdtype == dns.rdatatype.SOA:
                return self._clamp(min(rrset.ttl, rrset[0].minimum))
        return self._clamp(self.config.negative_ttl)

    def _query(self, k: Key) -> Answer:
        name, rdtype = k
        try:
            answer = self._resolver.resolve(name + ".", rdtype, raise_on_no_answer=False,
                                            search=False, lifetime=self.config.timeout)
        except dns.resolver.NXDOMAIN as err:
            qname = dns.name.from_text(name)
            responses = err.responses()
            return Answer(name, rdtype, (), self._negative_ttl(responses.get(qname)))
        except dns.resolver.LifetimeTimeout:
            raise DnsError(f"{rdtype} {name}: timed out after {self.config.timeout}s") from None
        except dns.resolver.NoNameservers as err:
            raise DnsError(f"{rdtype} {name}: no server answered ({err.msg})") from None
        except (dns.exception.DNSException, OSError) as err:
            raise DnsError(f"{rdtype} {name}: {type(err).__name__}: {err}") from None
        if answer.rrset is None:
            return Answer(name, rdtype, (), self._negative_ttl(answer.response))
        records = tuple(_text(r, rdtype) for r in answer.rrset)
        return Answer(name, rdtype, records, self._clamp(answer.rrset.ttl))

    def nameservers(self) -> tuple[list[str], int]:
        """The servers asked (the configured ones, or the system's) and their port."""
        return ([str(getattr(n, "address", n)) for n in self._resolver.nameservers],
                self._resolver.port)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
