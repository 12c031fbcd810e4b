"""Who may receive here: accounts, aliases, mailing lists, backup-MX recipient lists.

Rows 21, 22, 23, 24 and 19c (members-only lists).  Only domains in the domains table
are judged; mail for other domains is the relay check's business.
"""

from __future__ import annotations

from ..decision import Decision
from ..patterns import contains
from ..rules.tables import DomainKind, MailingList
from .base import Context, base_address, reject

CHECK = "recipients"


def known(ctx: Context) -> Decision | None:
    rcpt = ctx.rcpt
    assert rcpt is not None
    tables = ctx.policy.tables
    domain = tables.domain(rcpt.domain)
    if domain is None or rcpt.route_domains:
        return None
    key = base_address(rcpt, ctx.policy.recipient_delimiter).key
    if domain.kind is DomainKind.RELAY:
        if rcpt.domain in tables.relay_domains_listed and key not in tables.relay_recipients \
                and rcpt.domain not in tables.relay_catchall:
            return reject("unknown_user_relay", CHECK, ctx.policy.where["relay_recipients"], key)
        return None
    if domain.kind not in (DomainKind.LOCAL, DomainKind.LIST):
        return None
    mailing_list = tables.lists.get(key)
    if mailing_list is not None:
        return _members_only(ctx, mailing_list)
    if domain.kind is DomainKind.LIST or contains(ctx.policy.list_patterns, rcpt):
        return reject("no_such_list", CHECK, domain.where, key)
    account = tables.accounts.get(key)
    if account is not None:
        return reject("user_not_local", CHECK, account.where, key) if account.moved else None
    if key in tables.aliases or rcpt.domain in tables.catchall:
        return None
    return reject("unknown_user_local", CHECK, domain.where, key)


def _members_only(ctx: Context, mailing_list: MailingList) -> Decision | None:
    """Row 19c: a members-only list refuses senders who are not members."""
    if mailing_list.members_only and ctx.sender.key not in mailing_list.members:
        return reject("access_denied", CHECK, mailing_list.where,
                      f"{ctx.sender.key or '<>'} is not a member of {mailing_list.address}")
    return None
