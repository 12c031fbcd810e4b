"""The golden envelope sessions (tests/golden/envelope.sessions): one table, four replayers.

This module reads the table (its head describes the format) and says what an answer is,
in terms every layer can state: ``ok``, ``discard``, or a refusal with its reply.  What a
layer makes of a step (Postfix's 250 to a refused HELO, say) is its replayer's business.
The table is checked as it is read, so a mistake in it fails every replayer's collection
loudly instead of testing something else.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from policy_milter import catalogue
from policy_milter.catalogue import Kind
from policy_milter.stages import Stage

REPO = Path(__file__).resolve().parents[2]
PATH = REPO / "tests" / "golden" / "envelope.sessions"
OK = "ok"
DISCARDED = "deleted_by_filter"  # the catalogue's outcome for mail accepted and dropped
LISTENERS = ("smtpd", "submission")
STAGES = {"HELO": Stage.HELO, "EHLO": Stage.HELO, "MAIL": Stage.MAIL, "RCPT": Stage.RCPT,
          "DATA": Stage.DATA, ".": Stage.EOM}  # any other verb: Stage.UNKNOWN
# Verbs an MTA answers itself and never shows a milter: no replayer could play them alike.
MTA_VERBS = frozenset({"AUTH", "BDAT", "ETRN", "EXPN", "HELP", "NOOP", "QUIT", "RSET",
                       "STARTTLS", "VRFY", "XCLIENT", "XFORWARD"})
_STEP = re.compile(r"(.*?)\s+->\s+(\S+)")
_MAIL = re.compile(r"MAIL FROM:(\S*)((?:\s+\S+)*)", re.I)
_RCPT = re.compile(r"RCPT TO:(\S*)", re.I)
_LINE = "x" * 78 + "\r\n"


@dataclass(frozen=True)
class Answer:
    """A step's answer: ok, discard (accepted, then dropped), reject or tempfail with the
    reply; at end of data also the recipients dropped from the message, as given."""

    action: str
    code: str = ""
    enhanced: str = ""
    text: str = ""
    dropped: tuple[str, ...] = ()

    @classmethod
    def reply(cls, code: str, enhanced: str, text: str,
              dropped: Sequence[str] = ()) -> Answer:
        """An SMTP reply: 2xx and 3xx pass, whatever they say."""
        if code[:1] in ("2", "3"):
            return cls(OK, dropped=tuple(dropped))
        return cls("tempfail" if code[:1] == "4" else "reject", code, enhanced, text,
                   tuple(dropped))


@dataclass(frozen=True)
class Step:
    """One command and what its reply must be: ``ok`` or a catalogue entry name."""

    command: str  # as written, what an SMTP client sends (for ".", the message instead)
    expect: str
    where: str  # path:line, for failure messages
    stage: Stage
    arg: str = ""  # the HELO name, MAIL's or RCPT's address, an unknown command's line
    params: tuple[str, ...] = ()  # MAIL's ESMTP parameters
    size: int = 0  # ".": the least body size; 0 for one short line

    @property
    def refused(self) -> bool:
        return self.expect not in (OK, DISCARDED)


@dataclass(frozen=True)
class Message:
    """What a "." step sends after DATA."""

    headers: tuple[tuple[str, str], ...]
    body: bytes

    @property
    def raw(self) -> bytes:
        return b"".join(f"{n}: {v}\r\n".encode() for n, v in self.headers) + b"\r\n" + self.body


@dataclass(frozen=True)
class Session:
    """One golden session: who connects where, and the steps."""

    name: str
    where: str
    addr: str
    client_name: str  # "": the client has no name
    listener: str
    login: str
    postfix_answers_first: str  # why the Postfix replayer skips it; "" when it plays it
    steps: tuple[Step, ...]

    @property
    def hostname(self) -> str:
        """The client's name as an MTA gives it to a milter: [ADDR] when it has none."""
        return self.client_name or f"[{self.addr}]"

    @property
    def entries(self) -> set[str]:
        """The catalogue entries the session expects."""
        return {step.expect for step in self.steps if step.expect != OK}

    @property
    def dropped(self) -> tuple[str, ...]:
        """The recipients accepted only to be dropped from the message, as given."""
        return tuple(s.arg for s in self.steps if s.stage is Stage.RCPT and s.expect == DISCARDED)

    def expected(self, step: Step) -> Answer:
        if step.expect == OK:
            return Answer(OK, dropped=self.dropped if step.stage is Stage.EOM else ())
        if step.expect == DISCARDED:
            return Answer(OK if step.stage is Stage.RCPT else "discard")
        e = catalogue.get(step.expect)
        return Answer.reply(e.code, e.enhanced, e.text)

    def check(self, step: Step, got: Answer) -> None:
        """The step got what the table says, or a message that names the line."""
        want = self.expected(step)
        assert got == want, (f"{step.where}: {step.command!r} in {self.name!r}: "
                             f"want {step.expect} {want}, got {got}")

    def message(self, step: Step, marker: str = "") -> Message:
        """The message of a "." step; ``marker`` goes in the Subject, to find it again."""
        sender = next((s.arg for s in self.steps if s.stage is Stage.MAIL), "<>")
        body = _LINE * math.ceil(step.size / len(_LINE)) if step.size else "Hello.\r\n"
        return Message((("From", sender), ("Subject", f"golden {self.name} {marker}".strip()),
                        ("Message-ID", f"<{marker or 'golden'}@client.test>")), body.encode())


class TableError(ValueError):
    """The golden table is malformed: path:line and what is wrong."""


def _step(command: str, expect: str, where: str) -> Step:
    verb = command.split(maxsplit=1)[0].upper()
    stage = STAGES.get(verb, Stage.UNKNOWN)
    if verb in MTA_VERBS:
        raise TableError(f"{where}: the MTA answers {verb} itself; no replayer can play it")
    if expect != OK:
        try:
            entry = catalogue.get(expect)
        except catalogue.UnknownEntry:
            raise TableError(f"{where}: no catalogue entry {expect!r}") from None
        outcome_ok = expect == DISCARDED and stage in (Stage.RCPT, Stage.EOM)
        if (entry.kind is not Kind.REPLY and not outcome_ok) or stage not in entry.stages:
            raise TableError(f"{where}: {expect} cannot answer {stage.value}")
    rest = command[len(verb):].strip()
    if stage is Stage.HELO:
        return Step(command, expect, where, stage, arg=rest)
    if stage is Stage.MAIL and (m := _MAIL.fullmatch(command)):
        return Step(command, expect, where, stage, arg=m[1], params=tuple(m[2].split()))
    if stage is Stage.RCPT and (m := _RCPT.fullmatch(command)):
        return Step(command, expect, where, stage, arg=m[1])
    if stage is Stage.DATA and not rest:
        return Step(command, expect, where, stage)
    if stage is Stage.EOM and (not rest or rest.isdigit()):
        return Step(command, expect, where, stage, size=int(rest or 0))
    if stage is Stage.UNKNOWN:
        return Step(command, expect, where, stage, arg=command)
    raise TableError(f"{where}: cannot read {command!r}")


def _check_order(steps: list[Step], where: str) -> None:
    """A refusal ends a session, but at RCPT (the transaction goes on); a DATA that passes
    is followed by the dot, and the dot by nothing else."""
    previous: Step | None = None
    for step in steps:
        if previous is not None and previous.refused and previous.stage is not Stage.RCPT:
            raise TableError(f"{step.where}: the session ended at {previous.command!r}")
        after_data = previous is not None and previous.stage is Stage.DATA
        if after_data != (step.stage is Stage.EOM):
            raise TableError(f'{step.where}: "." comes right after a DATA that passes, '
                             "and only there")
        previous = step
    if previous is None or (previous.stage is Stage.DATA and not previous.refused):
        raise TableError(f'{where}: a session needs steps, and a DATA that passes its "."')


def _session(name: str, where: str, header: dict[str, str], steps: list[Step]) -> Session:
    missing = {"client", "listener"} - header.keys()
    if missing:
        raise TableError(f"{where}: session {name!r} lacks {', '.join(sorted(missing))}")
    if header["listener"] not in LISTENERS:
        raise TableError(f"{where}: listener is one of {', '.join(LISTENERS)}")
    _check_order(steps, where)
    addr, _, client_name = header["client"].partition(" ")
    return Session(name, where, addr, client_name.strip(), header["listener"],
                   header.get("login", ""), header.get("postfix-answers-first", ""),
                   tuple(steps))


def load(path: Path) -> dict[str, Session]:
    """Every session of a table, by name, in the table's order."""
    sessions: dict[str, Session] = {}
    shown = path.relative_to(REPO) if path.is_relative_to(REPO) else path
    drafts: list[tuple[str, str, dict[str, str], list[Step]]] = []
    for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line, where = text.strip(), f"{shown}:{number}"
        if not line or line.startswith("#"):
            continue
        keyword, _, value = line.partition(" ")
        if keyword == "session":
            drafts.append((value.strip(), where, {}, []))
        elif not drafts:
            raise TableError(f"{where}: a session starts with its name")
        elif step := _STEP.fullmatch(line):
            drafts[-1][3].append(_step(step[1], step[2], where))
        elif keyword in ("client", "listener", "login", "postfix-answers-first"):
            _, _, header, steps = drafts[-1]
            if steps or keyword in header or not value.strip():
                raise TableError(f"{where}: {keyword} once, with a value, before the steps")
            header[keyword] = value.strip()
        else:
            raise TableError(f"{where}: neither a header line nor COMMAND -> EXPECTED")
    for name, where, header, steps in drafts:
        if name in sessions or not name:
            raise TableError(f"{where}: a session needs a name of its own")
        sessions[name] = _session(name, where, header, steps)
    return sessions


SESSIONS = load(PATH)
