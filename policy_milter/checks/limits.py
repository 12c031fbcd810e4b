"""Recipient counts: per transaction (row 25) and per period for logged-in accounts (row 17)."""

from __future__ import annotations

from ..decision import Decision
from ..rules.tables import Limits
from ..services.errors import DependencyError
from .base import Context, reject, sender_limit

CHECK = "limits"


def too_many(ctx: Context) -> Decision | None:
    """Row 25: the smallest non-zero of the server, sender-domain and account limits."""
    limit, where = sender_limit(ctx, "max_recipients", "max_recipients")
    assert ctx.txn is not None
    if limit and len(ctx.txn.recipients) >= limit:
        return reject("too_many_recipients", CHECK, where, f"limit {limit}")
    return None


def _rate_owner(ctx: Context) -> tuple[str, Limits, str] | None:
    """Whose period limits apply: the logged-in account's, else its domain's."""
    txn = ctx.txn
    if txn is None or not ctx.conn.authenticated:
        return None
    account, domain = txn.account, txn.account_domain
    if account is not None and (account.limits.limit_messages or account.limits.limit_recipients):
        return f"account:{account.address}", account.limits, account.where
    if domain is not None and (domain.limits.limit_messages or domain.limits.limit_recipients):
        return f"domain:{domain.name}", domain.limits, domain.where
    return None


def account_rate(ctx: Context) -> Decision | None:
    """Row 17: messages or recipients sent in the period are at the account's limit."""
    owner = _rate_owner(ctx)
    if owner is None:
        return None
    key, limits, where = owner
    rates = ctx.state
    assert ctx.txn is not None
    if limits.limit_messages:
        count, window = limits.limit_messages
        if rates.total(f"{key}:messages", window) >= count:
            return reject("account_limits", CHECK, where, f"{key} sent {count} messages")
    if limits.limit_recipients:
        count, window = limits.limit_recipients
        if rates.total(f"{key}:recipients", window) + len(ctx.txn.recipients) >= count:
            return reject("account_limits", CHECK, where, f"{key} reached {count} recipients")
    return None


def record_sent(ctx: Context) -> None:
    """After an accepted message: count it against its sender's period limits.  The
    message passed the check already: a store that fails now loses the count, logged."""
    owner = _rate_owner(ctx)
    if owner is None or ctx.txn is None:
        return
    try:
        ctx.state.record(f"{owner[0]}:messages", 1)
        ctx.state.record(f"{owner[0]}:recipients", len(ctx.txn.recipients))
    except DependencyError as err:
        ctx.log.dependency_failure(CHECK, err.service, ctx.conn, ctx.txn, str(err),
                                   "not counted", owner[2])
