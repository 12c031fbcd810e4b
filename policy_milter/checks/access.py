"""The admin's ordered rule lists (access: black and white entries; filters) as checks."""

from __future__ import annotations

from ..decision import Decision
from ..rules.rulelist import RuleIndex, RuleList
from .base import Check, Context


def _walk(index: RuleIndex):  # type: ignore[no-untyped-def]
    def run(ctx: Context) -> Decision | None:
        rule = index.first(ctx.rule_values())
        return rule.decision if rule else None
    return run


def checks(rule_list: RuleList) -> list[Check]:
    """One check per stage that has rules; empty stages cost nothing."""
    return [Check(rule_list.name, stage, _walk(index)) for stage, index in rule_list.stages()
            if index]
