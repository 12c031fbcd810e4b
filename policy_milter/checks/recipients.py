"""Who may receive here: accounts, aliases, mailing lists, backup-MX recipient lists.

Rows 21, 22, 23, 24 and 19c (members-only lists).  Only domains in the domains table
are judged; mail for other domains is the relay check's business.  Everything is read
from the resolved recipient: ``user+tag@domain`` is judged as the mailbox ``user@domain``.
"""

from __future__ import annotations

from ..decision import Decision
from ..envelope import Role
from ..patterns import contains
from ..rules.tables import MailingList
from .base import Context, reject

CHECK = "recipients"


def known(ctx: Context) -> Decision | None:
    rcpt = ctx.rcpt
    assert rcpt is not None
    role = rcpt.role
    if role is Role.NONE or role is Role.REMOTE or rcpt.routes:
        return None
    domain = rcpt.domain
    assert domain is not None
    if role is Role.RELAY:
        if not rcpt.relay_listed:
            return reject("unknown_user_relay", CHECK, ctx.policy.where["relay_recipients"],
                          rcpt.mailbox)
        return None
    if rcpt.mailing_list is not None:
        return _members_only(ctx, rcpt.mailing_list)
    if role is Role.LIST or contains(ctx.settings.list_patterns, rcpt.address):
        return reject("no_such_list", CHECK, domain.where, rcpt.mailbox)
    if rcpt.account is not None:
        return reject("user_not_local", CHECK, rcpt.account.where, rcpt.mailbox) \
            if rcpt.account.moved else None
    if rcpt.alias is not None or rcpt.catchall:
        return None
    return reject("unknown_user_local", CHECK, domain.where, rcpt.mailbox)


def _members_only(ctx: Context, mailing_list: MailingList) -> Decision | None:
    """Row 19c: a members-only list refuses senders who are not members (a member's
    ``+tag`` address is still the member)."""
    sender = ctx.sender
    if mailing_list.members_only and not any(k in mailing_list.members for k in sender.keys):
        return reject("access_denied", CHECK, mailing_list.where,
                      f"{sender.mailbox or '<>'} is not a member of {mailing_list.address}")
    return None
