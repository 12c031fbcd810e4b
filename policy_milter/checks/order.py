"""The order of checks, as data: the engine's wiring reads this table, the rule loader
validates ``permit skip=`` against it, and the README's "Order of checks" is generated
from it (``policy-milter checks`` prints it; a test keeps the two identical).

Each row is one check at one stage: its name (what the log and ``skip=`` say), what it
decides, what switches it on, what it needs from the MTA, what it depends on and the
setting that says what a failure of that dependency means, whether a white entry may
skip it, and what runs once a message it passed is accepted.  Rows without ``run`` stand
for the admin's rule list of that name at that stage.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..decision import Decision
from ..rules.settings import FAILURE_SETTINGS, NAMES
from ..stages import Stage
from . import (auth, challenge, dnsbl, greylist, limits, protocol, rdns, recipients, relay, size,
               spam, virus)
from .base import Context

if TYPE_CHECKING:
    from ..rules.policy import Policy

# What a check may need from the MTA: the first three are callbacks, the rest actions.
NEEDS = {
    "size": "the header and body octets counted",
    "headers": "the header fields kept",
    "message": "the whole message kept",
    "addheader": "adding header fields",
    "chgheader": "changing header fields",
    "delrcpt": "removing recipients",
    "quarantine": "quarantining",
}
ACTIONS = frozenset({"addheader", "chgheader", "delrcpt", "quarantine"})


def _always(_policy: Policy) -> bool:
    return True


@dataclass(frozen=True)
class Spec:
    name: str
    stage: Stage
    run: Callable[[Context], Decision | None] | None  # None: the rule list called ``name``
    what: str
    on: str = "always"  # the settings or tables that switch it on, for the docs
    enabled: Callable[[Policy], bool] = _always
    needs: frozenset[str] = frozenset()
    depends: str = ""  # the service whose failure raises DependencyError
    failure: str = "failure_action"  # the setting that says what such a failure means
    unscannable: bool = False  # may find the message too big to check (NotChecked)
    skippable: bool = False  # a white entry may skip it
    after_accept: Callable[[Context], None] | None = None
    prefetch: tuple[tuple[Stage, Callable[[Context], None]], ...] = ()  # early lookups

    def __post_init__(self) -> None:
        if self.failure not in FAILURE_SETTINGS:
            raise ValueError(f"check {self.name}: '{self.failure}' is not a failure setting")
        if not self.needs <= NEEDS.keys():
            raise ValueError(f"check {self.name}: unknown needs {set(self.needs) - NEEDS.keys()}")

    @property
    def rules(self) -> bool:
        return self.run is None


S = Stage


def _rules(name: str, stage: Stage, what: str) -> Spec:
    return Spec(name, stage, None, what, on=f"`{name}` rules at this stage", skippable=True)


ORDER: tuple[Spec, ...] = (
    Spec("protocol", S.HELO, protocol.helo,
         "a repeated greeting; balanced brackets; a domain or address literal",
         on="`check_helo_syntax`, `reject_repeated_helo`",
         enabled=lambda p: p.settings.check_helo_syntax or p.settings.reject_repeated_helo),
    Spec("protocol", S.MAIL, protocol.helo_required, "a greeting came first",
         on="`require_helo`", enabled=lambda p: p.settings.require_helo),
    Spec("size", S.MAIL, size.declared_mail,
         "a declared `SIZE=`: the listener's limit, then the sender's"),
    Spec("auth", S.MAIL, auth.required, "AUTH required by the listener or the sender domain"),
    _rules("access", S.MAIL, "rules without recipient or content conditions"),
    _rules("filters", S.MAIL, "rules without recipient or content conditions"),
    Spec("local_sender", S.MAIL, auth.local_sender,
         "a sender in a local domain needs a trusted client", on="`local_sender_requires_auth`",
         enabled=lambda p: p.settings.local_sender_requires_auth, skippable=True),
    Spec("rdns", S.MAIL, rdns.check, "the client's reverse DNS", on="`rdns`",
         enabled=lambda p: p.settings.rdns != "off", depends="dns",
         failure="dns_failure_action", skippable=True,
         prefetch=((S.CONNECT, rdns.prefetch),)),
    Spec("dnsbl", S.MAIL, dnsbl.check, "DNS black and white lists", on="`dnsbl`",
         enabled=lambda p: bool(p.tables.zones), depends="dns", failure="dns_failure_action",
         skippable=True, prefetch=((S.CONNECT, dnsbl.AT_CONNECT), (S.HELO, dnsbl.AT_HELO),
                                   (S.MAIL, dnsbl.AT_MAIL))),
    Spec("relay", S.RCPT, relay.relay,
         "every domain the address routes to is ours, or the client is trusted"),
    Spec("challenge_answer", S.RCPT, challenge.answer_rcpt,
         "the challenge answer address needs no account", on="`challenge_store`",
         enabled=lambda p: bool(p.settings.challenge_store)),
    Spec("recipients", S.RCPT, recipients.known,
         "the mailbox exists (accounts, aliases, lists, relay recipients); "
         "members-only lists"),
    Spec("auth", S.RCPT, auth.local_only, "a local-only account writes to local domains only"),
    Spec("limits", S.RCPT, limits.account_rate,
         "the logged-in account's (or its domain's) messages and recipients per period",
         depends="rate counters", after_accept=limits.record_sent),
    Spec("limits", S.RCPT, limits.too_many, "recipients per message"),
    Spec("size", S.RCPT, size.declared_rcpt, "a declared `SIZE=` against the mailbox's limit"),
    _rules("access", S.RCPT, "rules with a recipient condition"),
    _rules("filters", S.RCPT, "rules with a recipient condition"),
    Spec("greylist", S.RCPT, greylist.check,
         "a first-seen (client network, sender, recipient) retries after `greylist_delay`; "
         "trusted clients and the null sender to postmaster pass",
         on="`greylist`", enabled=lambda p: p.settings.greylist, depends="state store",
         skippable=True),
    Spec("protocol", S.DATA, protocol.has_recipients, "an accepted recipient"),
    Spec("protocol", S.EOM, protocol.has_recipients, "an accepted recipient"),
    Spec("size", S.EOM, size.counted,
         "the counted size: the listener's, the sender's and every recipient's limit",
         on="any size limit", enabled=size.limits_configured, needs=frozenset({"size"})),
    _rules("access", S.EOM, "rules with content conditions"),
    _rules("filters", S.EOM, "rules with content conditions"),
    Spec("virus", S.EOM, virus.check, "clamd finds no virus", on="`clamd`",
         enabled=lambda p: bool(p.settings.clamd),
         needs=frozenset({"message", "quarantine"}), depends="clamd",
         failure="virus_failure_action", unscannable=True, skippable=True),
    Spec("spam", S.EOM, spam.check, "spamd's score: tag, or refuse", on="`spamd`",
         enabled=lambda p: bool(p.settings.spamd),
         needs=frozenset({"message", "addheader", "chgheader"}), depends="spamd",
         failure="spam_failure_action", unscannable=True, skippable=True),
    Spec("challenge", S.EOM, challenge.check,
         "hold mail for protected recipients from senders not on their allow list",
         on="`challenge_store`", enabled=lambda p: bool(p.settings.challenge_store),
         needs=frozenset({"message", "delrcpt"}), depends="challenge store", skippable=True),
    Spec("protocol", S.UNKNOWN, protocol.unknown,
         "`disallowed_commands` get `operation_not_supported`, others "
         "`command_unrecognized`"),
)

SKIPPABLE = frozenset(spec.name for spec in ORDER if spec.skippable)


def skippable_after(stage: Stage, rule_list: str) -> frozenset[str]:
    """What a white entry in ``rule_list``, decided at ``stage``, can still skip: the
    skippable checks that come after it."""
    position = next(i for i, s in enumerate(ORDER) if s.rules and s.name == rule_list
                    and s.stage is stage)
    return frozenset(s.name for s in ORDER[position + 1:] if s.skippable)


def markdown() -> str:
    """The README's "Order of checks" table."""
    lines = ["| stage | check | decides | on when | white entries may skip it "
             "| if it cannot check |",
             "|---|---|---|---|---|---|"]
    for spec in ORDER:
        failure = f"{spec.depends} fails: `{spec.failure}`" if spec.depends else "-"
        if spec.unscannable:
            failure += "; too big to check: `unscannable_action`"
        lines.append(f"| {spec.stage.value} | `{spec.name}` | {spec.what} | {spec.on} "
                     f"| {'yes' if spec.skippable else 'no'} | {failure} |")
    return "\n".join(lines)


def _validate() -> None:
    """The settings and tables the docs say switch a check on exist."""
    for spec in ORDER:
        for name in re.findall(r"`(\w+)`", spec.on):
            if name not in NAMES and name not in ("access", "filters", "dnsbl"):
                raise ValueError(f"check {spec.name}: '{name}' is not a setting or table")


_validate()
