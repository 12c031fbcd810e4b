"""One SMTP session played without an MTA: against the rules directly (every check's
answer, stage by stage, with its time), or over the milter protocol against a running
milter (its replies, as the MTA would get them).

The session is given as a Script: the facts the MTA would report and the commands the
client would send.  Playing stops where the client would be stopped: a refused greeting
or MAIL, no recipient accepted, a refused DATA.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from .. import catalogue
from ..decision import Action, Decision
from ..engine import Engine, Outcome, Session
from ..envelope import Resolved
from ..log import DecisionLog
from ..mtaclient import MILTER_CHUNK_SIZE, EomResult, MilterClient, Reply, split_message
from ..stages import Stage

OUTCOMES = {"accepted": 0, "rejected": 4, "tempfailed": 5, "discarded": 6, "held": 7}
_PAST = {"reject": "rejected", "tempfail": "tempfailed", "discard": "discarded"}


@dataclass(frozen=True)
class Script:
    """What the MTA would tell the milter about one session."""

    client: str
    helo: str | None
    sender: str | None  # as the client sends it: '<a@b.example>', '<>'; None: no MAIL
    rcpts: tuple[tuple[str, tuple[str, ...]], ...]  # (argument, ESMTP parameters)
    client_name: str = ""  # the verified reverse name; '' when it has none
    listener: str = ""  # {daemon_name}
    login: str = ""  # {auth_authen}
    tls: bool = False
    params: tuple[str, ...] = ()  # of MAIL FROM
    message: bytes | None = None  # None: the session ends after DATA
    queue_id: str = "TEST"
    mta_name: str = "localhost"


@dataclass
class Step:
    """One check at one stage: what it answered ('skipped': a white entry skipped it)."""

    check: str
    answer: str
    rule: str = ""
    reply: str = ""
    entry: str = ""
    detail: str = ""
    ms: float = 0.0
    monitor: bool = False


@dataclass
class StageRun:
    """A stage as the client meets it: its argument, the answer, and the checks run."""

    stage: str
    subject: str
    answer: str  # continue, accept, reject, tempfail, discard
    reply: str = ""
    entry: str = ""
    rule: str = ""
    check: str = ""
    detail: str = ""
    ms: float = 0.0
    steps: list[Step] = field(default_factory=list)


@dataclass
class Played:
    stages: list[StageRun]
    outcome: str  # a key of OUTCOMES
    changes: list[str]  # to the message, or outside it (a challenge sent)
    notes: list[str]
    log: list[str]

    @property
    def exit_code(self) -> int:
        return OUTCOMES[self.outcome]


def envelope_arg(address: str) -> str:
    """A MAIL or RCPT argument as a client sends it: angle brackets added if missing."""
    text = address.strip()
    return text if text.startswith("<") else f"<{text}>"


class _Capture(logging.Handler):
    """The log lines the milter would write, kept for the output."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def captured_log() -> tuple[DecisionLog, list[str]]:
    """A DecisionLog whose lines are kept, not written anywhere."""
    capture = _Capture()
    return DecisionLog(_private_logger("policy_milter.offline", capture)), capture.lines


def silent_log() -> DecisionLog:
    """A DecisionLog that writes nothing (a replay of a day of traffic)."""
    logger = _private_logger("policy_milter.replay", logging.NullHandler())
    logger.setLevel(logging.CRITICAL + 1)
    return DecisionLog(logger)


def _private_logger(name: str, handler: logging.Handler) -> logging.Logger:
    logger = logging.getLogger(name)
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    return logger


def _reply(decision: Decision) -> tuple[str, str]:
    """The reply the client reads ('' for an outcome such as discard, which it never
    sees), and the catalogue entry's name."""
    entry = decision.entry
    if entry is None:
        return "", ""
    return (decision.reply_line() if entry.code else ""), entry.name


def _step(decision: Decision | None, seconds: float, check: str) -> Step:
    if decision is None:
        return Step(check, "skipped", detail="a white entry skipped it")
    return Step(check, decision.action.value, decision.rule, *_reply(decision),
                decision.detail, round(seconds * 1000, 3), decision.monitor)


def _stage_run(stage: Stage, subject: str, decision: Decision, seconds: float,
               steps: list[Step]) -> StageRun:
    answer = decision.action.value if decision.stops else "continue"
    return StageRun(stage.value, subject, answer, *_reply(decision), decision.rule,
                    decision.check, decision.detail, round(seconds * 1000, 3), steps)


class _Player:
    """Drives a Session through a Script, recording every check's answer."""

    def __init__(self, engine: Engine) -> None:
        self.session: Session = engine.session()
        self.session.trace = self._trace
        self.steps: list[Step] = []
        self.stages: list[StageRun] = []
        self.last: Decision | Outcome | None = None

    def _trace(self, stage: Stage, check: str, decision: Decision | None,
               seconds: float, rcpt: Resolved | None) -> None:
        self.steps.append(_step(decision, seconds, check))

    def run(self, stage: Stage, subject: str, call: Callable[[], Decision | Outcome]) -> Decision:
        """Record one stage; ``call`` makes the Session call."""
        self.steps = []
        started = time.perf_counter()
        result = call()
        decision = result.decision if isinstance(result, Outcome) else result
        self.stages.append(_stage_run(stage, subject, decision, time.perf_counter() - started,
                                      self.steps))
        self.last = result
        return decision


def play(engine: Engine, script: Script, notes: list[str]) -> Played:
    """The session against ``engine``'s rules; ``notes`` say what runs differently."""
    player = _Player(engine)
    session = player.session
    try:
        outcome, changes = _play(player, session, script, notes)
    finally:
        session.close()
    return Played(player.stages, outcome, changes, notes, [])


def _play(player: _Player, s: Session, script: Script,
          notes: list[str]) -> tuple[str, list[str]]:
    qid = script.queue_id
    connect = player.run(Stage.CONNECT, script.client, lambda: s.connect(
        script.client, script.client_name, script.listener, script.mta_name))
    if connect.stops:
        return _PAST[connect.action.value], []
    if script.helo is not None:
        helo = player.run(Stage.HELO, script.helo, lambda: s.helo(script.helo or "",
                                                                   script.tls))
        if helo.stops:
            return _PAST[helo.action.value], []
    if script.sender is None:
        return "accepted", []
    sender = player.run(Stage.MAIL, script.sender, partial(
        s.mail, script.sender, script.params, script.login, qid))
    if sender.stops:
        return _PAST[sender.action.value], []
    if not script.rcpts:  # a replayed transaction refused at MAIL: no recipient was sent
        return "accepted", []
    refusals: list[str] = []
    for arg, params in script.rcpts:
        rcpt = player.run(Stage.RCPT, arg, partial(s.rcpt, arg, params, qid))
        if rcpt.stops:
            refusals.append(rcpt.action.value)
    if len(refusals) == len(script.rcpts):
        return ("tempfailed" if "tempfail" in refusals else "rejected"), []
    data = player.run(Stage.DATA, "", lambda: s.data(qid))
    if data.stops:
        return _PAST[data.action.value], []
    if script.message is None:
        notes.append("end of message not run: no message given (size, content, virus, spam "
                     "and challenge checks read it)")
        return "accepted", []
    headers, body = split_message(script.message, keep_space=False)
    for name, value in headers:
        s.header(name, value)
    for start in range(0, len(body), MILTER_CHUNK_SIZE):  # as the milter protocol frames it
        s.body(body[start:start + MILTER_CHUNK_SIZE])
    final = player.run(Stage.EOM, f"{len(script.message)} octets", lambda: s.eom(qid))
    result = player.last
    assert isinstance(result, Outcome)
    if final.stops:
        held = final.action is Action.DISCARD and final.check == "challenge"
        return "held" if held else _PAST[final.action.value], []
    player.stages[-1].answer = "accept"
    changes = [change("addheader", name, value) for name, value in result.add_headers]
    changes += [change("chgheader", index, name, value)
                for name, index, value in result.change_headers]
    changes += [change("delrcpt", rcpt) for rcpt in result.delete_recipients]
    if result.quarantine:
        changes.append(change("quarantine", result.quarantine))
        return "held", changes
    return "accepted", changes


def change(kind: str, *args: object) -> str:
    """A change to the message, named as the milter protocol names it, alike whether
    the engine asked for it here or a milter did over the wire."""
    if kind == "addheader":
        return f"addheader {args[0]}: {args[1]}"
    if kind == "chgheader":
        return f"chgheader {args[1]}[{args[0]}]: {args[2]}"
    return " ".join(map(str, (kind, *args)))


# -- over the milter protocol -----------------------------------------------------------

def _wire_run(stage: Stage, subject: str, reply: Reply, seconds: float) -> StageRun:
    answer = ("reject" if reply.rejected else "tempfail" if reply.tempfailed
              else "discard" if reply.action == "discard" else "continue")
    known = catalogue.by_reply(reply.line) if reply.action == "replycode" else None
    entry = known.name if known else ""
    return StageRun(stage.value, subject, answer, reply.line if reply.action == "replycode"
                    else "", entry, ms=round(seconds * 1000, 3))


def play_wire(socket: str, script: Script, timeout: float = 30.0) -> Played:
    """The session over the milter protocol, as Postfix would play it; the running
    milter's replies are all there is to see (its log has the rest)."""
    stages: list[StageRun] = []

    def run(stage: Stage, subject: str, send: Callable[[], Reply]) -> Reply:
        started = time.perf_counter()
        reply = send()
        stages.append(_wire_run(stage, subject, reply, time.perf_counter() - started))
        return reply

    notes = [f"played over the milter protocol against {socket}; each check's answer is in "
             "that milter's log"]
    qid = {"i": script.queue_id}
    with MilterClient(socket, timeout) as client:
        connect = run(Stage.CONNECT, script.client, lambda: client.connect(
            script.client_name or f"[{script.client}]", script.client,
            macros={"{daemon_name}": script.listener, "j": script.mta_name}))
        if not connect.passed:
            return Played(stages, _wire_outcome(stages[-1]), [], notes, [])
        if script.helo is not None:
            helo = run(Stage.HELO, script.helo, lambda: client.helo(
                script.helo or "", macros={"{tls_version}": "TLSv1.3"} if script.tls else None))
            if not helo.passed:
                return Played(stages, _wire_outcome(stages[-1]), [], notes, [])
        if script.sender is None:
            return Played(stages, "accepted", [], notes, [])
        mail = run(Stage.MAIL, script.sender, partial(
            client.mail, script.sender, *script.params,
            macros={"{auth_authen}": script.login, **qid}))
        if not mail.passed:
            return Played(stages, _wire_outcome(stages[-1]), [], notes, [])
        refused = [run(Stage.RCPT, arg, partial(client.rcpt, arg, *params, macros=qid))
                   for arg, params in script.rcpts]
        if all(not r.passed for r in refused):
            return Played(stages, "tempfailed" if any(r.tempfailed for r in refused)
                          else "rejected", [], notes, [])
        data = run(Stage.DATA, "", lambda: client.data(macros=qid))
        if not data.passed or script.message is None:
            if script.message is None:
                notes.append("end of message not played: no message given")
            return Played(stages, _wire_outcome(stages[-1]) if not data.passed else "accepted",
                          [], notes, [])
        started = time.perf_counter()
        final = client.message(script.message, macros={"eom": qid})
        reply = final.reply if isinstance(final, EomResult) else final
        stages.append(_wire_run(Stage.EOM, f"{len(script.message)} octets", reply,
                                time.perf_counter() - started))
        changes = [change(kind, *args) for kind, args in
                   (final.modifications if isinstance(final, EomResult) else [])]
    if reply.passed:
        stages[-1].answer = "accept"
        if any(kind.startswith("quarantine") for kind in changes):
            return Played(stages, "held", changes, notes, [])
    return Played(stages, _wire_outcome(stages[-1]), changes, notes, [])


def _wire_outcome(last: StageRun) -> str:
    return _PAST.get(last.answer, "accepted")
