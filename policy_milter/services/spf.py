"""SPF (RFC 7208) through pyspf, asking the milter's own resolver.

pyspf does the SPF evaluation; its DNS goes through one module-level function, which
this module replaces with one that asks the resolver of the check in progress (the
nameservers and port of policy.conf), so SPF lookups never reach the system resolver
unless policy.conf names none.  The whole evaluation is bounded by a time budget (RFC
7208 4.6.4); a lookup that fails is SPF's own ``temperror``.
"""

from __future__ import annotations

import contextvars
from typing import Any, Protocol

import dns.exception
import dns.resolver
import spf

from .dns import DnsConfig

_CURRENT: contextvars.ContextVar[dns.resolver.Resolver] = contextvars.ContextVar("spf_dns")


class SenderCheck(Protocol):
    def check(self, client: str, sender: str, helo: str) -> str:
        """The SPF result for ``sender`` from ``client``: pass, fail, softfail, neutral,
        none, permerror or temperror."""


def _record(rdata: Any, qtype: str) -> Any:
    """An answer in the form pyspf's own lookups give it."""
    if qtype in ("A", "AAAA"):
        return rdata.address
    if qtype == "MX":
        return rdata.preference, rdata.exchange.to_text(omit_final_dot=True)
    if qtype == "PTR":
        return rdata.target.to_text(omit_final_dot=True)
    return tuple(rdata.strings)  # TXT, SPF: the record's strings, as bytes


def _lookup(name: str, qtype: str, strict: bool = True, timeout: float = 20
            ) -> list[tuple[tuple[str, str], Any]]:
    """pyspf's DNSLookup: ((name, type), value) for each record; [] when there is none."""
    resolver = _CURRENT.get()
    try:
        answer = resolver.resolve(name, qtype, lifetime=timeout, search=False,
                                  raise_on_no_answer=False)
    except dns.resolver.NXDOMAIN:
        return []
    except dns.exception.DNSException as err:
        raise spf.TempError(f"DNS {type(err).__name__}: {err}") from None
    if answer.rrset is None:
        return []
    return [((name, qtype), _record(rdata, qtype)) for rdata in answer.rrset]


spf.DNSLookup = _lookup


class Spf:
    """SPF checks with a resolver of their own, configured as the milter's."""

    def __init__(self, config: DnsConfig, budget: float) -> None:
        self._resolver = dns.resolver.Resolver(configure=not config.nameservers)
        if config.nameservers:
            self._resolver.nameservers = list(config.nameservers)
            self._resolver.port = config.port
        self._budget = budget

    def check(self, client: str, sender: str, helo: str) -> str:
        token = _CURRENT.set(self._resolver)
        try:
            result, _ = spf.check2(i=client, s=sender, h=helo, querytime=self._budget)
        finally:
            _CURRENT.reset(token)
        return str(result)
