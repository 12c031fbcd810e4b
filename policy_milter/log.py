"""The log line format: one logfmt line per decision, safe for any input.

    event=decision qid=4ZxK1 stage=rcpt client=192.0.2.7 client_name=mx.example.net
    helo=mx.example.net sender=a@example.net rcpt=b@example.com rule=rules/access:12
    check=access action=reject reply="..." monitor=no
    duration_ms=0.180 detail="..." rules_hash=3f2a9c0d51e7 entry=access_denied

(one line in the log, ending ``session=...``; ``reply`` is the catalogue entry's reply
line and ``entry`` its name; ``session`` names the connection, since the MTA may give
no queue id before the first recipient is accepted; ``rules_hash`` the short hash of the rules that decided, which the
start and reload lines print with the rules directory).  Decisions at DATA and end of message
name the recipients they apply to, comma-separated.  Each transaction also gets one
``event=envelope`` line when it ends (see transcript.py): what a replay needs.

Values are quoted when they need it; quotes, backslashes,
control characters and undecodable bytes are escaped, so a hostile HELO cannot forge a
line, and each value is cut at MAX_VALUE characters, so it cannot make a line huge either.
Field names never change meaning; new fields are only added at the end.
"""

from __future__ import annotations

import logging
import logging.handlers
import re
import socket
import sys
import time
import traceback
from typing import TYPE_CHECKING, Any

from .metrics import OFF, Metrics

if TYPE_CHECKING:  # the log only formats them; services import the log
    from .decision import Decision
    from .envelope import Resolved
    from .model import Connection, Transaction
    from .stages import Stage
    from .transcript import Envelope

LOGGER = "policy_milter"
_BARE = re.compile(r"[!#-<>-\[\]-~]+")  # printable ASCII but space, '"', '=', '\\'
_PLAIN = re.compile(r"[ -~]*")  # printable ASCII
_ESCAPE = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
MAX_VALUE = 1000  # characters of one value; the rest is replaced by a count
SYSLOG = "/dev/log"
MAX_TRACE = 8000  # of a traceback, for its innermost frames (error= has the error)


def quote(value: object, limit: int = MAX_VALUE) -> str:
    """A logfmt value: bare when safe, else double-quoted with escapes.

    Text beyond ``limit`` characters is cut before escaping (so never inside an escape)
    and replaced by ``...[+N chars]``.
    """
    text = value if type(value) is str else str(value)
    if len(text) > limit:
        text = f"{text[:limit]}...[+{len(text) - limit} chars]"
    if _BARE.fullmatch(text):
        return text
    if _PLAIN.fullmatch(text):  # the usual case: only quotes and backslashes to escape
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    out = []
    for ch in text:
        if ch in _ESCAPE:
            out.append(_ESCAPE[ch])
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(_escape_code(ord(ch)))
    return '"' + "".join(out) + '"'


def _escape_code(code: int) -> str:
    """An undecodable byte (a lone surrogate from surrogateescape) as ``\\xHH``, any other
    character by its code point, in as many digits as Python's escapes take."""
    if 0xDC80 <= code <= 0xDCFF:
        return f"\\x{code - 0xDC00:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def fields(**values: Any) -> str:
    """``key=value`` pairs; an empty or bare string value (the most) skips quote()'s call."""
    parts = []
    for k, v in values.items():
        if type(v) is str and (not v or (len(v) <= MAX_VALUE and _BARE.fullmatch(v))):
            parts.append(f'{k}=""' if not v else f"{k}={v}")
        else:
            parts.append(f"{k}={quote(v)}")
    return " ".join(parts)


def _address(addr: Resolved | None) -> str:
    return "" if addr is None else (addr.key or "<>")


def _recipients(addrs: tuple[Resolved, ...] | list[Resolved]) -> str:
    return ",".join(_address(r) for r in addrs)


class DecisionLog:
    """Writes the milter's log lines through the standard logging module."""

    def __init__(self, logger: logging.Logger | None = None, metrics: Metrics = OFF) -> None:
        self.logger = logger or logging.getLogger(LOGGER)
        self.metrics = metrics  # counts what the log lines tell

    def _session(self, conn: Connection, txn: Transaction | None) -> dict[str, Any]:
        return {
            "qid": txn.queue_id if txn else "",
            "client": conn.client,
            "client_name": conn.client_name,
            "helo": conn.helo or "",
            "sender": _address(txn.sender) if txn else "",
        }

    def decision(self, stage: Stage, conn: Connection, txn: Transaction | None,
                 rcpt: Resolved | None, decision: Decision, started: float) -> None:
        self.metrics.decision(stage, decision)
        if not self.logger.isEnabledFor(logging.INFO):
            return  # nobody reads it: skip the formatting
        self.logger.info(fields(
            event="decision", stage=stage.value, **self._session(conn, txn),
            rcpt=_recipients(decision.recipients or txn.recipients)
            if txn is not None and stage.of_message else _address(rcpt),
            rule=decision.rule, check=decision.check,
            action=decision.action.value, reply=decision.reply_line(),
            monitor="yes" if decision.monitor else "no",
            duration_ms=f"{(time.perf_counter() - started) * 1000:.3f}",
            detail=decision.detail, rules_hash=conn.rules_hash,
            entry=decision.entry.name if decision.entry else "", session=conn.session_id))

    def accepted(self, conn: Connection, txn: Transaction, quarantine: str,
                 started: float) -> None:
        self.metrics.accepted(bool(quarantine))
        if not self.logger.isEnabledFor(logging.INFO):
            return
        self.logger.info(fields(
            event="decision", stage="eom", **self._session(conn, txn),
            rcpt=_recipients(txn.recipients), rule="", check="",
            action="quarantine" if quarantine else "accept", reply="", monitor="no",
            duration_ms=f"{(time.perf_counter() - started) * 1000:.3f}",
            detail=quarantine, rules_hash=conn.rules_hash, entry="", session=conn.session_id))

    def envelope(self, conn: Connection, txn: Transaction | None, env: Envelope) -> None:
        """The transaction's envelope and answers, once, when it ends (transcript.py)."""
        if not self.logger.isEnabledFor(logging.INFO):
            return
        rcpts, omitted = env.rcpts_json()
        session = self._session(conn, txn)
        session["qid"] = session["qid"] or env.queue_id
        self.logger.info(fields(
            event="envelope", **session,
            listener=conn.listener, login=conn.auth_login, tls="yes" if conn.tls else "no",
            mail_from=env.mail_from, params=" ".join(env.params),
            size="" if txn is None or txn.declared_size is None else txn.declared_size,
            result=env.result, stage=env.stage, rule=env.rule)
            + f" rcpts={quote(rcpts, len(rcpts))} rcpts_omitted={omitted} "
            + fields(rules_hash=conn.rules_hash, session=conn.session_id))

    def internal_error(self, stage: Stage | None, conn: Connection, txn: Transaction | None,
                       err: BaseException) -> None:
        """``stage`` None: raised where the stage is not known (in pymilter's C layer)."""
        self.metrics.failure("internal", stage.value if stage else "", "")
        trace = "".join(traceback.format_exception(err)).strip()
        self.logger.error(fields(event="internal_error", stage=stage.value if stage else "",
                                 **self._session(conn, txn), error=repr(err))
                          + f" trace={quote(trace, MAX_TRACE)} session={quote(conn.session_id)}")

    def dependency_failure(self, check: str, service: str, conn: Connection,
                           txn: Transaction | None, detail: str, action: str, rule: str) -> None:
        """A check's dependency failed; ``rule`` is where the failure setting applied is."""
        self.metrics.failure("dependency", check, service)
        self.logger.warning(fields(event="dependency_failure", check=check, service=service,
                                   **self._session(conn, txn), action=action, rule=rule,
                                   detail=detail, session=conn.session_id))

    def not_checked(self, check: str, conn: Connection, txn: Transaction | None, cause: str,
                    action: str, rule: str) -> None:
        """A check could not look at the whole message; ``rule`` is unscannable_action's."""
        self.metrics.failure("not_checked", check, "")
        self.logger.warning(fields(event="not_checked", check=check, **self._session(conn, txn),
                                   action=action, rule=rule, detail=cause,
                                   session=conn.session_id))

    def checked(self, stage: Stage, conn: Connection, txn: Transaction | None,
                rcpt: Resolved | None, check: str, decision: Decision | None,
                seconds: float) -> None:
        """At debug level: one check's answer (None: a white entry skipped it)."""
        answer = "skipped" if decision is None else decision.action.value
        self.logger.debug(fields(
            event="check", stage=stage.value, **self._session(conn, txn),
            rcpt=_address(rcpt), check=check, answer=answer,
            rule=decision.rule if decision else "",
            entry=decision.entry.name if decision and decision.entry else "",
            duration_ms=f"{seconds * 1000:.3f}", session=conn.session_id))

    def event(self, event: str, level: int = logging.INFO, **values: Any) -> None:
        self.logger.log(level, fields(event=event, **values))


class _Formatter(logging.Formatter):
    def __init__(self, stamped: bool) -> None:
        super().__init__()
        self.stamped = stamped
        self.tag = ""  # worker=N in a worker process
        self._second = (-1, "")  # the last second formatted: lines come many a second

    def format(self, record: logging.LogRecord) -> str:
        head = f"level={record.levelname.lower()} {self.tag}{record.getMessage()}"
        if not self.stamped:
            return f"policy-milter: {head}"
        second = int(record.created)
        if second != self._second[0]:
            self._second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
        return f"ts={self._second[1]}.{int(record.msecs):03d}Z {head}"


def configure(target: str, level: str = "info") -> logging.Logger:
    """``stderr``, ``syslog`` (or ``syslog:FACILITY``), or ``file:PATH`` (reopened on
    SIGHUP, which logrotate sends after moving it: no stat() for every line)."""
    # The record fields no line uses, each of which costs work per line; _srcfile = None
    # skips the walk up the stack for the caller's file and line (the logging HOWTO's
    # own advice for speed).
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging._srcfile = None
    logger = logging.getLogger(LOGGER)
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(level.upper())
    handler = _handler(target)
    handler.setFormatter(_Formatter(stamped=not target.startswith("syslog")))
    logger.addHandler(handler)
    return logger


class LogTargetError(ValueError):
    """A --log value that names no destination (a usage error, unlike an unwritable file)."""


def log_target(text: str) -> str:
    """``text`` if it names a destination configure() takes."""
    if text == "stderr" or (text.startswith("file:") and text != "file:"):
        return text
    if text == "syslog" or text.startswith("syslog:"):
        facility = text.partition(":")[2] if ":" in text else "mail"
        names = logging.handlers.SysLogHandler.facility_names
        if facility not in names:
            raise LogTargetError(f"'{text}': unknown syslog facility '{facility}' (one of: "
                                 f"{', '.join(sorted(names))})")
        return text
    raise LogTargetError(f"'{text}' is not stderr, syslog[:FACILITY] or file:PATH")


def _reach_syslog() -> None:
    """Connect to syslog as SysLogHandler does (datagram, then stream), which does not
    say when it cannot."""
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_UNIX, kind) as sock:
            try:
                sock.connect(SYSLOG)
                return
            except OSError as err:
                reason = err.strerror
    raise OSError(f"cannot log to syslog at {SYSLOG}: {reason}")


def _handler(target: str) -> logging.Handler:
    log_target(target)
    if target == "stderr":
        return logging.StreamHandler(sys.stderr)
    if target.startswith("syslog"):
        names = logging.handlers.SysLogHandler.facility_names
        _reach_syslog()  # else every line would print a traceback to stderr
        return logging.handlers.SysLogHandler(SYSLOG, names[target.partition(":")[2] or "mail"])
    path = target[len("file:"):]
    try:
        return logging.FileHandler(path)
    except OSError as err:  # the one-line reason, without the errno noise
        raise OSError(f"cannot write the log file {path}: {err.strerror}") from None


def tag_worker(logger: logging.Logger, number: int) -> None:
    """Every line of a worker process names it (``worker=N`` after the level)."""
    for handler in logger.handlers:
        if isinstance(handler.formatter, _Formatter):
            handler.formatter.tag = f"worker={number} "


def reopen(logger: logging.Logger) -> None:
    """Reopen log files, so that a file logrotate moved away is written no more."""
    for handler in logger.handlers:
        if isinstance(handler, logging.FileHandler):
            with handler.lock:  # type: ignore[union-attr]
                handler.close()
                handler.stream = handler._open()
