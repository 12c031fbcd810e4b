"""The admin's ordered rule lists (access: black and white entries; filters) as checks."""

from __future__ import annotations

from collections.abc import Callable

from ..decision import Action, Decision
from ..rules.rulelist import RuleIndex
from ..stages import Stage
from .base import Context


def walk(index: RuleIndex) -> Callable[[Context], Decision | None]:
    """The check that answers with the first matching rule of one stage's rules."""
    def run(ctx: Context) -> Decision | None:
        rule = index.first(ctx.rule_values())
        return rule.decision if rule else None
    return run


def needs(index: RuleIndex, stage: Stage) -> frozenset[str]:
    """What these rules need from the MTA: the header fields or the whole message for
    content conditions, and the actions their answers use."""
    fields = {c.field for rule in index.rules for c in rule.conditions}
    wanted = set()
    if fields & {"body", "attachment", "mime_type"}:
        wanted.add("message")
    elif "header" in fields:
        wanted.add("headers")
    for rule in index.rules:
        action = rule.decision.action
        if action is Action.ADD_HEADER:
            wanted.add("addheader")
        elif action is Action.QUARANTINE:
            wanted.add("quarantine")
        elif action is Action.DISCARD and stage is Stage.RCPT:
            wanted.add("delrcpt")
    return frozenset(wanted)
