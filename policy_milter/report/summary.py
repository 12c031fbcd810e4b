"""Counting the log: one pass over its records, counters only.

What is counted, and from which lines:

- transactions by outcome: the ``event=envelope`` line each transaction ends with
  (``result``), also per hour;
- decisions by action, check and rule: ``event=decision`` lines; a monitor-mode line
  (``monitor=yes``) is counted apart, as what its rule would have done, since the client
  was never refused;
- replies by catalogue entry: decision lines with a reply (reject, tempfail, discard);
- the clients, HELO names, senders and recipients refused: decision lines that told
  the client no (reject, tempfail), each recipient of a message-wide refusal once;
- failures of DNS, scanners and other dependencies: ``dependency_failure``,
  ``dnsbl_zone_error`` and ``not_checked`` lines, by check and service (or zone).

Given the rules, ``unmatched`` lists the rule-list rules no decision line names.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import PurePath

from ..logread import REFUSALS, Record
from ..rules.policy import Policy

OUTCOMES = ("accept", "quarantine", "reject", "tempfail", "discard", "abort")  # chart order
FAILURES = ("dependency_failure", "dnsbl_zone_error", "not_checked")


@dataclass
class Summary:
    """Counters over the records added; ``since``/``until`` are the bounds asked for."""

    since: datetime | None = None
    until: datetime | None = None
    records: int = 0
    first: datetime | None = None
    last: datetime | None = None
    events: Counter[str] = field(default_factory=Counter)
    hashes: Counter[str] = field(default_factory=Counter)  # rules_hash of decision lines
    outcomes: Counter[str] = field(default_factory=Counter)
    hours: Counter[tuple[datetime, str]] = field(default_factory=Counter)  # (hour, outcome)
    actions: Counter[str] = field(default_factory=Counter)
    replies: Counter[tuple[str, str]] = field(default_factory=Counter)  # (entry, reply)
    checks: Counter[tuple[str, str]] = field(default_factory=Counter)  # (check, action)
    rules: Counter[tuple[str, str]] = field(default_factory=Counter)  # (rule, action)
    monitor: Counter[tuple[str, str]] = field(default_factory=Counter)  # (rule, action)
    clients: Counter[str] = field(default_factory=Counter)
    helos: Counter[str] = field(default_factory=Counter)
    senders: Counter[str] = field(default_factory=Counter)
    recipients: Counter[str] = field(default_factory=Counter)
    failures: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    rules_dir: str = ""  # set by match_rules
    rules_hash: str = ""
    unmatched: list[str] = field(default_factory=list)

    def add_all(self, records: Iterable[Record]) -> Summary:
        for record in records:
            self.add(record)
        return self

    def add(self, record: Record) -> None:
        self.records += 1
        self.events[record.event] += 1
        when = record.when
        if when is not None:
            self.first = when if self.first is None else min(self.first, when)
            self.last = when if self.last is None else max(self.last, when)
        if record.event == "decision":
            self._decision(record)
        elif record.event == "envelope":
            self.outcomes[record["result"]] += 1
            if when is not None:
                self.hours[when.replace(minute=0, second=0, microsecond=0),
                           record["result"]] += 1
        elif record.event in FAILURES:
            if record.event == "dnsbl_zone_error":  # a list answered what it should not
                self.failures[record.event, "dnsbl", record["zone"]] += 1
            else:
                self.failures[record.event, record["check"], record["service"]] += 1

    def _decision(self, record: Record) -> None:
        action, rule = record["action"], record["rule"]
        self.hashes[record["rules_hash"]] += 1
        if record["monitor"] == "yes":
            self.monitor[rule, action] += 1
            return
        self.actions[action] += 1
        if record["check"]:
            self.checks[record["check"], action] += 1
        if rule:
            self.rules[rule, action] += 1
        if record["reply"] or record["entry"]:  # entry: a newer log names it
            self.replies[record["entry"], record["reply"]] += 1
        if action in REFUSALS:
            for counter, name in ((self.clients, "client"), (self.helos, "helo"),
                                  (self.senders, "sender")):
                if record[name]:
                    counter[record[name]] += 1
            self.recipients.update(r for r in record["rcpt"].split(",") if r)

    def match_rules(self, policy: Policy) -> None:
        """Note every rule of the policy's rule lists that no decision line names."""
        self.rules_dir, self.rules_hash = policy.source, policy.digest
        named = RuleNames({rule for rule, _ in self.rules} | {rule for rule, _ in self.monitor})
        self.unmatched = [rule.where for rl in policy.rule_lists for _, index in rl.stages()
                          for rule in index.rules if not named.names(rule.where, policy.source)]


class RuleNames:
    """The rule locations a log names, found again from the rules directory's side.

    A location is ``path:line``, the path as the milter was given it: absolute, relative
    to where it ran, or on another host.  A rule of the directory is known by its file's
    path under the directory and its line, so ``/etc/policy-milter/access:12`` in the log
    is ``access:12`` of ``--rules .`` run in /etc/policy-milter, or of a copy elsewhere.
    """

    def __init__(self, locations: Iterable[str]) -> None:
        self.by_end: dict[tuple[str, str], list[tuple[str, ...]]] = {}
        for location in locations:
            path, _, line = location.rpartition(":")
            parts = PurePath(os.path.normpath(path)).parts
            if parts:
                self.by_end.setdefault((parts[-1], line), []).append(parts)

    def names(self, location: str, rules_dir: str) -> bool:
        path, _, line = location.rpartition(":")
        inside = os.path.relpath(path, rules_dir)
        wanted = PurePath(os.path.normpath(path if inside.startswith("..") else inside)).parts
        found = self.by_end.get((wanted[-1], line), []) if wanted else []
        return any(parts[-len(wanted):] == wanted for parts in found)
