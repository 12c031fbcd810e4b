"""Ordered rule lists (the access list and the filters): conditions, then an action.

    client 192.0.2.0/24                      reject
    sender @partner.example  client 198.51.100.0/24   permit skip=access
    recipient abuse@example.com              monitor deny

A rule without a ``recipient`` condition is walked once per transaction at MAIL FROM;
one with it, once per recipient at RCPT TO; one with a content condition (which cannot
also have a recipient condition) once at the end of the message.  In each walk the first
matching rule wins, and a white entry (``permit``) can skip only checks still ahead.
Rules are indexed by one hashable condition each, so a list of ten thousand entries
costs a few probes, not ten thousand comparisons.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import catalogue
from ..catalogue import Entry, Kind
from ..content import (
    KINDS,
    ArchivePatterns,
    AttachmentPatterns,
    BodyPatterns,
    ContentPatterns,
    HeaderPatterns,
    MimeTypePatterns,
)
from ..decision import Action, Decision
from ..patterns import AddressPatterns, DomainPatterns, NetworkPatterns, PatternError, PatternSet
from ..stages import Stage
from .source import Errors, Line, did_you_mean, parse_bool, read_lines, unknown_entry

FIELDS: dict[str, Callable[[], PatternSet[None] | ContentPatterns[None]]] = {
    "client": NetworkPatterns,
    "client_name": DomainPatterns,
    "helo": DomainPatterns,
    "sender": AddressPatterns,
    "recipient": AddressPatterns,
    "listener": PatternSet,
    "header": HeaderPatterns,
    "body": BodyPatterns,
    "attachment": AttachmentPatterns,
    "mime_type": MimeTypePatterns,
    "archive": ArchivePatterns,
}
# Conditions on the message itself: their rules are decided at end of message, and a
# bare `reject` there is the content filter's reply.
CONTENT_FIELDS = frozenset(KINDS)  # what the content pass looks at, and can miss
_WHOLE_VALUE = frozenset({"header", "body"})  # a regex may hold commas
_HEADER_NAME = re.compile(r"[!-9;-~]+")
CONDITIONS = (*FIELDS, "authenticated")
ACTIONS = ("permit", "reject", "tempfail", "deny", "discard", "quarantine", "add_header")
# What a white entry skips when it names nothing: the black lists, local and DNS, and
# greylisting.
DEFAULT_PERMIT_SKIP = frozenset({"access", "dnsbl", "greylist"})


@dataclass(frozen=True)
class Condition:
    field: str
    texts: tuple[str, ...]
    patterns: PatternSet[None] | ContentPatterns[None] | None  # None for 'authenticated'
    wanted: bool = True  # for 'authenticated yes|no'

    def matches(self, values: Mapping[str, object]) -> bool:
        value = values.get(self.field)
        if self.patterns is None:
            return bool(value) == self.wanted
        return value is not None and any(True for _ in self.patterns.find(value))  # type: ignore[arg-type]


@dataclass(frozen=True)
class Rule:
    where: str
    conditions: tuple[Condition, ...]
    decision: Decision

    @property
    def stage(self) -> Stage:
        return stage_of(self.conditions)

    def matches(self, values: Mapping[str, object]) -> bool:
        return all(c.matches(values) for c in self.conditions)


def stage_of(conditions: tuple[Condition, ...] | list[Condition]) -> Stage:
    """End of message for content conditions, else RCPT for recipients, else MAIL."""
    fields = {c.field for c in conditions}
    if fields & CONTENT_FIELDS:
        return Stage.EOM
    return Stage.RCPT if "recipient" in fields else Stage.MAIL


class RuleIndex:
    """One stage's rules, found by hash probes on each rule's most selective condition."""

    def __init__(self, rules: list[Rule]) -> None:
        self.rules = rules
        # Content kinds the rules before each position read: if the first rule that
        # matches comes after one that needed content the scan did not see, the walk
        # cannot be trusted.
        self.content_before: list[frozenset[str]] = [frozenset()]
        for rule in rules:
            fields = {c.field for c in rule.conditions} & CONTENT_FIELDS
            self.content_before.append(self.content_before[-1] | fields)
        self._scan: list[int] = []
        self._by_field: dict[str, PatternSet[int]] = {}
        for number, rule in enumerate(rules):
            key = next((c for c in rule.conditions
                        if c.patterns is not None and c.patterns.hashable()), None)
            if key is None:
                self._scan.append(number)
                continue
            index = self._by_field.setdefault(key.field, FIELDS[key.field]())  # type: ignore[arg-type]
            for text in key.texts:
                index.add(text, number)

    def first(self, values: Mapping[str, object]) -> Rule | None:
        """The first rule, in file order, whose conditions all match."""
        number = self.first_number(values)
        return self.rules[number] if number < len(self.rules) else None

    def first_number(self, values: Mapping[str, object]) -> int:
        """The position of the first matching rule; ``len(rules)`` when none matches."""
        candidates = set(self._scan)
        for field, index in self._by_field.items():
            value = values.get(field)
            if value is not None:
                candidates.update(index.find(value))  # type: ignore[arg-type]
        for number in sorted(candidates):
            if self.rules[number].matches(values):
                return number
        return len(self.rules)

    def __bool__(self) -> bool:
        return bool(self.rules)


@dataclass(frozen=True)
class RuleList:
    """A loaded rule file: ``name`` is the check name it reports (access, filters)."""

    name: str
    mail: RuleIndex
    rcpt: RuleIndex
    eom: RuleIndex

    def stages(self) -> tuple[tuple[Stage, RuleIndex], ...]:
        return ((Stage.MAIL, self.mail), (Stage.RCPT, self.rcpt), (Stage.EOM, self.eom))

    def index(self, stage: Stage) -> RuleIndex | None:
        return next((index for s, index in self.stages() if s is stage), None)


def _rest(line: Line, verb: str) -> str:
    """The text after the action word, as written (words() would fold its commas)."""
    return re.split(rf"\s{verb}(?:\s+|$)", f" {line.text}", maxsplit=1)[-1].strip()


_WHEN = {Stage.MAIL: "MAIL FROM", Stage.RCPT: "RCPT TO", Stage.EOM: "the end of the message"}


def _too_late(names: list[str], stage: Stage, ahead: frozenset[str]) -> str:
    """Why a white entry cannot skip ``names``, and what to write instead."""
    hint = {Stage.RCPT: "to skip them, put the permit in a rule without a recipient "
                        "condition (decided at MAIL FROM)",
            Stage.EOM: "to skip them, put the permit in a rule without content conditions"}
    return (f"this permit is decided at {_WHEN[stage]}, after {', '.join(names)} already ran; "
            f"it can still skip: all, {', '.join(sorted(ahead)) or 'nothing'} "
            f"({hint.get(stage, 'they come earlier')})")


class RuleListParser:
    """Parses one rule file; ``default_reject`` is what a bare ``reject`` sends."""

    def __init__(self, name: str, default_reject: str, skippable: frozenset[str],
                 skippable_after: Callable[[Stage, str], frozenset[str]],
                 errors: Errors) -> None:
        self.name = name
        self.default_reject = catalogue.get(default_reject)
        self.skippable = skippable  # what any white entry may name
        self.skippable_after = skippable_after  # what is still ahead of one at a stage
        self.errors = errors

    def parse(self, lines: list[Line], base: Path) -> RuleList:
        rules = [r for line in lines if (r := self._rule(line, base)) is not None]
        by_stage = {stage: RuleIndex([r for r in rules if r.stage is stage])
                    for stage in (Stage.MAIL, Stage.RCPT, Stage.EOM)}
        return RuleList(self.name, by_stage[Stage.MAIL], by_stage[Stage.RCPT],
                        by_stage[Stage.EOM])

    def _rule(self, line: Line, base: Path) -> Rule | None:
        words = line.words()
        conditions: list[Condition] = []
        while len(words) >= 2 and words[0] in CONDITIONS:
            field, value, words = words[0], words[1], words[2:]
            condition = self._condition(field, value, line, base)
            if condition is None:
                return None
            conditions.append(condition)
        if not conditions:
            self.errors.add(line.where, f"a rule starts with a condition "
                            f"({', '.join(CONDITIONS)}); got '{words[0]}'"
                            f"{did_you_mean(words[0], CONDITIONS)}")
            return None
        fields = {c.field for c in conditions}
        if "recipient" in fields and fields & CONTENT_FIELDS:
            self.errors.add(line.where, "a recipient condition cannot be combined with "
                            f"{', '.join(sorted(fields & CONTENT_FIELDS))}: content rules are "
                            "decided at the end of the message, once for all its recipients. "
                            "Write the content rule without the recipient, and give the "
                            "recipient a rule of its own (decided at RCPT TO)")
            return None
        monitor = bool(words) and words[0] == "monitor"
        words = words[1:] if monitor else words
        if not words:
            self.errors.add(line.where, "the rule has no action")
            return None
        decision = self._action(words, line, stage_of(conditions), monitor)
        return None if decision is None else Rule(line.where, tuple(conditions), decision)

    def _condition(self, field: str, value: str, line: Line, base: Path) -> Condition | None:
        if field == "authenticated":
            try:
                return Condition(field, (value,), None, parse_bool(value))
            except ValueError as err:
                self.errors.add(line.where, f"authenticated: {err}")
                return None
        texts = [(value, line.where)] if field in _WHOLE_VALUE else self._texts(value, line, base)
        patterns = FIELDS[field]()
        ok = True
        for text, where in texts:
            try:
                patterns.add(text, None)
            except PatternError as err:
                # A file: list may be any file; its lines are never repeated in an error.
                said = str(err) if where == line.where else f"this line is not a {field} " \
                    "pattern (not shown: file: lists are never echoed)"
                self.errors.add(where, f"{field}: {said}")
                ok = False
        return Condition(field, tuple(t for t, _ in texts), patterns) if ok else None

    def _texts(self, value: str, line: Line, base: Path) -> list[tuple[str, str]]:
        """Patterns of a condition: a comma list, or ``file:NAME`` with one per line."""
        if not value.startswith("file:"):
            return [(v, line.where) for v in value.split(",") if v]
        name = value[len("file:"):]
        path = base / name
        label = str(Path(line.path).parent / name)
        return [(w, entry.where) for entry in read_lines(path, label, self.errors, line.where)
                for w in entry.words()]

    def _action(self, words: list[str], line: Line, stage: Stage,
                monitor: bool) -> Decision | None:
        verb, args = words[0].lower(), words[1:]

        def decide(action: Action, **payload: Any) -> Decision:
            return Decision(action, rule=line.where, check=self.name, monitor=monitor,
                            **payload)

        if verb == "permit":
            return self._permit(args, line, stage, decide)
        if verb in ("reject", "tempfail"):
            if len(args) > 1:
                self.errors.add(line.where, f"{verb} takes at most one catalogue entry name")
                return None
            default = catalogue.get("state_tempfail") if verb == "tempfail" else (
                catalogue.get("content_rejected") if stage is Stage.EOM else self.default_reject)
            entry = self._entry(args[0] if args else default.name, verb, stage, line)
            return decide(Action(verb), entry=entry) if entry else None
        if verb in ("deny", "discard") and not args:
            name = "permission_denied" if verb == "deny" else "deleted_by_filter"
            action = Action.REJECT if verb == "deny" else Action.DISCARD
            return decide(action, entry=catalogue.get(name))
        if verb == "quarantine":
            return decide(Action.QUARANTINE, reason=_rest(line, verb) or line.where)
        if verb == "add_header":
            return self._add_header(_rest(line, verb), line, decide)
        self.errors.add(line.where, f"unknown action '{' '.join(words)}' (expected "
                        f"{', '.join(ACTIONS[:-1])} or {ACTIONS[-1]})"
                        f"{did_you_mean(verb, (*ACTIONS, 'monitor', *CONDITIONS))}")
        return None

    def _permit(self, args: list[str], line: Line, stage: Stage,
                decide: Callable[..., Decision]) -> Decision | None:
        """``skip=`` names checks still ahead of the rule's stage; ``all`` means all of
        them, and no ``skip=`` the black lists among them."""
        ahead = self.skippable_after(stage, self.name)
        skip: set[str] = set(DEFAULT_PERMIT_SKIP & ahead)
        for arg in args:
            name, eq, value = arg.partition("=")
            if name != "skip" or not eq:
                self.errors.add(line.where, f"permit takes skip=CHECK,...; got '{arg}'")
                return None
            skip = set(value.split(","))
            unknown = skip - self.skippable - {"all"}
            if unknown:
                self.errors.add(line.where, f"permit cannot skip {', '.join(sorted(unknown))} "
                                f"(skippable: all, {', '.join(sorted(self.skippable))})")
                return None
            behind = skip - ahead - {"all"}
            if behind:
                self.errors.add(line.where, _too_late(sorted(behind), stage, ahead))
                return None
        if "all" in skip:
            skip = set(ahead)
        return decide(Action.PERMIT, skip=frozenset(skip))

    def _add_header(self, text: str, line: Line,
                    decide: Callable[..., Decision]) -> Decision | None:
        name, colon, value = text.partition(":")
        if not colon or not _HEADER_NAME.fullmatch(name.strip()) or not value.strip():
            self.errors.add(line.where, "add_header takes 'Name: value'")
            return None
        return decide(Action.ADD_HEADER, headers=((name.strip(), value.strip()),))

    def _entry(self, name: str, verb: str, stage: Stage, line: Line) -> Entry | None:
        try:
            entry = catalogue.get(name)
        except catalogue.UnknownEntry:
            self.errors.add(line.where, unknown_entry(name))
            return None
        if entry.kind is not Kind.REPLY:
            self.errors.add(line.where, f"'{name}' is not a reply the milter can send")
        elif entry.temporary != (verb == "tempfail"):
            kind = "a 4xx" if verb == "tempfail" else "a 5xx"
            self.errors.add(line.where, f"{verb} needs {kind} entry; '{name}' is "
                            f"{entry.code}")
        elif stage not in entry.stages:
            self.errors.add(line.where, f"'{name}' cannot be sent at {stage.value.upper()} "
                            "(where this rule is decided)")
        else:
            return entry
        return None
