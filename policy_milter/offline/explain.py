"""``policy-milter explain``: from a decision log line back to the configuration line
that made it, and to what would change the outcome.

For each decision: the reply and its catalogue entry, the source text at the rule's
``path:line`` in the rules as they are now (with a warning when the rules hash of the
line is not the hash of the rules loaded), the check and what switches it on, and the
white entry, setting or limit that would change the answer.  Given the log, the
transaction's envelope is replayed under the rules as they are now.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .. import catalogue
from ..checks.order import ORDER, Spec
from ..log import quote
from ..logread import Record
from ..rules.policy import MAIN_FILE, Policy
from ..rules.settings import NAMES as SETTING_NAMES

REFUSALS = frozenset({"reject", "tempfail", "discard", "quarantine"})


@dataclass
class Explanation:
    """Everything explain prints about one decision line, as lines of text."""

    lines: list[str] = field(default_factory=list)

    def add(self, label: str, text: str) -> None:
        self.lines.append(f"{label:<10} {text}")


def source_text(where: str, policy: Policy | None) -> tuple[Path | None, list[str]]:
    """The file a ``path:line`` names, found as logged or by its name among the files
    of the loaded rules, and its logical line (continuation lines included)."""
    path_text, _, number = where.rpartition(":")
    if not number.isdigit():
        return None, []
    path = _find(Path(path_text), policy)
    if path is None:
        return None, []
    try:
        physical = path.read_text(encoding="utf-8", errors="replace").split("\n")
    except OSError:
        return None, []
    start = int(number) - 1
    if not 0 <= start < len(physical):
        return path, []
    end = start + 1
    while end < len(physical) and physical[end][:1] in (" ", "\t") and physical[end].strip():
        end += 1
    return path, [f"{n + 1:>6} | {physical[n]}" for n in range(start, end)]


def _find(logged: Path, policy: Policy | None) -> Path | None:
    if logged.is_file():
        return logged
    if policy is not None:
        for name in policy.files:
            if Path(name).name == logged.name:
                return Path(name)
    return None


def _entry(record: Record) -> catalogue.Entry | None:
    """The catalogue entry of the line: named since the log says it; for older lines,
    the one whose reply line it is."""
    return catalogue.ENTRIES.get(record["entry"]) or catalogue.by_reply(record["reply"])


def _spec(record: Record) -> Spec | None:
    return next((s for s in ORDER if s.name == record["check"]
                 and s.stage.value == record["stage"]), None) or next(
        (s for s in ORDER if s.name == record["check"]), None)


def _setting_at(where: str, policy: Policy | None) -> str:
    """The setting that ``where`` (a policy.conf line) sets, if it is one ('default'
    is no line: every setting left unset is there)."""
    if policy is None or where == "default":
        return ""
    return next((name for name, at in policy.where.items()
                 if at == where and name in SETTING_NAMES), "")


def explain(record: Record, policy: Policy | None, rules_dir: str) -> Explanation:
    out = Explanation()
    stage, action = record["stage"], record["action"]
    monitor = record["monitor"] == "yes"
    when = (record.when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
            if record.when else "no time stamp")
    out.add("decision", f"{action} at {stage}{' (monitor: the client was not refused)' if monitor else ''}"
                        f", {when}, qid {record['qid'] or '-'}")
    out.add("session", " ".join(f"{name} {quote(record[name]) if record[name] else '-'}"
                                for name in ("client", "client_name", "helo", "sender", "rcpt")))
    entry = _entry(record)
    if record["reply"]:
        out.add("reply", record["reply"])
    if entry is not None:
        seed = f"row {entry.row} of the catalogue" if entry.row else "one of ours, not a seed row"
        out.add("catalogue", f"{entry.name} ({seed}; {entry.kind.value}; at "
                             f"{', '.join(sorted(s.value for s in entry.stages))})")
    if record["detail"]:
        out.add("detail", quote(record["detail"]))
    rule = record["rule"]
    _rule(out, rule, policy)
    _hash(out, record["rules_hash"], policy, rules_dir)
    spec = _spec(record)
    if spec is not None:
        out.add("check", f"{spec.name} at {spec.stage.value}: {spec.what} (on: {spec.on})")
    if action in REFUSALS or monitor:
        out.lines.append("to change the outcome:")
        out.lines += [f"  - {hint}" for hint in _hints(record, spec, policy, monitor)]
    return out


def _rule(out: Explanation, rule: str, policy: Policy | None) -> None:
    if not rule:
        out.add("rule", "none: the message passed every check")
        return
    if rule.startswith("builtin:"):
        out.add("rule", f"{rule} (built in: no configuration line decides it)")
        return
    path, text = source_text(rule, policy)
    out.add("rule", rule + ("" if path is None or str(path) == rule.rpartition(":")[0]
                            else f" (found as {path})"))
    if path is None:
        out.lines.append("           (that file is not there now)")
    elif not text:
        out.lines.append("           (the file has no such line now)")
    out.lines += [f"    {line}" for line in text]


def _hash(out: Explanation, logged: str, policy: Policy | None, rules_dir: str) -> None:
    if policy is None:
        out.add("rules", f"{logged or '-'} logged; the rules in {rules_dir} could not be "
                         "loaded: the text above is as the file is now")
    elif not logged:
        out.add("rules", f"the line names no rules hash; {policy.digest} is loaded now")
    elif logged == policy.digest:
        out.add("rules", f"{logged}: {rules_dir} holds the rules that decided, unchanged")
    else:
        out.add("rules", f"WARNING: the rules changed since: the line was decided by "
                         f"{logged}, {rules_dir} is {policy.digest} now; the line above "
                         "may not be the one that decided")


def _hints(record: Record, spec: Spec | None, policy: Policy | None,
           monitor: bool) -> list[str]:
    """The white entry, setting or limit that applies, most specific first."""
    hints: list[str] = []
    rule, client = record["rule"], record["client"] or "ADDRESS"
    setting = _setting_at(rule, policy)
    if monitor:
        hints.append(f"the rule at {rule} is in monitor mode: remove 'monitor' from it (or "
                     "set 'monitor = no') to refuse such mail")
    elif setting:
        value = getattr(policy.settings, setting, None) if policy else None
        hints.append(f"the setting {setting} at {rule} decided (now {_shown(value)}): "
                     "change it there")
    elif spec is not None and spec.name in _CAUSES:
        hints.append(_CAUSES[spec.name](record, _where(policy)))
    elif rule and not rule.startswith("builtin:"):
        hints.append(f"the line at {rule} decided (the entry or limit that applies): "
                     "change or remove it")
    if spec is not None and spec.rules and not monitor:
        hints.append(f"a white entry above that line in {spec.name}: 'client {client} permit'")
    elif spec is not None and spec.skippable:
        hints.append(f"a white entry in access that skips it: 'client {client} permit "
                     f"skip={spec.name}' (trust the client, never the sender address: "
                     "it is forged at will)")
    elif spec is not None:
        hints.append(f"no white entry skips {spec.name}; it is on by: {spec.on}")
    if spec is not None and spec.depends and record["action"] == "tempfail":
        failure = _failure_setting(spec, rule, policy)
        hints.append(f"{spec.depends} failed: {failure} ({rule or '?'}) says what that "
                     "means; 'accept' lets such mail pass unchecked, marked")
    if policy is not None and not hints:
        hints.append(f"see {Path(policy.source) / MAIN_FILE}")
    return hints


def _failure_setting(spec: Spec, rule: str, policy: Policy | None) -> str:
    """The setting that said what the failure of ``spec``'s dependency means: the one
    at ``rule`` (the logged place, which the engine resolved); else as the engine picks
    it: the check's own setting when set, else failure_action."""
    logged = _setting_at(rule, policy)
    if logged:
        return logged
    if policy is None:
        return f"{spec.failure} (or failure_action, when it is not set)"
    return policy.settings.failure_setting(spec.failure)


def _where(policy: Policy | None) -> Callable[[str], str]:
    """Where a setting or table is named in policy.conf, for the hints."""
    def at(name: str) -> str:
        return policy.where.get(name, "not set") if policy is not None else "?"
    return at


# Checks whose rule names the entry that applies, not the line to change.
_CAUSES: dict[str, Callable[[Record, Callable[[str], str]], str]] = {
    "recipients": lambda r, at: (
        f"the domain's entry at {r['rule']} says where its mailboxes are: add "
        f"{r['rcpt'] or 'the mailbox'} to the accounts table ({at('accounts')}) or the "
        f"aliases table ({at('aliases')})"),
    "relay": lambda r, at: (
        f"let the client relay: relay_networks ({at('relay_networks')}) or a login; or "
        f"make the domain ours in the domains table ({at('domains')})"),
}


def transaction(records: Iterable[Record], qid: str) -> tuple[list[Record], Record | None]:
    """The decision lines about queue id ``qid`` and its envelope line.  The MTA may name
    no queue id before the first recipient is accepted (Postfix), so the lines of the
    same session since its previous envelope count too; the file is read once, keeping
    only each session's lines since its last envelope."""
    pending: dict[str, list[Record]] = {}
    found: list[Record] = []
    envelope = None
    for record in records:
        session = record["session"]
        if record.event == "envelope":
            lines = pending.pop(session, [])
            if record["qid"] == qid:
                found += lines
                envelope = record
        elif record.event == "decision":
            if record["qid"] == qid:
                found.append(record)
            elif session:
                pending.setdefault(session, []).append(record)
    return sorted(found, key=lambda r: _line_number(r.source)), envelope


def _line_number(source: str) -> tuple[str, int]:
    path, _, number = source.rpartition(":")
    return path, int(number) if number.isdigit() else 0


def _shown(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, tuple | frozenset | list):
        return ", ".join(map(str, value)) or "(empty)"
    return str(value)
