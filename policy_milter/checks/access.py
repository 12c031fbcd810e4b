"""The admin's ordered rule lists (access: black and white entries; filters) as checks."""

from __future__ import annotations

from collections.abc import Callable

from ..decision import Action, Decision
from ..rules.rulelist import RuleIndex
from ..stages import Stage
from .base import Context, NotChecked


def walk(index: RuleIndex) -> Callable[[Context], Decision | None]:
    """The check that answers with the first matching rule of one stage's rules.  When a
    rule before it (or any rule, when none matched) needed content the scan could not
    see, the answer cannot be trusted: the message is not fully checked."""
    def run(ctx: Context) -> Decision | None:
        number = index.first_number(ctx.rule_values())
        needed = index.content_before[number]
        if needed and ctx.facts is not None:
            cause = ctx.facts.not_checked(needed)
            if cause:
                raise NotChecked(cause)
        return index.rules[number].decision if number < len(index.rules) else None
    return run


def needs(index: RuleIndex, stage: Stage) -> frozenset[str]:
    """What these rules need from the MTA: the header fields or the whole message for
    content conditions, and the actions their answers use."""
    fields = {c.field for rule in index.rules for c in rule.conditions}
    wanted = set()
    if fields & {"body", "attachment", "mime_type", "archive"}:
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
