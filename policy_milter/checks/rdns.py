"""Row 8: a client without reverse DNS may not send, unless it is trusted.

Decided at MAIL FROM, when authentication is known; the PTR lookup starts at connect
(and, in forward-confirmed mode, the forward lookups as soon as the PTR answer is in),
so the decision usually finds its answers waiting.
"""

from __future__ import annotations

import time
from concurrent.futures import Future
from ipaddress import ip_address

from ..decision import Decision
from ..patterns import contains
from ..services.dns import Answer, DnsError, collect, reverse_name
from .base import Context, reject

CHECK = "rdns"


def _forward_type(ctx: Context) -> str:
    assert ctx.conn.client_addr is not None
    return "A" if ctx.conn.client_addr.version == 4 else "AAAA"


def prefetch(ctx: Context) -> None:
    """At connect: ask for the PTR, and then for the names it gives."""
    addr = ctx.conn.client_addr
    if ctx.settings.rdns == "off" or addr is None:
        return
    ptr = ctx.lookup(reverse_name(ctx.conn.client), "PTR")
    if ctx.settings.rdns == "forward-confirmed":
        rdtype = _forward_type(ctx)

        def forward(done: Future[Answer]) -> None:
            if done.exception() is None:
                for name in done.result().records:
                    ctx.lookup(name, rdtype)
        ptr.add_done_callback(forward)


def check(ctx: Context) -> Decision | None:
    addr = ctx.conn.client_addr
    if addr is None or ctx.trusted:
        return None
    where = ctx.policy.where["rdns"]
    deadline = time.monotonic() + ctx.settings.dns_budget
    names = collect(ctx.lookup(reverse_name(ctx.conn.client), "PTR"), deadline).records
    if not names:
        return reject("not_allowed_to_send", CHECK, where, f"no PTR record for {addr}")
    generic = [n for n in names if contains(ctx.settings.rdns_generic_names, n)]
    if generic:
        return reject("not_allowed_to_send", CHECK, ctx.policy.where["rdns_generic_names"],
                      f"generic PTR name {generic[0]}")
    if ctx.settings.rdns != "forward-confirmed":
        return None
    rdtype = _forward_type(ctx)
    futures = [ctx.lookup(name, rdtype) for name in names]
    failed: DnsError | None = None
    for future in futures:
        try:
            if addr in {ip_address(r) for r in collect(future, deadline).records}:
                return None
        except DnsError as err:
            failed = err
    if failed is not None:
        raise failed  # a name we could not check might have confirmed it
    return reject("not_allowed_to_send", CHECK, where,
                  f"PTR {', '.join(names)} does not resolve back to {addr}")
