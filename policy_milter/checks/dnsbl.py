"""DNS black and white lists (row 19a) for the client address, sender domain, HELO and
PTR name.

Every zone is queried in parallel; the queries start as soon as their target is known
(the client at connect, the HELO name at HELO, the sender at MAIL FROM) and the
decision is taken at MAIL FROM.  Listed zones add their weight; the sum decides
against the threshold.  Only 127.0.0.0/8 answers count, never 127.255.255.0/24 (the
"query refused" codes some lists return) nor anything outside 127/8: those are logged
as zone errors.  A zone that fails costs at most the DNS budget, and turns into the
failure action only when the answers that did come cannot decide.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network

from .. import catalogue
from ..addresses import AddressError, normalize_domain
from ..decision import Action, Decision
from ..rules.tables import Zone
from ..services.dns import DnsError, collect, list_query
from .base import Context

CHECK = "dnsbl"
_LOOPBACK = IPv4Network("127.0.0.0/8")
_REFUSED = IPv4Network("127.255.255.0/24")
_TXT_MAX = 200


def _domain(name: str | None) -> str | None:
    if not name or name.startswith("["):
        return None
    try:
        return normalize_domain(name)
    except AddressError:
        return None


ALL_TARGETS = frozenset({"client", "ptr", "helo", "sender"})


def queries(ctx: Context, zone: Zone, targets: frozenset[str] = ALL_TARGETS) -> list[str]:
    """The query names for ``zone`` (those of ``targets``) from what is known so far."""
    conn, found = ctx.conn, []
    wanted = zone.targets & targets
    if "client" in wanted and conn.client_addr is not None:
        found.append(list_query(conn.client, zone.zone))
    if "ptr" in wanted and (name := _domain(conn.client_name)):
        found.append(f"{name}.{zone.zone}")
    if "helo" in wanted and (name := _domain(conn.helo)):
        found.append(f"{name}.{zone.zone}")
    if "sender" in wanted and ctx.txn:
        sender = ctx.txn.sender.address  # resolved at MAIL: already canonical
        if sender.domain and not sender.is_literal:
            found.append(f"{sender.domain}.{zone.zone}")
    return found


def prefetcher(targets: frozenset[str]) -> Callable[[Context], None]:
    """Start the lookups of ``targets``, which just became known; the check collects them."""
    def prefetch(ctx: Context) -> None:
        if ctx.trusted:
            return
        for zone in ctx.policy.tables.zones:
            for name in queries(ctx, zone, targets):
                ctx.lookup(name, "A")
    return prefetch


AT_CONNECT = prefetcher(frozenset({"client", "ptr"}))
AT_HELO = prefetcher(frozenset({"helo"}))
AT_MAIL = prefetcher(frozenset({"sender"}))


def _classify(zone: Zone, records: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """(codes that count as listed, answers that are zone errors)."""
    listed, errors = [], []
    for record in records:
        try:
            value = IPv4Address(record)
        except ValueError:
            errors.append(record)
            continue
        if value not in _LOOPBACK or value in _REFUSED:
            errors.append(record)
        elif zone.counts(value):
            listed.append(record)
    return listed, errors


def check(ctx: Context) -> Decision | None:
    if ctx.trusted:
        return None
    deadline = time.monotonic() + ctx.settings.dns_budget
    hits: list[tuple[Zone, str, list[str]]] = []
    failures: list[tuple[Zone, DnsError]] = []
    for zone in ctx.policy.tables.zones:
        for name in queries(ctx, zone):
            try:
                records = collect(ctx.lookup(name, "A"), deadline).records
            except DnsError as err:
                failures.append((zone, err))
                continue
            listed, errors = _classify(zone, records)
            if errors:
                ctx.log.event("dnsbl_zone_error", zone=zone.zone, query=name,
                              answer=",".join(errors), rule=zone.where)
            if listed:
                hits.append((zone, name, listed))
    allow = next((h for h in hits if h[0].allow), None)
    if allow is not None:
        return Decision(Action.PERMIT, rule=allow[0].where, check=CHECK,
                        skip=frozenset({CHECK, "greylist"}),
                        detail=f"{allow[1]} listed in white list {allow[0].zone}")
    blocks = [h for h in hits if not h[0].allow]
    score = sum(z.weight for z, _, _ in blocks if not z.monitor)
    decided = score >= ctx.settings.dnsbl_threshold
    if failures and (not decided or any(z.allow for z, _ in failures)):
        raise failures[0][1]
    if not blocks:
        return None
    ctx.mark(f"listed in {', '.join(z.zone for z, _, _ in blocks)}")
    monitor = not decided
    if monitor and sum(z.weight for z, _, _ in blocks) < ctx.settings.dnsbl_threshold:
        return None
    zone, name, codes = blocks[0]
    detail = "; ".join(f"{n} = {','.join(c)}" for _, n, c in blocks)
    return Decision(Action.REJECT, catalogue.get(zone.reply), rule=zone.where, check=CHECK,
                    detail=detail + _txt(ctx, blocks, deadline), monitor=monitor)


def _txt(ctx: Context, blocks: list[tuple[Zone, str, list[str]]], deadline: float) -> str:
    """TXT records of the listing zones that ask for them, for the log only."""
    wanted = [(z, ctx.lookup(n, "TXT")) for z, n, _ in blocks if z.txt]
    texts = []
    for zone, future in wanted:
        try:
            records = collect(future, deadline).records
        except DnsError:
            continue  # the listing stands; its explanation is optional
        clean = "".join(ch if " " <= ch <= "~" else "?" for ch in " ".join(records))
        texts.append(f"{zone.zone}: {clean[:_TXT_MAX]}")
    return f" ({'; '.join(texts)})" if texts else ""
