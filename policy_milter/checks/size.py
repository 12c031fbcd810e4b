"""Message size: the listener's limit (row 33), the sender's (26), each recipient's (32).

Decided from ``SIZE=`` at MAIL and RCPT when the client declares it, and from the
counted header and body octets at end of message in any case.  Each level's 0 means
unlimited; of server, sender domain and sender account the smallest non-zero applies.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..decision import Decision
from ..envelope import Resolved
from .base import Context, reject, sender_limit, smallest

if TYPE_CHECKING:
    from ..rules.policy import Policy

CHECK = "size"


def limits_configured(policy: Policy) -> bool:
    """Whether any size limit exists, so that the adapter must count the message (a
    domain or account from SQL may have one)."""
    t = policy.tables
    return bool(policy.settings.max_message_size or t.from_sql("domains", "accounts")
                or any(o.limits.max_size or o.limits.max_receive_size for o in t.limited())
                or any(listener.max_size for listener in t.listeners.values()))


def _sender_limits(ctx: Context, size: int) -> Decision | None:
    listener = ctx.policy.tables.listeners.get(ctx.conn.listener.lower())
    if listener is not None and listener.max_size and size > listener.max_size:
        return reject("listener_size_exceeded", CHECK, listener.where,
                      f"{size} > {listener.max_size} on {listener.name}")
    limit, where = sender_limit(ctx, "max_message_size", "max_size")
    if limit and size > limit:
        return reject("message_size_exceeded", CHECK, where, f"{size} > {limit}")
    return None


def _recipient_limit(rcpt: Resolved, size: int) -> Decision | None:
    """Row 32: the recipient mailbox's account and its domain; ``user+tag`` is ``user``."""
    levels = [(owner.limits.max_receive_size, owner.where)
              for owner in (rcpt.account, rcpt.domain) if owner is not None]
    limit, where = smallest(*levels)
    if limit and size > limit:
        return reject("mailbox_size_exceeded", CHECK, where, f"{rcpt.mailbox}: {size} > {limit}")
    return None


def declared_mail(ctx: Context) -> Decision | None:
    assert ctx.txn is not None
    size = ctx.txn.declared_size
    return None if size is None else _sender_limits(ctx, size)


def declared_rcpt(ctx: Context) -> Decision | None:
    assert ctx.txn is not None and ctx.rcpt is not None
    size = ctx.txn.declared_size
    return None if size is None else _recipient_limit(ctx.rcpt, size)


def counted(ctx: Context) -> Decision | None:
    """At end of message: a recipient over its limit refuses the whole message, so the
    sender learns of it (dropping only that copy silently would lose mail)."""
    assert ctx.txn is not None
    size = ctx.txn.size
    found = _sender_limits(ctx, size)
    for rcpt in ctx.txn.recipients:
        found = found or _recipient_limit(rcpt, size)
    return found
