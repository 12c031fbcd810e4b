"""Row 27: a virus found by clamd; what to do with it is the admin's choice.

A scan that cannot say "clean" (clamd down, a timeout, a garbled answer, a message
over clamd's stream limit, or clamd's own "limits exceeded" notice) is never taken
for clean: it raises DependencyError and ``virus_failure_action`` applies.
"""

from __future__ import annotations

from .. import catalogue
from ..decision import Action, Decision
from ..services.errors import DependencyError
from .base import Context

CHECK = "virus"


def check(ctx: Context) -> Decision | None:
    assert ctx.txn is not None and ctx.txn.message is not None and ctx.virus is not None
    result = ctx.virus.scan(ctx.txn.message.open())
    if result.limits_exceeded:
        raise DependencyError("clamd", f"scan limits exceeded ({', '.join(result.names)})",
                              entry="scanner_tempfail")
    if not result.infected:
        return None
    found = ", ".join(result.names)
    where = ctx.policy.where["virus_action"]
    action = ctx.policy.virus_action
    if action == "discard":
        return Decision(Action.DISCARD, catalogue.get("deleted_by_filter"), rule=where,
                        check=CHECK, detail=f"virus {found}")
    if action == "quarantine":
        return Decision(Action.QUARANTINE, rule=where, check=CHECK, reason=f"virus {found}",
                        detail=f"virus {found}")
    return Decision(Action.REJECT, catalogue.get("virus_found"), rule=where, check=CHECK,
                    detail=f"virus {found}")
