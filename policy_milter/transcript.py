"""Each transaction's envelope, logged once when it ends (``event=envelope``), so that
``policy-milter replay`` can put past traffic to other rules.

It keeps what the rules read before the message itself: the client, its greeting, the
listener, the login, the MAIL and RCPT commands as the client gave them with the answer
each got, and the declared size.  The message and the DNS answers of the day are not in
it; replay says so instead of assuming them.  A connection whose greeting was refused
and that never sent MAIL is logged too.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .decision import Decision
from .stages import Stage

if TYPE_CHECKING:
    from .engine import Outcome
    from .log import DecisionLog
    from .model import Connection, Transaction

_JSON = json.JSONEncoder(separators=(",", ":"))  # one encoder, not one per line
MAX_RCPTS_CHARS = 60_000  # of the recipients' JSON; the rest are counted, not listed
ABORTED = "abort"  # the transaction ended before end of message, unrefused


def answer(decision: Decision) -> str:
    """What the client was told, as one word: accept, reject, tempfail or discard."""
    return "accept" if not decision.stops else decision.action.value


@dataclass
class Envelope:
    """One transaction as the client sent it, with the answers it got."""

    mail_from: str = ""  # the MAIL argument as given; '' for a session without MAIL
    queue_id: str = ""  # as the MTA named it at MAIL, for a transaction refused there
    params: tuple[str, ...] = ()
    rcpts: list[tuple[str, tuple[str, ...], str, str]] = field(default_factory=list)
    result: str = ABORTED  # accept, quarantine, reject, tempfail, discard, abort
    stage: str = ""  # where the result was decided
    rule: str = ""

    def decided(self, stage: Stage, decision: Decision, result: str = "") -> None:
        self.result, self.stage, self.rule = result or answer(decision), stage.value, decision.rule

    def rcpts_json(self) -> tuple[str, int]:
        """The recipients as a JSON list of ``[argument, answer, rule(, params)]``, and how
        many did not fit (a cut list stays valid JSON)."""
        items = [[arg, ans, rule, *([list(params)] if params else [])]
                 for arg, params, ans, rule in self.rcpts]
        text = _JSON.encode(items)
        kept = len(items)
        while len(text) > MAX_RCPTS_CHARS and kept:
            kept = max(0, kept - max(1, kept // 10))
            text = _JSON.encode(items[:kept])
        return text, len(items) - kept


class Transcript:
    """Follows a session's answers and logs each envelope when its transaction ends."""

    def __init__(self, log: DecisionLog, conn: Connection) -> None:
        self.log, self.conn = log, conn
        self.current: Envelope | None = None
        self.logged = 0  # envelopes logged for this connection
        self.greeting: tuple[Stage, Decision] | None = None  # the last HELO answer

    def note(self, stage: Stage, args: Sequence[object], result: Decision | Outcome,
             txn: Transaction | None) -> None:
        """A stage's answer (``args`` are the Session method's)."""
        decision = result if isinstance(result, Decision) else result.decision
        if stage is Stage.HELO:
            self.greeting = (stage, decision)
        elif stage is Stage.MAIL:
            arg, params, queue_id = args[0], args[1], args[3]
            assert isinstance(arg, str) and isinstance(params, Sequence)
            self.current = Envelope(arg, str(queue_id), tuple(str(p) for p in params))
            if decision.stops:
                self.current.decided(stage, decision)
                self.end(txn)
        elif self.current is None:
            return
        elif stage is Stage.RCPT:
            arg, params = args[0], args[1]
            assert isinstance(arg, str) and isinstance(params, Sequence)
            self.current.rcpts.append((arg, tuple(str(p) for p in params), answer(decision),
                                       decision.rule))
        elif stage is Stage.DATA and decision.stops:
            self.current.decided(stage, decision)
            self.end(txn)
        elif stage is Stage.EOM:
            quarantined = not isinstance(result, Decision) and bool(result.quarantine)
            self.current.decided(stage, decision, "quarantine" if quarantined else "")
            self.end(txn)

    def end(self, txn: Transaction | None) -> None:
        """The transaction is over (end of message, refusal, RSET, next MAIL, close)."""
        if self.current is not None:
            self.log.envelope(self.conn, txn, self.current)
            self.logged += 1
        self.current = None

    def close(self, txn: Transaction | None) -> None:
        """The connection is gone: log what is open, or a refused greeting never followed
        by MAIL (a session that only greeted has nothing to replay)."""
        refused = self.greeting is not None and self.greeting[1].stops
        if self.current is None and not self.logged and refused:
            assert self.greeting is not None
            self.current = Envelope()
            self.current.decided(*self.greeting)
        self.end(txn)
