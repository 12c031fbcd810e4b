"""Row 27: a virus found by clamd; what to do with it is the admin's choice.

A scan that could not look at everything (a message over ``clamd_max_size``, clamd's
own limit notices) is neither clean nor infected: it raises NotChecked and the engine
applies ``unscannable_action``.  A scan that failed (clamd down, a timeout, a garbled
answer) raises DependencyError and ``virus_failure_action`` applies.  Neither is ever
taken for clean, and a limit notice is never called a virus.
"""

from __future__ import annotations

from .. import catalogue
from ..decision import Action, Decision
from .base import Context, NotChecked

CHECK = "virus"


def check(ctx: Context) -> Decision | None:
    assert ctx.txn is not None and ctx.txn.message is not None and ctx.virus is not None
    result = ctx.virus.scan(ctx.txn.message.open())
    if not result.infected:
        if result.not_checked:
            raise NotChecked(result.not_checked)
        return None
    found = ", ".join(result.names)
    where = ctx.policy.where["virus_action"]
    action = ctx.settings.virus_action
    if action == "discard":
        return Decision(Action.DISCARD, catalogue.get("deleted_by_filter"), rule=where,
                        check=CHECK, detail=f"virus {found}")
    if action == "quarantine":
        return Decision(Action.QUARANTINE, rule=where, check=CHECK, reason=f"virus {found}",
                        detail=f"virus {found}")
    return Decision(Action.REJECT, catalogue.get("virus_found"), rule=where, check=CHECK,
                    detail=f"virus {found}")
