"""What a check or rule answers, and where that answer came from."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from .addresses import Address
from .catalogue import Entry


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


@dataclass(frozen=True)
class Decision:
    """One decisive answer; ``rule`` is the ``path:line`` (or setting) that produced it."""

    action: Action
    entry: Entry | None = None
    rule: str = ""
    check: str = ""
    detail: str = ""
    skip: frozenset[str] = frozenset()
    headers: tuple[tuple[str, str], ...] = ()  # for ADD_HEADER
    subject_prefix: str = ""  # for ADD_HEADER: tag the Subject too
    recipients: tuple[Address, ...] = ()  # for DISCARD at end of message: only these
    reason: str = ""  # quarantine reason
    monitor: bool = False

    @property
    def stops(self) -> bool:
        """Whether this answer ends the transaction (or recipient) for the client."""
        action = self.action  # identity tests: hashing an Enum member runs Python code
        return action is Action.REJECT or action is Action.TEMPFAIL or action is Action.DISCARD

    def reply_line(self) -> str:
        return self.entry.reply_line() if self.entry else ""


CONTINUE = Decision(Action.CONTINUE)
