"""Authentication policy: who must log in, and what a login may do.

Row 15 (AUTH required on a listener or for a sender domain), 19b (a local sender domain
from a client that is neither authenticated nor trusted), 18 (a local-only account
writing outside).
"""

from __future__ import annotations

from ..decision import Decision
from .base import Context, reject

CHECK = "auth"


def required(ctx: Context) -> Decision | None:
    if ctx.trusted:
        return None
    listener = ctx.policy.tables.listeners.get(ctx.conn.listener.lower())
    if listener is not None and listener.require_auth:
        return reject("auth_required", CHECK, listener.where, f"listener {listener.name}")
    domain = ctx.sender.domain
    if domain is not None and domain.require_auth:
        return reject("auth_required", CHECK, domain.where, f"sender domain {domain.name}")
    return None


def local_sender(ctx: Context) -> Decision | None:
    domain = ctx.sender.domain
    if domain is None or not domain.local or ctx.trusted:
        return None
    return reject("access_denied", "local_sender", ctx.policy.where["local_sender_requires_auth"],
                  f"sender domain {domain.name} is local but the client is not trusted")


def local_only(ctx: Context) -> Decision | None:
    assert ctx.txn is not None and ctx.rcpt is not None
    account = ctx.txn.account if ctx.conn.authenticated else None
    if account is None or not account.local_only:
        return None
    outside = ctx.rcpt.not_local()
    if outside is None:
        return None
    return reject("local_domains_only", CHECK, account.where, f"{outside} is not local")
