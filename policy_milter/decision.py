"""What a check or rule answers, and where that answer came from."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

from .catalogue import Entry, Kind

if TYPE_CHECKING:
    from .envelope import Resolved


class Action(Enum):
    """Postfix-style answers: the first one that is not CONTINUE decides the stage."""

    __hash__ = object.__hash__  # members are singletons; Enum's own hash runs Python code

    CONTINUE = "continue"
    PERMIT = "permit"  # a white entry: skip the later checks it names
    REJECT = "reject"
    TEMPFAIL = "tempfail"
    DISCARD = "discard"  # accept and drop (the whole message, or one recipient at RCPT)
    QUARANTINE = "quarantine"  # hold in the MTA's queue
    ADD_HEADER = "add-header"


# The fields each action carries besides rule, check, detail and monitor.
_PAYLOAD = {
    Action.CONTINUE: frozenset(),
    Action.PERMIT: frozenset({"skip"}),
    Action.REJECT: frozenset({"entry"}),
    Action.TEMPFAIL: frozenset({"entry"}),
    Action.DISCARD: frozenset({"entry", "recipients"}),
    Action.QUARANTINE: frozenset({"reason"}),
    Action.ADD_HEADER: frozenset({"headers", "subject_prefix"}),
}
_EMPTY: dict[str, object] = {"entry": None, "skip": frozenset(), "headers": (),
                              "subject_prefix": "", "recipients": (), "reason": ""}


@dataclass(frozen=True)
class Decision:
    """One decisive answer; ``rule`` is the ``path:line`` (or setting) that produced it.

    It cannot be built wrong: a REJECT carries a 5xx reply entry, a TEMPFAIL a 4xx one,
    a DISCARD an outcome entry, and every other field only where its action uses it, so
    the adapter never meets an answer it cannot send.
    """

    action: Action
    entry: Entry | None = None
    rule: str = ""
    check: str = ""
    detail: str = ""
    skip: frozenset[str] = frozenset()
    headers: tuple[tuple[str, str], ...] = ()  # for ADD_HEADER
    subject_prefix: str = ""  # for ADD_HEADER: tag the Subject too
    recipients: tuple[Resolved, ...] = ()  # for DISCARD at end of message: only these
    reason: str = ""  # quarantine reason
    monitor: bool = False

    def __post_init__(self) -> None:
        action, entry = self.action, self.entry
        if action is Action.REJECT or action is Action.TEMPFAIL:
            wanted = "4xx" if action is Action.TEMPFAIL else "5xx"
            if entry is None or entry.kind is not Kind.REPLY \
                    or entry.temporary != (action is Action.TEMPFAIL):
                raise ValueError(f"{action.value} needs a {wanted} reply entry, not {entry}")
        elif action is Action.DISCARD and (entry is None or entry.kind is not Kind.OUTCOME):
            raise ValueError(f"discard needs an outcome entry, not {entry}")
        if action is Action.ADD_HEADER and not self.headers:
            raise ValueError("add-header needs a header")
        allowed = _PAYLOAD[action]
        for name, empty in _EMPTY.items():
            if name not in allowed and getattr(self, name) != empty:
                raise ValueError(f"{action.value} does not take {name}")

    @property
    def stops(self) -> bool:
        """Whether this answer ends the transaction (or recipient) for the client."""
        action = self.action  # identity tests: hashing an Enum member runs Python code
        return action is Action.REJECT or action is Action.TEMPFAIL or action is Action.DISCARD

    def reply_line(self) -> str:
        return self.entry.reply_line() if self.entry else ""


CONTINUE = Decision(Action.CONTINUE)
