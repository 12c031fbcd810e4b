"""Command line: ``policy-milter run | check | test | ping | explain | replay | report |
challenges | catalogue | checks``.

Exit codes: 0 success (for ``check``: no problem, or warnings only); 1 the rules have errors
(each printed as path:line: message), or ``check`` found a Postfix setting that makes every
message fail or pass unchecked, or (``--strict``) any warning; 2 bad command-line usage, or
a Postfix configuration that cannot be read; 3 the milter could not start or stopped on an
error.  ``test`` exits by the session's outcome instead (offline/play.py: OUTCOMES).
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from . import __version__, catalogue, postconf
from .checks import challenge, order
from .engine import Engine
from .log import DecisionLog, configure, reopen
from .offline import commands
from .report import moment, produce
from .rules import lint
from .rules.policy import Policy, load
from .rules.source import RuleErrors
from .services import DependencyError, in_background
from .services.challenges import SqliteChallengeStore
from .services.factory import smtp_mailer

DEFAULT_RULES = "/etc/policy-milter"
DEFAULT_SOCKET = "inet:8894@127.0.0.1"
LOOPBACK = {"inet": "127.0.0.1", "inet6": "[::1]"}  # the host of inet:PORT, inet6:PORT
EXIT_RULES, EXIT_USAGE, EXIT_RUNTIME = 1, 2, 3


def _socket_spec(text: str) -> str:
    """A libmilter socket spec; ``inet:PORT`` means loopback, where libmilter would listen
    on every interface."""
    if re.fullmatch(r"inet6?:\d+", text):
        return f"{text}@{LOOPBACK[text.partition(':')[0]]}"
    if re.fullmatch(r"unix:/.+|local:/.+|inet6?:\d+@.+", text):
        return text
    raise argparse.ArgumentTypeError(f"'{text}' is not inet:PORT@HOST, inet6:PORT@HOST or "
                                     "unix:/PATH")


def _mode(text: str) -> int:
    if re.fullmatch(r"0?[0-7]{3}", text):
        return int(text, 8)
    raise argparse.ArgumentTypeError(f"'{text}' is not an octal mode like 660")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="policy-milter", description=__doc__.split("\n")[0])
    top.add_argument("--version", action="version", version=f"policy-milter {__version__}")
    sub = top.add_subparsers(dest="command", required=True)
    rules_help = f"rules directory holding policy.conf (default {DEFAULT_RULES})"
    sub.add_parser("catalogue", help="print every reply the milter can send (markdown)")
    sub.add_parser("checks", help="print the order of checks (markdown)")
    check = sub.add_parser("check", help="validate the rules, warn of mistakes in their meaning "
                                         "and print a summary")
    check.add_argument("--rules", default=DEFAULT_RULES, help=rules_help)
    check.add_argument("--strict", action="store_true", help="warnings are errors (exit 1)")
    check.add_argument("--postfix", nargs="*", metavar="FILE",
                       help="check Postfix too: postconf -n and -M, or a main.cf and a master.cf")
    check.add_argument("--postfix-config", metavar="DIR", help="run postconf -c DIR")
    check.add_argument("--socket", type=_socket_spec, default=DEFAULT_SOCKET,
                       help=f"the milter's socket, as run --socket (default {DEFAULT_SOCKET})")
    held = sub.add_parser("challenges", help="list, release, drop or expire held mail")
    held.add_argument("--rules", default=DEFAULT_RULES, help=rules_help)
    held.add_argument("action", choices=["list", "release", "drop", "expire"])
    held.add_argument("id", nargs="?", help="the held message (release, drop)")
    report = sub.add_parser("report", help="summarise decision logs (text, JSON or HTML)")
    report.add_argument("logs", nargs="*", default=["-"], metavar="LOG",
                        help="log files, as the milter or syslog wrote them (default: stdin)")
    report.add_argument("--since", type=moment, metavar="WHEN",
                        help="from: 2026-11-30, 2026-11-30T14:00, 24h")
    report.add_argument("--until", type=moment, metavar="WHEN",
                        help="up to (not including), the same forms")
    report.add_argument("--rules", metavar="DIR",
                        help="the rules directory: list its rules that never matched")
    report.add_argument("--top", type=int, default=10, metavar="N",
                        help="rows of each top list (default 10; 0: all)")
    report.add_argument("--json", action="store_true", help="JSON on stdout instead of text")
    report.add_argument("--html", metavar="FILE", help="also write the report as one HTML page")
    run = sub.add_parser("run", help="serve the MTA")
    run.add_argument("--rules", default=DEFAULT_RULES, help=rules_help)
    run.add_argument("--socket", type=_socket_spec, default=DEFAULT_SOCKET,
                     help="where the MTA connects: inet:PORT@HOST, inet6:PORT@HOST or "
                          "unix:/PATH; inet:PORT and inet6:PORT mean loopback "
                          f"(default {DEFAULT_SOCKET})")
    run.add_argument("--socket-mode", type=_mode, default=0o660,
                     help="permissions of a unix socket (default 660); a missing directory "
                          "for it is made 750")
    run.add_argument("--log", default="stderr",
                     help="stderr (default), syslog[:FACILITY] or file:PATH")
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    run.add_argument("--timeout", type=int, default=600,
                     help="seconds to wait for the MTA before dropping a connection")
    commands.add_parsers(sub, DEFAULT_RULES, _socket_spec)
    return top


def _load(rules: str) -> Policy | None:
    try:
        return load(rules)
    except RuleErrors as err:
        for line in err.errors:
            print(line, file=sys.stderr)
        print(f"{len(err.errors)} error(s) in {rules}", file=sys.stderr)
        return None


def check(args: argparse.Namespace) -> int:
    policy = _load(args.rules)
    if policy is None:
        return EXIT_RULES
    found = lint.check(policy)
    if args.postfix is not None or args.postfix_config:
        try:
            found += postconf.check(policy, args.socket, args.postfix or [], args.postfix_config)
        except postconf.PostfixError as err:
            print(f"policy-milter: {err}", file=sys.stderr)
            return EXIT_USAGE
    print("\n".join(policy.summary()), flush=True)
    for finding in found:
        print(finding.line(args.strict), file=sys.stderr)
    errors = sum(f.fatal or args.strict for f in found)
    if found:
        print(f"{errors} error(s), {len(found) - errors} warning(s)", file=sys.stderr)
    return EXIT_RULES if errors else 0


def challenges(args: argparse.Namespace) -> int:
    """The admin's side of challenge-response; the milter may be running meanwhile."""
    policy = _load(args.rules)
    if policy is None:
        return EXIT_RULES
    settings = policy.settings
    if not settings.challenge_store:
        print(f"policy-milter: challenge-response is off in {args.rules}", file=sys.stderr)
        return EXIT_USAGE
    if args.action in ("release", "drop") and not args.id:
        print(f"policy-milter: {args.action} needs the id of a held message", file=sys.stderr)
        return EXIT_USAGE
    log = DecisionLog(configure("stderr"))
    try:
        store = SqliteChallengeStore(Path(settings.challenge_store))
        if args.action == "list":
            for held in store.pending():
                queued = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(held.queued_at))
                print(f"{held.id} {queued} {held.size} {held.sender} -> {held.recipient}")
            return 0
        if args.action == "expire":
            print(f"expired {len(store.expire(settings.challenge_expire))} held message(s)")
            return 0
        if args.action == "drop":
            found = store.drop(args.id)
        else:
            entry = store.release(args.id)
            found = entry is not None and challenge.release(store, smtp_mailer(policy), log,
                                                            entry)
    except DependencyError as err:
        print(f"policy-milter: {err}", file=sys.stderr)
        return EXIT_RUNTIME
    if not found:
        print(f"policy-milter: no held message {args.id} could be {args.action}ed",
              file=sys.stderr)
        return EXIT_RUNTIME
    return 0


def report(args: argparse.Namespace) -> int:
    policy = _load(args.rules) if args.rules else None
    if args.rules and policy is None:
        return EXIT_RULES
    try:
        print(produce(args.logs, args.since, args.until, policy, args.top, args.json,
                      args.html), end="")
    except OSError as err:
        print(f"policy-milter: {err}", file=sys.stderr)
        return EXIT_USAGE
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        log = DecisionLog(configure(args.log, args.log_level))
    except (ValueError, OSError) as err:
        print(f"policy-milter: cannot log to {args.log}: {err}", file=sys.stderr)
        return EXIT_USAGE
    policy = _load(args.rules)
    if policy is None:
        return EXIT_RULES
    try:
        engine = Engine(policy, log=log)
    except DependencyError as err:
        log.event("error", level=logging.ERROR, error=str(err))
        return EXIT_RUNTIME
    _settle()
    store, mailer = engine.plan.live.challenges, engine.plan.live.mailer
    if store is not None and mailer is not None:
        in_background(lambda: challenge.redeliver(store, mailer, log))
    try:
        return Server(engine, log, args).serve()
    finally:
        engine.close()


def _settle() -> None:
    """Take the loaded rules out of the cyclic garbage collector's sight.

    A full collection walks every tracked object, so with a large access list it would
    cost time in proportion to the list; frozen objects are skipped, and reference
    counting still frees them once a reload replaces them.  Unfreezing first lets a
    collection reclaim whatever the previous rules left in cycles.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def _socket_directory(directory: Path) -> None:
    """Make a missing socket directory 0750: the owner and its group (the MTA's, as in
    contrib/) may enter it.  An existing one keeps the modes its admin gave it."""
    try:
        directory.mkdir(mode=0o750, parents=True)
    except FileExistsError:
        return
    os.chmod(directory, 0o750)  # what the umask took away


class Server:
    """Runs libmilter in a thread while the main thread waits for signals.

    libmilter's own signal thread treats SIGHUP as "stop".  Signals are blocked before
    any thread starts and the main thread waits for them with sigwait(); Linux hands a
    process-directed signal to the thread group leader when it waits for it, so SIGHUP
    reloads the rules here and never reaches libmilter.
    """

    SIGNALS = {signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGUSR1}
    GRACE = 30.0  # seconds open sessions get to finish after SIGTERM

    def __init__(self, engine: Engine, log: DecisionLog, args: argparse.Namespace) -> None:
        self.engine, self.log, self.args = engine, log, args
        self.error: BaseException | None = None

    def serve(self) -> int:
        from .milter import serve  # the adapter loads pymilter only when serving

        signal.pthread_sigmask(signal.SIG_BLOCK, self.SIGNALS)
        path = self.args.socket.partition(":")[2]
        if self.args.socket.startswith(("unix:", "local:")):
            _socket_directory(Path(path).parent)
        main = threading.main_thread().ident
        worker = threading.Thread(target=self._milter, args=(serve, main), daemon=True)
        worker.start()
        self.log.event("start", version=__version__, socket=self.args.socket,
                       rules=self.args.rules, pid=os.getpid(),
                       rules_hash=self.engine.plan.policy.digest)
        while worker.is_alive():
            sig = signal.sigwait(self.SIGNALS)
            if sig == signal.SIGHUP:
                self.reload()
            elif sig in (signal.SIGTERM, signal.SIGINT):
                self.log.event("stop", signal=signal.Signals(sig).name,
                               open_sessions=self.engine.open_sessions)
                # libmilter's stop() holds up the sessions still open until its workers
                # time out, so new connections are told to retry instead, open ones
                # finish, and then the process leaves (the MTA's default action covers
                # whatever comes after).
                self.engine.stopping = True
                self._drain()
                if self.args.socket.startswith(("unix:", "local:")):
                    Path(path).unlink(missing_ok=True)
                break
        if self.error is not None:
            self.log.event("error", level=logging.ERROR, error=str(self.error))
            return EXIT_RUNTIME
        return 0

    def _drain(self) -> None:
        """Let open sessions finish (the MTA tempfails any cut off), then leave."""
        deadline = time.monotonic() + self.GRACE
        while self.engine.open_sessions > 0 and time.monotonic() < deadline:
            time.sleep(0.05)

    def _milter(self, serve: Callable[..., None], main: int | None) -> None:
        try:
            serve(self.engine, self.args.socket, self.args.socket_mode,
                  timeout=self.args.timeout)
        except Exception as err:  # bind failures and the like end the process
            self.error = err
        finally:
            if main is not None:
                signal.pthread_kill(main, signal.SIGUSR1)  # wake the main thread

    def reload(self) -> None:
        reopen(self.log.logger)
        try:
            self.engine.reload(load(self.args.rules))
        except Exception as err:  # a reload that fails keeps the rules in force
            problems = err.errors if isinstance(err, RuleErrors) else [
                str(err) if isinstance(err, DependencyError) else repr(err)]
            for line in problems:
                self.log.event("reload_error", level=logging.ERROR, error=line)
            self.log.event("reload", level=logging.ERROR, status="failed",
                           errors=len(problems), kept="previous rules")
            return
        _settle()
        self.log.event("reload", status="ok", rules=self.args.rules,
                       rules_hash=self.engine.plan.policy.digest)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "catalogue":
        print(catalogue.markdown_table())
        return 0
    if args.command == "checks":
        print(order.markdown())
        return 0
    handlers = {"check": check, "challenges": challenges, "report": report, "run": run,
                "test": commands.run_test, "ping": commands.run_ping,
                "replay": commands.run_replay, "explain": commands.run_explain}
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
