"""``policy-milter replay``: the envelopes of past traffic (``event=envelope`` lines)
played against other rules, and what would change.

Answers are compared one per recipient; a transaction refused or discarded at HELO or
MAIL, whose recipients the client never sent, counts once.  Only the envelope is
replayed: the message is not in the log, so end-of-message checks are not compared; past
DNS answers are not either (``--dns`` says what stands in for them); rate counters start
at zero.  The output says all of this with its counts.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..engine import Engine
from ..logread import REFUSALS, Record
from .play import Played, Script, StageRun, play

EARLY = ("helo", "mail")  # the stages whose answer ends the transaction before its RCPTs
KINDS = ("newly refused", "newly accepted", "changed")
EXAMPLES = 3  # per group


@dataclass(frozen=True)
class Answer:
    """What one recipient (or a whole transaction) was told, and by which rule."""

    answer: str  # accept, reject, tempfail, discard
    rule: str
    stage: str
    reply: str = ""


@dataclass(frozen=True)
class Change:
    """One answer that differs between the log and the candidate rules."""

    kind: str  # 'newly refused', 'newly accepted', 'changed'
    before: Answer
    now: Answer
    qid: str
    client: str
    sender: str
    rcpt: str  # '' for a transaction refused before its recipients
    source: str  # where the envelope line is: 'FILE:LINE'


@dataclass
class Summary:
    envelopes: int = 0
    answers: int = 0
    unchanged: int = 0
    changes: list[Change] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)  # 'FILE:LINE: why'
    reached_eom: int = 0  # transactions whose end-of-message answer is not compared
    omitted_rcpts: int = 0  # recipients the log line had no room for
    hashes: Counter[str] = field(default_factory=Counter)  # the rules that decided then

    def groups(self, kind: str) -> list[tuple[str, list[Change]]]:
        """Changes of one kind by the rule that now decides (for newly accepted answers:
        the rule that refused them before), largest group first."""
        grouped: dict[str, list[Change]] = defaultdict(list)
        for change in self.changes:
            if change.kind == kind:
                rule = change.before.rule if kind == "newly accepted" else change.now.rule
                grouped[rule or "(no rule)"].append(change)
        return sorted(grouped.items(), key=lambda item: (-len(item[1]), item[0]))


def recipients(record: Record) -> list[list[Any]]:
    """An envelope line's recipients, ``[argument, answer, rule(, params)]`` each;
    ValueError if its ``rcpts`` is not such a list."""
    rcpts = json.loads(record["rcpts"] or "[]")
    if not isinstance(rcpts, list) or not all(isinstance(r, list) and len(r) >= 3
                                              for r in rcpts):
        raise ValueError("rcpts is not a list of [argument, answer, rule]")
    return rcpts


def script(record: Record, rcpts: list[list[Any]] | None = None) -> Script:
    """The session an envelope line describes (``rcpts``: its recipients, if already
    read); ValueError if it is not one."""
    if rcpts is None:
        rcpts = recipients(record)
    mail = record["mail_from"]
    return Script(
        client=record["client"], helo=record["helo"] or None,
        sender=mail or None, rcpts=tuple((str(r[0]), tuple(r[3]) if len(r) > 3 else ())
                                         for r in rcpts),
        client_name=record["client_name"], listener=record["listener"],
        login=record["login"], tls=record["tls"] == "yes",
        params=tuple(record["params"].split()), queue_id=record["qid"] or "REPLAY")


def _before(record: Record, rcpts: list[list[Any]]) -> tuple[Answer | None, list[Answer]]:
    """The logged answers: the transaction's, if it ended before its recipients
    (refused or discarded), and each recipient's."""
    early = record["stage"] in EARLY and (record["result"] in REFUSALS
                                           or record["result"] == "discard")
    whole = Answer(record["result"], record["rule"], record["stage"]) if early else None
    return whole, [Answer(r[1], r[2], "rcpt") for r in rcpts]


def _now(played: Played) -> tuple[Answer | None, list[Answer]]:
    def answer(run: StageRun) -> Answer:
        return Answer(run.answer if run.answer != "continue" else "accept", run.rule,
                      run.stage, run.reply)
    early = next((r for r in played.stages if r.stage in ("connect", *EARLY)
                  and r.answer != "continue"), None)  # refused, or discarded
    return (answer(early) if early else None,
            [answer(r) for r in played.stages if r.stage == "rcpt"])


def _kind(before: Answer, now: Answer) -> str:
    if before.answer == now.answer:
        return ""
    if (before.answer in REFUSALS) == (now.answer in REFUSALS):
        return "changed"
    return "newly refused" if now.answer in REFUSALS else "newly accepted"


def compare(record: Record, rcpts: list[list[Any]], played: Played,
            summary: Summary) -> None:
    """Count one envelope's answers (``rcpts``: its recipients, as ``recipients`` read
    them), and keep those that changed."""
    before_whole, before_rcpts = _before(record, rcpts)
    now_whole, now_rcpts = _now(played)
    pairs: list[tuple[str, Answer, Answer]] = []
    if before_whole is not None:
        pairs.append(("", before_whole, now_whole or Answer("accept", "", "mail")))
    else:
        for index, before in enumerate(before_rcpts):
            now = now_whole or (now_rcpts[index] if index < len(now_rcpts) else None)
            if now is None:  # the candidate stopped before this recipient
                now = Answer("reject", "", "rcpt")
            pairs.append((str(rcpts[index][0]), before, now))
    for rcpt, before, now in pairs:
        summary.answers += 1
        kind = _kind(before, now)
        if not kind:
            summary.unchanged += 1
            continue
        summary.changes.append(Change(kind, before, now, record["qid"], record["client"],
                                      record["mail_from"], rcpt, record.source))


def replay(engine: Engine, records: Iterable[Record], notes: list[str]) -> Summary:
    summary = Summary()
    for record in records:
        if record.event != "envelope":
            continue
        try:
            rcpts = recipients(record)
            session = script(record, rcpts)
        except (ValueError, TypeError) as err:  # json.JSONDecodeError is a ValueError
            summary.unreadable.append(f"{record.source}: {err}")
            continue
        summary.envelopes += 1
        summary.hashes[record["rules_hash"]] += 1
        summary.omitted_rcpts += int(record["rcpts_omitted"] or 0)
        if record["stage"] == "eom":
            summary.reached_eom += 1
        compare(record, rcpts, play(engine, session, list(notes)), summary)
    return summary

