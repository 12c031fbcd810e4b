"""Played sessions and replays as the admin reads them (text) or a script does (JSON)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict

from ..log import quote
from .play import Played
from .replay import EXAMPLES, KINDS, Summary

_WIDTH = 14  # of the check column


def text(played: Played, heading: list[str]) -> str:
    """Stage by stage: the answer, its time, then each check that ran and what it said;
    the rule that decided and the exact reply under the check that gave it."""
    lines = [*heading, ""]
    for run in played.stages:
        subject = quote(run.subject) if run.subject and run.stage != "eom" else run.subject
        lines.append(f"{run.stage:<8} {subject:<44} {run.answer:<9} {run.ms:>8.3f} ms")
        for step in run.steps:
            flag = " (monitor: not applied)" if step.monitor else ""
            lines.append(f"  {step.check:<{_WIDTH}} {step.answer}{flag}"
                         + (f"  {step.rule}" if step.rule else "")
                         + (f"  {step.ms:.3f} ms" if step.answer != "skipped" else ""))
            if step.reply:
                lines.append(f"  {'':<{_WIDTH}} {step.reply}  [{step.entry}]")
            if step.detail and step.answer != "continue":
                lines.append(f"  {'':<{_WIDTH}} {quote(step.detail)}")
        if not run.steps and run.reply:  # over the wire: the reply is all there is
            lines.append(f"  {run.reply}" + (f"  [{run.entry}]" if run.entry else ""))
    lines += ["", f"outcome: {played.outcome} (exit status {played.exit_code})"]
    lines += [f"  {change}" for change in played.changes]
    if played.notes:
        lines += ["notes:", *(f"  {note}" for note in played.notes)]
    if played.log:
        lines += ["log:", *(f"  {line}" for line in played.log)]
    return "\n".join(lines)


def as_json(played: Played, **context: object) -> str:
    return json.dumps({**context, "outcome": played.outcome, "exit_status": played.exit_code,
                       "stages": [asdict(run) for run in played.stages],
                       "changes": played.changes, "notes": played.notes, "log": played.log},
                      indent=2)


def replay_text(summary: Summary, heading: list[str], notes: list[str]) -> str:
    """What would change, by kind, by the rule that decides now, with examples; then what
    was not compared and why."""
    s = summary
    counts = Counter(change.kind for change in s.changes)
    lines = [*heading,
             f"replayed {s.envelopes} transactions: {s.answers} answers (one per recipient; "
             "a transaction refused at HELO or MAIL counts once)",
             "logged under rules " + ", ".join(f"{h or '-'} ({n})" for h, n in s.hashes.items()),
             f"unchanged {s.unchanged}, " + ", ".join(f"{kind} {counts[kind]}" for kind in KINDS)]
    for kind in KINDS:
        if not counts[kind]:
            continue
        lines += ["", f"{kind}: {counts[kind]}"]
        for rule, changes in summary.groups(kind):
            first = changes[0]
            decided = first.before if kind == "newly accepted" else first.now
            lines.append(f"  {len(changes):>6}  {rule}  {decided.answer} at {decided.stage}"
                         + (f"  {decided.reply}" if decided.reply else ""))
            for change in changes[:EXAMPLES]:
                target = quote(change.rcpt) if change.rcpt else "(no recipient sent)"
                sender = quote(change.sender) if change.sender else "(no MAIL)"
                lines.append(f"          {change.qid or '-'} {change.client} "
                             f"{sender} -> {target}  "
                             f"(was {change.before.answer}, now {change.now.answer})  "
                             f"{change.source}")
    lines += ["", "not compared:",
              f"  end of message: {s.reached_eom} transactions reached it; its checks (size, "
              "content rules, virus, spam, challenge) read the message, which the log does "
              "not keep"]
    lines += [f"  {note}" for note in notes]
    if s.omitted_rcpts:
        lines.append(f"  {s.omitted_rcpts} recipients left out of their log lines (too many)")
    lines += [f"  unreadable: {line}" for line in s.unreadable]
    return "\n".join(lines)


def replay_json(summary: Summary, notes: list[str], **context: object) -> str:
    s = summary
    return json.dumps({
        **context, "transactions": s.envelopes, "answers": s.answers, "unchanged": s.unchanged,
        "changes": {kind: [{"rule": rule, "count": len(changes),
                            "examples": [asdict(c) for c in changes[:EXAMPLES]]}
                           for rule, changes in s.groups(kind)] for kind in KINDS},
        "logged_rules": dict(s.hashes), "reached_eom": s.reached_eom,
        "omitted_rcpts": s.omitted_rcpts, "unreadable": s.unreadable, "notes": notes},
        indent=2)
