"""Greylisting at RCPT: a first-seen (client network, sender, recipient) must come back.

It runs after every other recipient check, so that what is refused for good (unknown
users, relaying, the rules) is refused at once rather than after a retry, and so that a
recipient rule's ``permit skip=greylist`` can exempt a recipient.  Never greylisted:
trusted clients (authenticated, or in relay_networks), clients a white entry or a DNS
white list exempts (``permit`` skips it as it skips the black lists), and the null
sender writing to a postmaster (bounces and verification probes to the role address
that must always work).
"""

from __future__ import annotations

from .. import catalogue
from ..decision import Action, Decision
from ..greylist import Greylist
from .base import Context

CHECK = "greylist"


def check(ctx: Context) -> Decision | None:
    assert ctx.txn is not None and ctx.rcpt is not None
    client, sender, rcpt = ctx.conn.client_addr, ctx.txn.sender, ctx.rcpt
    if ctx.trusted or client is None:
        return None
    if sender.is_null and rcpt.mailbox.partition("@")[0] == "postmaster":  # any extension
        return None
    # Both mailboxes, extension removed: a VERP or tagged sender (user+tag@) and its
    # case variants share one triplet instead of being greylisted anew each message.
    verdict = Greylist(ctx.state, ctx.settings).check(client, sender.mailbox, rcpt.mailbox)
    if verdict.passed:
        return None
    return Decision(Action.TEMPFAIL, catalogue.get("greylisted"),
                    rule=ctx.policy.where["greylist"], check=CHECK, detail=verdict.detail)
