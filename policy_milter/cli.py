"""Command line: ``policy-milter run | check | test | ping | explain | replay | report |
challenges | greylist | init | catalogue | checks``.

Exit codes: 0 success (for ``check``: no problem, or warnings only); 1 the rules have errors
(each printed as path:line: message), or ``check`` found a Postfix setting that makes every
message fail or pass unchecked, or (``--strict``) any warning; 2 bad command-line usage (an
unknown option, a malformed socket or log destination, a port outside 1-65535, an unknown
syslog facility), or a Postfix configuration that cannot be read, or ``init`` would
overwrite something or cannot write; 3 the milter could not start (the socket or the
metrics address in use or not permitted, a socket directory or log file it cannot write,
metrics without prometheus_client) or stopped on an error.  Each error is one line on
stderr naming the address or path and the reason.  ``test`` exits by the session's outcome
instead (offline/play.py: OUTCOMES).
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
import typing
from collections.abc import Callable
from pathlib import Path

from . import __version__, catalogue, greylist, listen, postconf, sample
from .checks import challenge, order
from .engine import Engine
from .log import DecisionLog, configure, log_target
from .metrics import OFF, Metrics
from .offline import commands
from .report import moment, produce
from .rules import lint
from .rules.policy import Policy, load
from .rules.settings import parse_workers
from .rules.source import RuleErrors
from .server import Server, StartError, settle
from .services import DependencyError, Services, in_background
from .services.challenges import SqliteChallengeStore
from .services.factory import smtp_mailer, state_path
from .exitcodes import EXIT_RULES, EXIT_RUNTIME, EXIT_USAGE
from .workers import Supervisor

DEFAULT_RULES = "/etc/policy-milter"
DEFAULT_SOCKET = "inet:8894@127.0.0.1"


T = typing.TypeVar("T")


def _option(parse: Callable[[str], T]) -> Callable[[str], T]:
    """An argparse type from a parser whose ValueError says what is wrong (argparse would
    print only "invalid value")."""
    def convert(text: str) -> T:
        try:
            return parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    convert.__name__ = parse.__name__
    return convert


def _spec(text: str) -> str:
    """A libmilter socket spec (listen.parse: ``inet:PORT`` means loopback)."""
    return listen.parse(text).spec


_socket_spec = _option(_spec)


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line that names the command, the option and the reason."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _mode(text: str) -> int:
    if re.fullmatch(r"0?[0-7]{3}", text):
        return int(text, 8)
    raise argparse.ArgumentTypeError(f"'{text}' is not an octal mode like 660")


def parser() -> argparse.ArgumentParser:
    top = _Parser(prog="policy-milter", description=__doc__.split("\n")[0])
    top.add_argument("--version", action="version", version=f"policy-milter {__version__}")
    sub = top.add_subparsers(dest="command", required=True)
    rules_help = f"rules directory holding policy.conf (default {DEFAULT_RULES})"
    sub.add_parser("catalogue", help="print every reply the milter can send (markdown)")
    sub.add_parser("checks", help="print the order of checks (markdown)")
    init = sub.add_parser("init", help="write a commented starting rules directory")
    init.add_argument("dir", metavar="DIR", help="a new or empty directory (init never "
                                                 "overwrites)")
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
    grey = sub.add_parser("greylist", help="list the greylist, allow or drop a client")
    grey.add_argument("--rules", default=DEFAULT_RULES, help=rules_help)
    grey.add_argument("action", choices=["list", "allow", "drop"])
    grey.add_argument("client", nargs="?", help="an address or network (allow, drop)")
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
    run.add_argument("--log", default="stderr", type=_option(log_target),
                     help="stderr (default), syslog[:FACILITY] or file:PATH")
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    run.add_argument("--workers", type=_option(parse_workers),
                     help="processes serving the socket: a number or auto (one per core); "
                          "default: policy.conf's workers (1)")
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


def greylist_command(args: argparse.Namespace) -> int:
    policy = _load(args.rules)
    return EXIT_RULES if policy is None else greylist.admin(policy, args.action, args.client)


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
    except OSError as err:
        print(f"policy-milter: {err}", file=sys.stderr)
        return EXIT_RUNTIME
    started = time.perf_counter()
    policy = _load(args.rules)
    if policy is None:
        return EXIT_RULES
    workers = args.workers or policy.settings.workers
    try:
        log.metrics = _metrics(policy)
        _workers_can_serve(policy, workers)
        engine = Engine(policy, Services(metrics=log.metrics), log=log)
    except (DependencyError, StartError) as err:
        return _failed(args, log, str(err))
    log.metrics.rules(args.rules, policy.digest, time.perf_counter() - started)
    address = listen.parse(args.socket)
    if workers > 1:  # this engine only proved the services open; each worker builds its own
        engine.close()
        return _supervise(args, log, policy, address, workers)
    settle()
    _redeliver(engine, log)
    try:
        server = Server(engine, log, args.rules, address, args.socket_mode, args.timeout)
        return 0 if server.serve() else EXIT_RUNTIME
    except StartError as err:
        return _failed(args, log, str(err))
    finally:
        log.metrics.close()
        engine.close()


def _workers_can_serve(policy: Policy, workers: int) -> None:
    """StartError if ``workers`` processes cannot serve ``policy`` as one milter would."""
    if workers > 1 and policy.settings.metrics is not None:
        raise StartError(f"{policy.where['metrics']}: metrics are served by one process; "
                         f"with {workers} workers, leave metrics off")
    if workers > 1 and _counts_in_memory(policy):
        raise StartError(f"{policy.where['state_file']}: with {workers} workers the counters "
                         "must be shared: set state_file (systemd's StateDirectory gives "
                         "one) or state = redis://...")


def _counts_in_memory(policy: Policy) -> bool:
    """The policy counts something (limits, challenges, greylisting) in a store that only
    this process sees."""
    s = policy.settings
    rates = any(x.limits.limit_messages or x.limits.limit_recipients
                for x in policy.tables.limited())
    counts = rates or bool(s.challenge_store) or s.greylist
    return counts and s.state == "embedded" and state_path(policy) is None


def _redeliver(engine: Engine, log: DecisionLog) -> None:
    """Send again what challenge-response released and the MTA did not take."""
    store, mailer = engine.plan.live.challenges, engine.plan.live.mailer
    if store is not None and mailer is not None:
        in_background(lambda: challenge.redeliver(store, mailer, log))


def _supervise(args: argparse.Namespace, log: DecisionLog, policy: Policy,
               address: listen.Address, workers: int) -> int:
    def build(policy: Policy, number: int) -> Engine:
        engine = Engine(policy, Services(), log=log)
        settle()
        if number == 1:
            _redeliver(engine, log)
        return engine

    try:
        supervisor = Supervisor(policy, build, log, args.rules, address, args.socket_mode,
                                args.timeout, workers)
        return 0 if supervisor.serve() else EXIT_RUNTIME
    except StartError as err:
        return _failed(args, log, str(err))


def _metrics(policy: Policy) -> Metrics:
    """Metrics as policy.conf says: off, or counted and served (StartError without
    prometheus_client, whose message says where the setting is)."""
    if policy.settings.metrics is None:
        return OFF
    try:
        from .prometheus import PrometheusMetrics
    except ImportError:
        raise StartError(f"{policy.where['metrics']}: metrics need the Python package "
                         "prometheus_client (pip install prometheus-client; Debian: "
                         "python3-prometheus-client)") from None
    return PrometheusMetrics()


def _failed(args: argparse.Namespace, log: DecisionLog, message: str) -> int:
    """The milter cannot start: one line on stderr, and in the log if that is elsewhere."""
    print(f"policy-milter: {message}", file=sys.stderr, flush=True)
    if args.log != "stderr":
        log.event("error", level=logging.ERROR, error=message)
    return EXIT_RUNTIME


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "catalogue":
        print(catalogue.markdown_table())
        return 0
    if args.command == "checks":
        print(order.markdown())
        return 0
    handlers = {"check": check, "challenges": challenges, "greylist": greylist_command,
                "report": report, "run": run,
                "test": commands.run_test, "ping": commands.run_ping,
                "replay": commands.run_replay, "explain": commands.run_explain,
                "init": sample.init}
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
