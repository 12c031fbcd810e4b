"""Row 16: only trusted clients may send to domains that are not handled here.

The recipient's domain and every domain its local part routes to (percent hack, bang
path, quoted ``@``) must be one of ours, or the client must be trusted.  Anything
unknown, an address literal included, counts as not ours: a relay check fails closed.
"""

from __future__ import annotations

from ..decision import Decision
from .base import Context, reject

CHECK = "relay"


def relay(ctx: Context) -> Decision | None:
    rcpt = ctx.rcpt
    assert rcpt is not None
    if ctx.trusted:
        return None
    foreign = rcpt.not_ours()
    if foreign is None:
        return None
    where = ctx.policy.where.get("domains", ctx.policy.where["relay_networks"])
    return reject("relay_denied", CHECK, where, f"{foreign} is not a domain of ours")
