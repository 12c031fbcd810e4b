"""The report as named tables: the one view text, JSON and HTML all render.

Each table has a key (the first word of its text lines, so ``grep '^rule '`` finds the
rules, and its name in the JSON), a title, column names and rows, most frequent first
(ties by name, so two runs print the same).  A reply's catalogue entry is the one its
decision names (``entry=``, in newer logs), else the one whose reply line it is: the
catalogue says, no reply text is spelt here.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Hashable
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from ..catalogue import ENTRIES, Entry, Kind, by_reply
from .summary import OUTCOMES, Summary

K = TypeVar("K", bound=Hashable)
Cell = str | int


@dataclass(frozen=True)
class Section:
    key: str
    title: str
    columns: tuple[str, ...]
    rows: list[tuple[Cell, ...]]
    more: int = 0  # rows left out by --top


def ranked(counter: Counter[K]) -> list[tuple[K, int]]:
    return sorted(counter.items(), key=lambda item: (-item[1], str(item[0])))


def _hour(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H")


def _stamp(when: datetime | None) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ") if when else "-"


def _answer(entry: Entry) -> str:
    """What an entry told the client: reject, tempfail, or (an outcome) discard."""
    if entry.kind is Kind.OUTCOME:
        return "discard"
    return "tempfail" if entry.temporary else "reject"


def _entry_row(name: str, reply: str, count: int) -> tuple[Cell, ...]:
    """The entry a decision named, else the one its reply line is; ``?`` for a reply the
    catalogue no longer has (an older log)."""
    entry = ENTRIES.get(name) or by_reply(reply)
    return (entry.name, _answer(entry), count, reply) if entry else (
        name or "?", "?", count, reply)


def outcomes(summary: Summary) -> list[str]:
    """The outcomes present, in chart order (one the code does not know, last)."""
    return [o for o in OUTCOMES if summary.outcomes[o]] + sorted(
        set(summary.outcomes) - set(OUTCOMES))


def heading(summary: Summary) -> list[tuple[str, str]]:
    """What the report covers: the period asked for and seen, and the rules."""
    bounds = [f"{word} {_stamp(when)}" for word, when in (
        ("since", summary.since), ("until", summary.until)) if when is not None]
    lines = [("period", ", ".join(bounds) or "the whole log"),
             ("seen", f"{_stamp(summary.first)} .. {_stamp(summary.last)}"),
             ("records", str(summary.records))]
    hashes = ", ".join(f"{h or '-'} ({n} decisions)" for h, n in ranked(summary.hashes))
    lines.append(("hashes", hashes or "-"))
    if summary.rules_dir:
        lines.append(("rules", f"{summary.rules_dir} (hash {summary.rules_hash})"))
        if summary.hashes and summary.rules_hash not in summary.hashes:
            lines.append(("note", (f"the log's rules are not those of {summary.rules_dir}, "
                                   "whose lines may have moved")))
    return lines


def sections(summary: Summary, top: int) -> list[Section]:
    def table(key: str, title: str, columns: tuple[str, ...],
              counter: Counter[K], limit: int = 0) -> Section:
        rows = ranked(counter)
        kept = rows[:limit] if limit > 0 else rows
        return Section(key, title, columns,
                       [(*(k if isinstance(k, tuple) else (k,)), n) for k, n in kept],
                       len(rows) - len(kept))

    s = summary
    found = outcomes(s)
    hours = sorted({when for when, _ in s.hours})
    result = [
        table("event", "Log records by event", ("event", "count"), s.events),
        Section("outcome", "Transactions by outcome (event=envelope)", ("outcome", "count"),
                [(o, s.outcomes[o]) for o in found]),
        table("action", "Decisions by action (monitor-mode decisions apart)",
              ("action", "count"), s.actions),
        Section("entry", "Replies by catalogue entry", ("entry", "answer", "count", "reply"),
                [_entry_row(name, reply, n) for (name, reply), n in ranked(s.replies)]),
        table("check", "Decisions by check", ("check", "action", "count"), s.checks),
        table("rule", "Decisions by rule", ("rule", "action", "count"), s.rules, top),
        table("monitor", "Monitor-mode rules: what they would have done",
              ("rule", "would", "count"), s.monitor),
    ]
    if s.rules_dir:
        result.append(Section("unmatched", f"Rules of {s.rules_dir} that never matched",
                              ("rule",), [(where,) for where in s.unmatched]))
    result += [
        table("client", "Top refused clients (reject, tempfail)", ("client", "count"),
              s.clients, top),
        table("helo", "Top refused HELO names", ("helo", "count"), s.helos, top),
        table("sender", "Top refused senders", ("sender", "count"), s.senders, top),
        table("recipient", "Top refused recipients", ("recipient", "count"), s.recipients,
              top),
        table("failure", "Dependency failures (DNS, scanners, stores)",
              ("event", "check", "service", "count"), s.failures),
        Section("hour", "Transactions per hour (UTC)", ("hour", "total", *found),
                [(_hour(h), sum(s.hours[h, o] for o in found),
                  *(s.hours[h, o] for o in found)) for h in hours]),
    ]
    return result


def as_json(summary: Summary, top: int) -> str:
    """The same tables as JSON: each a list of objects keyed by column name."""
    doc: dict[str, object] = {label: value for label, value in heading(summary)}
    for section in sections(summary, top):
        doc[section.key] = {"title": section.title, "more": section.more,
                            "rows": [dict(zip(section.columns, row, strict=True))
                                     for row in section.rows]}
    return json.dumps(doc, indent=1)  # ASCII: an undecodable byte stays a \udcXX escape
