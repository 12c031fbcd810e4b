"""Protocol and syntax sanity: HELO, the MAIL/RCPT arguments, command order, unknown commands.

Rows 1, 2, 3, 4, 5, 9, 10, 12, 13.  The argument parsers answer with the row for the
kind of fault; the stage checks see a session whose arguments already parsed.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from ..addresses import (
    Address,
    AddressError,
    check_balanced,
    declared_size,
    parse_esmtp_params,
    parse_path,
    valid_helo,
)
from ..decision import Decision
from .base import Context, reject

CHECK = "protocol"
_ENTRY_FOR = {"unbalanced": "unbalanced", "syntax": "syntax_error", "no_domain": "domain_required"}


# The paths of the session traffic, kept (an Address never changes): the same recipients
# come back session after session.  Refusals are not kept; they raise.  Table keys at load
# time are parsed uncached, so a reload does not push the traffic's out.
_kept_path = functools.lru_cache(maxsize=4096)(parse_path)


def parse_command(arg: str, params: Sequence[str], *, mail: bool
                  ) -> tuple[Address, dict[str, str | None], int | None] | Decision:
    """Parse a MAIL or RCPT argument and its ESMTP parameters, or say which row refuses it."""
    try:
        address = _kept_path(arg, null_ok=mail)
        parsed = parse_esmtp_params(params)
        return address, parsed, declared_size(parsed)
    except AddressError as err:
        return reject(_ENTRY_FOR[err.kind], CHECK, "builtin:syntax", str(err))


def helo(ctx: Context) -> Decision | None:
    """Rows 13, 3, 5: a repeated greeting, unbalanced brackets, not a domain or literal."""
    settings, where, conn = ctx.settings, ctx.policy.where, ctx.conn
    name = conn.helo or ""
    if conn.helo_count > 1 and settings.reject_repeated_helo:
        return reject("helo_already_specified", CHECK, where["reject_repeated_helo"])
    if not settings.check_helo_syntax or conn.relay_client:
        return None
    if not check_balanced(name):
        return reject("unbalanced", CHECK, where["check_helo_syntax"], f"helo {name!r}")
    if not valid_helo(name):
        return reject("helo_requires_domain", CHECK, where["check_helo_syntax"],
                      f"helo {name!r}")
    return None


def helo_required(ctx: Context) -> Decision | None:
    """Row 12: MAIL FROM without a greeting, when the policy demands one."""
    if ctx.conn.helo is None:
        return reject("helo_required", CHECK, ctx.policy.where["require_helo"])
    return None


def has_recipients(ctx: Context) -> Decision | None:
    """Row 10: DATA or end of message with no accepted recipient."""
    if ctx.txn is None or not ctx.txn.recipients:
        return reject("bad_sequence", CHECK, "builtin:sequence", "no accepted recipient")
    return None


def unknown(ctx: Context) -> Decision:
    """Rows 9 and 1: a disallowed operation, or any other command the MTA did not know."""
    command = ctx.command
    word = command.split(None, 1)[0].upper() if command.strip() else ""
    if word in ctx.settings.disallowed_commands:
        return reject("operation_not_supported", CHECK, ctx.policy.where["disallowed_commands"],
                      f"command {word}")
    return reject("command_unrecognized", CHECK, "builtin:unknown", f"command {word[:20]!r}")
