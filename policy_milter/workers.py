"""``workers = N``: one parent binds the socket, N forked workers serve it, so that the
milter uses N cores (one Python process runs its policy on about one).

The parent never serves mail: it binds, forks, and supervises.  A worker that dies is
logged and replaced; SIGHUP is checked by the parent first (rules with errors keep the old
ones in every worker) and then passed to every worker; SIGTERM is passed on, and each
worker lets its open sessions finish.  Workers leave with os._exit() while libmilter
still runs, so libmilter never removes the unix socket the others serve; the parent does,
at the end.  The listening socket is non-blocking: a worker that loses the race for a
connection returns to its wait instead of sleeping in accept() through a stop.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from . import __version__
from .engine import Engine
from .listen import Address, ListenError
from .log import DecisionLog, reopen, tag_worker
from .notify import notify
from .rules.policy import Policy, load
from .rules.source import RuleErrors
from .server import GRACE, SIGNALS, Server, StartError, log_failed_reload

RESPAWN_PAUSE = 1.0  # seconds between replacing a worker and the next, if they keep dying


class Supervisor:
    """The parent of ``count`` workers; ``serve()`` returns once all have stopped."""

    def __init__(self, policy: Policy, build: Callable[[Policy, int], Engine], log: DecisionLog,
                 rules: str, address: Address, socket_mode: int, timeout: int,
                 count: int) -> None:
        self.policy, self.build, self.log, self.rules = policy, build, log, rules
        self.address, self.socket_mode, self.timeout = address, socket_mode, timeout
        self.count = count
        self.workers: dict[int, int] = {}  # pid -> worker number
        self.stopping = False
        self._last_spawn = 0.0

    def serve(self) -> bool:
        """Bind (StartError if that fails), start the workers and supervise them."""
        from .milter import open_socket

        signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS | {signal.SIGCHLD})
        try:
            listening = open_socket(self.address, self.socket_mode)
        except ListenError as err:
            raise StartError(str(err)) from None
        os.set_blocking(listening, False)
        for number in range(1, self.count + 1):
            self._fork(number)
        self.log.event("start", version=__version__, socket=self.address.spec,
                       rules=self.rules, pid=os.getpid(), rules_hash=self.policy.digest,
                       workers=self.count)
        notify("READY=1", f"STATUS=serving {self.address.spec} with {self.count} workers")
        clean = True
        while self.workers:
            sig = signal.sigwait(SIGNALS | {signal.SIGCHLD})
            if sig == signal.SIGCHLD:
                clean &= self._reap()
            elif sig == signal.SIGHUP and not self.stopping:
                self._reload()
            elif sig in (signal.SIGTERM, signal.SIGINT) and not self.stopping:
                self._stop(signal.Signals(sig).name)
        if self.address.family == "unix":
            Path(self.address.path).unlink(missing_ok=True)
        return clean

    def _replace(self, number: int) -> None:
        pause = self._last_spawn + RESPAWN_PAUSE - time.monotonic()
        if pause > 0:
            time.sleep(pause)  # a worker that dies at once must not make a fork loop
        self._last_spawn = time.monotonic()
        self._fork(number)

    def _fork(self, number: int) -> None:
        pid = os.fork()
        if pid:
            self.workers[pid] = number
            return
        os._exit(self._work(number))  # never returns into the parent's code

    def _work(self, number: int) -> int:
        """The worker process: its own engine (services and store connections are not
        shared across fork), its own threads, the parent's socket."""
        os.environ.pop("NOTIFY_SOCKET", None)  # only the parent speaks to systemd
        tag_worker(self.log.logger, number)
        try:
            engine = self.build(self.policy, number)
            server = Server(engine, self.log, self.rules, self.address, self.socket_mode,
                            self.timeout, worker=number)
            return 0 if server.run() else 3
        except BaseException as err:  # a worker must not return into the parent's loop
            self.log.event("error", level=logging.ERROR, error=repr(err))
            return 3

    def _reap(self) -> bool:
        """Collect the workers that ended; replace them unless stopping.  False if one
        ended on an error while stopping (one that dies before is logged and replaced)."""
        clean = True
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return clean
            if pid == 0:
                return clean
            number = self.workers.pop(pid, None)
            if number is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            expected = self.stopping and code == 0
            clean &= code == 0 or not self.stopping
            self.log.event("worker_exit", level=logging.INFO if expected else logging.ERROR,
                           worker=number, pid=pid, status=code,
                           action="none" if self.stopping else "replaced")
            if not self.stopping:
                self._replace(number)

    def _reload(self) -> None:
        """Rules with errors are refused here, so every worker keeps the same rules."""
        reopen(self.log.logger)
        try:
            self.policy = load(self.rules)
        except RuleErrors as err:
            log_failed_reload(self.log, err.errors)
            return
        self.log.event("reload", status="passed on", rules=self.rules,
                       rules_hash=self.policy.digest, workers=len(self.workers))
        for pid in self.workers:
            os.kill(pid, signal.SIGHUP)

    def _stop(self, name: str) -> None:
        notify("STOPPING=1")
        self.stopping = True
        self.log.event("stop", signal=name, workers=len(self.workers))
        for pid in self.workers:
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + GRACE + 5
        while self.workers and (left := deadline - time.monotonic()) > 0:
            if signal.sigtimedwait({signal.SIGCHLD}, left) is not None:
                self._reap()
        for pid, number in self.workers.items():  # past the grace period
            self.log.event("worker_killed", level=logging.ERROR, worker=number, pid=pid)
            os.kill(pid, signal.SIGKILL)
