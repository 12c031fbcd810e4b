"""``policy-milter run``: the socket bound, libmilter served, signals obeyed.

libmilter starts a thread of its own that sigwait()s for SIGHUP, SIGTERM and SIGINT and
stops the milter on any of them.  So every thread blocks those signals and the main
thread does nothing but wait for them, handing each to a control thread that reloads
or stops: the main thread is back in sigwait() within microseconds, and Linux gives a
process-directed signal to the thread group leader whenever it waits for it, so libmilter
never sees one.  The control thread logs the start and tells systemd READY only once
the socket is bound and the main thread is waiting.
"""

from __future__ import annotations

import gc
import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__
from .engine import Engine
from .listen import ListenError
from .log import DecisionLog, reopen
from .notify import notify
from .rules.policy import load
from .rules.source import RuleErrors
from .services import DependencyError, in_background
from .services.health import unreachable

if TYPE_CHECKING:
    from .listen import Address

SIGNALS = {signal.SIGHUP, signal.SIGTERM, signal.SIGINT}
DONE = signal.SIGUSR1  # from the control thread to the main thread: leave
ENDED = 0  # queued when libmilter's loop returns
GRACE = 30.0  # seconds open sessions get to finish after SIGTERM


class StartError(Exception):
    """The milter could not start; the message names the address or path and why."""


def settle() -> None:
    """Take the loaded rules out of the cyclic garbage collector's sight.

    A full collection walks every tracked object, so with a large access list it would
    cost time in proportion to the list; frozen objects are skipped, and reference
    counting still frees them once a reload replaces them.  Unfreezing first lets a
    collection reclaim whatever the previous rules left in cycles.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()


class Server:
    """One milter process: ``serve()`` binds and returns once it has stopped.  A worker
    (``worker`` > 0, workers.py) runs on the socket its parent bound: ``run()``; the
    parent logs the start, tells systemd and removes a unix socket at the end."""

    def __init__(self, engine: Engine, log: DecisionLog, rules: str, address: Address,
                 socket_mode: int, timeout: int, worker: int = 0) -> None:
        self.engine, self.log, self.rules = engine, log, rules
        self.address, self.socket_mode, self.timeout = address, socket_mode, timeout
        self.worker = worker
        self.metrics_address = engine.plan.policy.settings.metrics  # as served until restart
        self.error: BaseException | None = None
        self._commands: queue.SimpleQueue[int] = queue.SimpleQueue()

    def serve(self) -> bool:
        """Bind (StartError if that fails), serve, and obey signals until stopped; False
        when it stopped on an error (logged)."""
        from .milter import open_socket  # pymilter is loaded only when serving

        signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS | {DONE})  # every thread inherits
        try:
            open_socket(self.address, self.socket_mode)
            if self.metrics_address is not None:
                self.log.metrics.serve(self.metrics_address)
        except ListenError as err:
            raise StartError(str(err)) from None
        return self.run()

    def run(self) -> bool:
        """Serve the bound socket until stopped; False when it stopped on an error."""
        from .milter import serve

        signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS | {DONE})
        self.log.metrics.sessions(lambda: self.engine.open_sessions)
        threading.Thread(target=self._milter, args=(serve,), name="libmilter",
                         daemon=True).start()
        main = threading.get_native_id()
        control = threading.Thread(target=self._control, args=(main,), name="control")
        control.start()
        while (sig := signal.sigwait(SIGNALS | {DONE})) != DONE:
            self._commands.put(sig)
        control.join()
        if self.error is not None:
            self.log.event("error", level=logging.ERROR, error=str(self.error))
        return self.error is None

    def _milter(self, serve: Callable[..., None]) -> None:
        try:
            serve(self.engine, self.address, timeout=self.timeout)
        except Exception as err:  # libmilter failing to run ends the process
            self.error = err
        finally:
            self._commands.put(ENDED)

    def _control(self, main: int) -> None:
        try:
            _await_sigwait(main)
            if self.worker:
                self.log.event("worker_start", pid=os.getpid(),
                               rules_hash=self.engine.plan.policy.digest)
            else:
                self.log.event("start", version=__version__, socket=self.address.spec,
                               rules=self.rules, pid=os.getpid(),
                               rules_hash=self.engine.plan.policy.digest,
                               metrics=self.metrics_address.spec if self.metrics_address
                               else "")
                notify("READY=1", f"STATUS=serving {self.address.spec}")
            if self.worker <= 1:  # one process warns, not each worker
                in_background(self._probe)
            while (sig := self._commands.get()) != ENDED:
                if sig == signal.SIGHUP:
                    self.reload()
                else:
                    self._stop(signal.Signals(sig).name)
                    break
            else:
                self.error = self.error or RuntimeError("libmilter stopped serving unasked")
        finally:
            signal.pthread_kill(threading.main_thread().ident or 0, DONE)

    def _stop(self, name: str) -> None:
        """libmilter's stop() holds up the sessions still open until its workers time out,
        so new connections are told to retry instead, open ones finish, and then the
        process leaves (the MTA's default action covers whatever comes after)."""
        notify("STOPPING=1")
        self.log.event("stop", signal=name, open_sessions=self.engine.open_sessions)
        self.engine.stopping = True
        deadline = time.monotonic() + GRACE
        while self.engine.open_sessions > 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.address.family == "unix" and not self.worker:  # the parent's, in workers
            Path(self.address.path).unlink(missing_ok=True)

    def _probe(self) -> None:
        """Warn of each service the rules name that does not answer now."""
        plan = self.engine.plan
        for down in unreachable(plan.policy, plan.live):
            self.log.event("unreachable", level=logging.WARNING, service=down.service,
                           address=down.address, error=down.reason,
                           action="each message that needs it gets its failure action")

    def reload(self) -> None:
        """New rules for new sessions; rules that fail to load keep the old ones."""
        notify("RELOADING=1")
        reopen(self.log.logger)
        started = time.perf_counter()
        try:
            policy = load(self.rules)
            self.engine.reload(policy)
        except Exception as err:  # a reload that fails keeps the rules in force
            log_failed_reload(self.log, err.errors if isinstance(err, RuleErrors) else [
                str(err) if isinstance(err, DependencyError) else repr(err)])
            self.log.metrics.reload_failed()
            notify("READY=1", "STATUS=reload failed: previous rules kept")
            return
        settle()
        if policy.settings.metrics != self.metrics_address:
            self.log.event("reload_warning", level=logging.WARNING,
                           detail=f"{policy.where['metrics']}: a changed metrics address "
                                  "takes effect at the next start")
        self.log.metrics.rules(self.rules, policy.digest, time.perf_counter() - started)
        self.log.event("reload", status="ok", rules=self.rules, rules_hash=policy.digest)
        notify("READY=1", f"STATUS=serving {self.address.spec}")
        if self.worker <= 1:
            in_background(self._probe)


def log_failed_reload(log: DecisionLog, problems: list[str]) -> None:
    """One line per problem, then the reload's own line: the old rules stay."""
    for line in problems:
        log.event("reload_error", level=logging.ERROR, error=line)
    log.event("reload", level=logging.ERROR, status="failed", errors=len(problems),
              kept="previous rules")


def _await_sigwait(thread: int, timeout: float = 2.0) -> None:
    """Return once ``thread`` waits in sigwait(): the kernel then shows the signals it
    waits for as unblocked in its mask, which SIGNALS otherwise never are."""
    status = Path(f"/proc/self/task/{thread}/status")
    wanted = sum(1 << (sig - 1) for sig in SIGNALS)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            blocked = next(int(line.split()[1], 16) for line in status.read_text().splitlines()
                           if line.startswith("SigBlk:"))
        except (OSError, StopIteration, ValueError):
            return  # no /proc: the window is a few microseconds anyway
        if not blocked & wanted:
            return
        time.sleep(0.001)
