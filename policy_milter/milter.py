"""The pymilter adapter: the only module that imports Milter.

It translates callbacks into Session calls and Decisions into replies, and negotiates
with the MTA only the callbacks, replies, actions and macros the loaded policy needs.

Bytes from the MTA reach the engine as UTF-8 decoded with ``surrogateescape``, whatever
they are, so that its parsers see undecodable bytes and refuse them with a catalogue
reply.  pymilter 1.0.5 hands MAIL and RCPT arguments to Milter.Base.envfrom_bytes and
envrcpt_bytes, which decode them so, and header values as bytes; macro values it decodes
as strict UTF-8, but the error carries the bytes.  HELO names, unknown commands, header
names and the client's host name it decodes as strict UTF-8 in C before any callback
runs, and answers bytes that are not UTF-8 with its own ``451 4.3.0 pymilter: untrapped
exception``: those errors are logged (_log_untrapped), but cannot get a catalogue reply.
"""

from __future__ import annotations

import functools
import os
import socket
import sys
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

import Milter
import milter as libmilter  # pymilter's C module: the exception policy

from . import catalogue, listen
from .decision import Action, Decision
from .engine import Engine, Outcome
from .log import DecisionLog
from .listen import Address, ListenError
from .stages import Stage

# Stage -> (pymilter callback name, "do not send" bit, "no reply" bit)
_CALLBACK_BITS = {
    Stage.CONNECT: (Milter.P_NOCONNECT, Milter.P_NR_CONN),
    Stage.HELO: (Milter.P_NOHELO, Milter.P_NR_HELO),
    Stage.MAIL: (Milter.P_NOMAIL, Milter.P_NR_MAIL),
    Stage.RCPT: (Milter.P_NORCPT, Milter.P_NR_RCPT),
    Stage.DATA: (Milter.P_NODATA, Milter.P_NR_DATA),
    Stage.UNKNOWN: (Milter.P_NOUNKNOWN, Milter.P_NR_UNKN),
    Stage.HEADER: (Milter.P_NOHDRS, Milter.P_NR_HDR),
    Stage.EOH: (Milter.P_NOEOH, Milter.P_NR_EOH),
    Stage.BODY: (Milter.P_NOBODY, Milter.P_NR_BODY),
}
_ACTION_BITS = {"addheader": Milter.ADDHDRS, "chgheader": Milter.CHGHDRS,
                "delrcpt": Milter.DELRCPT, "quarantine": Milter.QUARANTINE}
# The macros each stage reads; requested so the MTA sends these and nothing else.
MACROS = {
    Milter.M_CONNECT: "j {daemon_name}",
    Milter.M_HELO: "{tls_version}",
    Milter.M_ENVFROM: "i {auth_authen}",
    Milter.M_ENVRCPT: "i",
    Milter.M_DATA: "i",
    Milter.M_EOM: "i",
}
# pymilter gives each MTA connection a Python thread state of its own, so this holds the
# connection's session in whichever libmilter thread serves it.
_connection = threading.local()


def _text(value: str | bytes) -> str:
    """What the MTA sent, as the engine reads it: bytes that are not UTF-8 become lone
    surrogates, which its parsers treat as control characters."""
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


def _safe(stage: Stage) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Whatever goes wrong in the adapter itself is logged and answered with a tempfail."""
    def wrap(method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def wrapper(self: PolicyMilter, *args: Any) -> Any:
            try:
                return method(self, *args)
            except Exception as err:  # never let an exception reach libmilter
                self.log.internal_error(stage, self.session.conn, self.session.txn, err)
                if self._protocol & _CALLBACK_BITS.get(stage, (0, 0))[1]:
                    return Milter.NOREPLY
                self.setreply(*catalogue.DEFAULT_TEMPFAIL.setreply_args())
                return Milter.TEMPFAIL
        return wrapper
    return wrap


class PolicyMilter(Milter.Base):
    """One MTA connection.  Holds a Session; all policy lives in the engine."""

    def __init__(self, engine: Engine) -> None:
        self.session = engine.session()
        self.log: DecisionLog = engine.log
        self._protocol = 0
        _connection.session = self.session

    def negotiate(self, opts: list[int]) -> int:
        needs = self.session.plan.needs
        offered_actions, offered_protocol = opts[0], opts[1]
        wanted = 0
        noreply = needs.noreply - {Stage.CONNECT} if self.session.stopping else needs.noreply
        for stage, (no_bit, no_reply_bit) in _CALLBACK_BITS.items():
            if stage not in needs.callbacks:
                wanted |= no_bit
            elif stage in noreply:
                wanted |= no_reply_bit
        actions = Milter.SETSYMLIST
        for name in needs.actions:
            actions |= _ACTION_BITS[name]
        self._actions = offered_actions & actions
        self._protocol = offered_protocol & wanted
        opts[0], opts[1], opts[2], opts[3] = self._actions, self._protocol, 0, 0
        if self._actions & Milter.SETSYMLIST:
            for stage, macros in MACROS.items():
                # Milter.Base.setsymlist hands the C module bytes where it wants str
                # (pymilter 1.0.5), so the request goes to the context directly.
                self._ctx.setsymlist(stage, macros)
        return Milter.CONTINUE

    def _macro(self, name: str) -> str:
        try:
            return self.getsymval(name) or ""
        except UnicodeDecodeError as err:  # pymilter's strict decoding: err has the bytes
            return _text(err.object)

    def _answer(self, decision: Decision, stage: Stage) -> int:
        """The reply for a stage's decision.  Anything that is not continue, reject,
        tempfail or discard is the engine's mistake: logged, and answered with the
        catalogue's generic tempfail, never passed as continue."""
        action = decision.action
        if action is Action.CONTINUE:
            if self._protocol & _CALLBACK_BITS.get(stage, (0, 0))[1]:
                return Milter.NOREPLY
            return Milter.CONTINUE
        if (action is Action.REJECT or action is Action.TEMPFAIL) and decision.entry:
            self.setreply(*decision.entry.setreply_args())
            return Milter.REJECT if action is Action.REJECT else Milter.TEMPFAIL
        if action is Action.DISCARD:
            return Milter.DISCARD
        self.log.internal_error(stage, self.session.conn, self.session.txn,
                                ValueError(f"no reply for {action.value} at {stage.value}"))
        self.setreply(*catalogue.DEFAULT_TEMPFAIL.setreply_args())
        return Milter.TEMPFAIL

    @_safe(Stage.CONNECT)
    def connect(self, hostname: str, family: int, hostaddr: Any) -> int:
        address = None
        if family in (socket.AF_INET, socket.AF_INET6) and hostaddr:
            # libmilter gives (address, port[, ...]); Milter.testctx gives the address
            address = hostaddr if isinstance(hostaddr, str) else hostaddr[0]
        decision = self.session.connect(address, hostname or "", self._macro("{daemon_name}"),
                                        self._macro("j"))
        return self._answer(decision, Stage.CONNECT)

    @_safe(Stage.HELO)
    def hello(self, name: str | bytes) -> int:
        decision = self.session.helo(_text(name), bool(self._macro("{tls_version}")))
        return self._answer(decision, Stage.HELO)

    @_safe(Stage.MAIL)
    def envfrom(self, sender: str, *params: str) -> int:
        decision = self.session.mail(sender, params, self._macro("{auth_authen}"),
                                     self._macro("i"))
        return self._answer(decision, Stage.MAIL)

    @_safe(Stage.RCPT)
    def envrcpt(self, recipient: str, *params: str) -> int:
        return self._answer(self.session.rcpt(recipient, params, self._macro("i")), Stage.RCPT)

    @_safe(Stage.DATA)
    def data(self) -> int:
        return self._answer(self.session.data(self._macro("i")), Stage.DATA)

    @_safe(Stage.HEADER)
    def header_bytes(self, name: str | bytes, value: bytes) -> int:
        self.session.header(_text(name), value)
        return self._answer(Decision(Action.CONTINUE), Stage.HEADER)

    @_safe(Stage.BODY)
    def body(self, chunk: bytes) -> int:
        self.session.body(chunk)
        return self._answer(Decision(Action.CONTINUE), Stage.BODY)

    @_safe(Stage.UNKNOWN)
    def unknown(self, command: str | bytes) -> int:
        return self._answer(self.session.unknown(_text(command)), Stage.UNKNOWN)

    @_safe(Stage.EOM)
    def eom(self) -> int:
        outcome: Outcome = self.session.eom(self._macro("i"))
        if not outcome.decision.stops:
            for name, value in outcome.add_headers:
                self.addheader(name, value)
            for name, index, value in outcome.change_headers:
                self.chgheader(name, index, value)
            for rcpt in outcome.delete_recipients:
                self.delrcpt(rcpt)
            if outcome.quarantine:
                self.quarantine(outcome.quarantine)
        return self._answer(outcome.decision, Stage.EOM)

    def abort(self) -> int:
        self.session.abort()
        return Milter.CONTINUE

    def close(self) -> int:
        self.session.close()
        return Milter.CONTINUE


def _log_untrapped(log: DecisionLog) -> Callable[..., None]:
    """A sys.excepthook for the errors pymilter's C layer raises before a callback runs,
    which it prints with PyErr_Print() and answers with its own tempfail: they are logged
    like any internal error, with the session they happened in (and so the bytes that
    were not UTF-8, which the error carries)."""
    previous = sys.excepthook

    def hook(kind: type[BaseException], err: BaseException,
             trace: TracebackType | None) -> None:
        session = getattr(_connection, "session", None)
        if session is None:  # not in an MTA connection
            previous(kind, err, trace)
        else:
            log.internal_error(None, session.conn, session.txn, err)
    return hook


def open_socket(address: Address, socket_mode: int, name: str = "policy-milter") -> int:
    """Bind the socket libmilter will serve, before its loop starts: a failure is then
    reported with the address and the reason (ListenError), and a unix socket gets
    ``socket_mode`` by chmod, the process umask never touched.  Returns the listening
    descriptor (workers share it)."""
    listen.prepare(address)
    libmilter.register(name)  # libmilter opens sockets for a registered milter only
    libmilter.setconn(address.spec)
    before = _sockets()
    try:
        libmilter.opensocket(True)  # replaces a stale socket; runmilter's own is a no-op
    except libmilter.error:
        raise ListenError(f"cannot listen on {address.spec}: "
                          f"{listen.why_not(address)}") from None
    if address.family == "unix":
        os.chmod(address.path, socket_mode)
    # libmilter does not say which it opened; another thread (a redelivery) may be opening
    # sockets of its own meanwhile, but none that listens
    [listening] = [fd for fd in _sockets() - before if _listens(fd)]
    return listening


def _listens(fd: int) -> bool:
    """Whether the socket descriptor ``fd`` is a listening one (False once it is closed)."""
    try:
        with socket.socket(fileno=os.dup(fd)) as sock:
            return bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
    except OSError:
        return False


def _sockets() -> set[int]:
    """The process's socket descriptors (the listing's own descriptor is not one)."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                found.add(int(fd))
        except OSError:  # closed meanwhile: the listing's own
            continue
    return found


def serve(engine: Engine, address: Address, name: str = "policy-milter",
          timeout: int = 600) -> None:
    """Serve the socket open_socket() bound until the process ends; blocks the thread."""
    Milter.factory = lambda: PolicyMilter(engine)
    libmilter.set_exception_policy(Milter.TEMPFAIL)
    sys.excepthook = _log_untrapped(engine.log)
    Milter.runmilter(name, address.spec, timeout)
