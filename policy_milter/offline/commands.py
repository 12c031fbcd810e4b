"""``policy-milter test`` and ``policy-milter ping``: a session without sending mail, and
whether a milter answers at all."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any
from collections.abc import Callable
from pathlib import Path

from .. import logread
from ..engine import Engine
from ..exitcodes import EXIT_RULES, EXIT_RUNTIME, EXIT_USAGE
from ..mtaclient import MilterClient, MilterProtocolError, MilterTimeout
from ..log import quote
from ..report import moment
from ..rules.policy import Policy, load
from ..rules.source import RuleErrors
from ..services import DependencyError
from ..services.dnsstub import StubError
from . import render
from .play import (OUTCOMES, Played, Script, captured_log, envelope_arg, play, play_wire,
                   silent_log)
from .explain import explain, transaction
from .replay import replay
from .replay import script as replay_script
from .services import Offline, offline

OUTCOME_HELP = ", ".join(f"{code} {name}" for name, code in OUTCOMES.items())


def _dns(text: str) -> str:
    if text in ("off", "live") or (text.startswith("stub=") and len(text) > 5):
        return text
    raise argparse.ArgumentTypeError(f"'{text}' is not off, live or stub=FILE")


def add_parsers(sub: argparse._SubParsersAction[Any],  # noqa: SLF001
                rules_default: str, socket_type: Callable[[str], str]) -> None:
    test = sub.add_parser(
        "test", help="play one session against the rules, without an MTA",
        description="Play one SMTP session against the rules and print, stage by stage, "
                    "each check that ran, its answer, the rule that decided and the reply "
                    f"the client would get.  Exit status by outcome: {OUTCOME_HELP}; "
                    "1 the rules have errors, 2 usage, 3 the milter (--connect) failed.")
    test.add_argument("--rules", default=rules_default, help="rules directory (policy.conf)")
    test.add_argument("--client", required=True, help="the client's IP address")
    test.add_argument("--client-name", default="", help="its verified reverse name")
    test.add_argument("--helo", help="the HELO/EHLO name (none: the client never greets)")
    test.add_argument("--auth", default="", metavar="LOGIN", help="the SASL login")
    test.add_argument("--listener", default="", help="the MTA service ({daemon_name})")
    test.add_argument("--tls", action="store_true", help="the session is encrypted")
    test.add_argument("--sender", required=True, help="MAIL FROM address ('' or <>: null)")
    test.add_argument("--mail-param", action="append", default=[], metavar="PARAM",
                      help="a MAIL FROM parameter such as SIZE=1000 (repeatable)")
    test.add_argument("--rcpt", action="append", required=True, metavar="ADDR",
                      help="a recipient (repeatable)")
    test.add_argument("message", nargs="?", type=Path,
                      help="the message (RFC 5322 file); without it the session ends "
                           "after DATA")
    test.add_argument("--dns", type=_dns, default="off",
                      help="off (default: the DNS checks are not run), live (the resolver "
                           "policy.conf names), or stub=FILE (canned answers)")
    test.add_argument("--scanners", choices=["on", "off"], default="off",
                      help="run the configured clamd and spamd (default off)")
    test.add_argument("--connect", type=socket_type, metavar="SOCKET",
                      help="play the session over the milter protocol against the milter "
                           "listening there instead")
    test.add_argument("--qid", default="TEST", help="the queue id the MTA reports "
                                                    "(default TEST)")
    test.add_argument("--json", action="store_true", help="print JSON")
    replayed = sub.add_parser(
        "replay", help="play the envelopes of past traffic against other rules",
        description="Re-evaluate the envelopes recorded in decision logs (event=envelope) "
                    "against a rules directory and print what would change.")
    replayed.add_argument("logs", nargs="+", metavar="LOG", help="log files ('-': stdin)")
    replayed.add_argument("--rules", default=rules_default, help="the candidate rules")
    replayed.add_argument("--dns", type=_dns, default="off", help="as for test (default off)")
    replayed.add_argument("--since", type=moment, help="ISO date or time, or e.g. 24h")
    replayed.add_argument("--until", type=moment, help="ISO date or time, or e.g. 1h")
    replayed.add_argument("--json", action="store_true", help="print JSON")
    told = sub.add_parser(
        "explain", help="from a decision log line to the rule that made it",
        description="Explain decision log lines: the reply and its catalogue entry, the "
                    "source text of the rule that decided, whether the rules changed since, "
                    "and what would change the outcome.")
    told.add_argument("line", nargs="?", help="a log line ('-': read lines from stdin)")
    told.add_argument("--qid", help="explain every decision about this queue id in --log")
    told.add_argument("--log", action="append", default=[], metavar="FILE",
                      help="the log to search for --qid (repeatable)")
    told.add_argument("--rules", default=rules_default, help="the rules as they are now")
    ping = sub.add_parser("ping", help="whether a milter answers and negotiates")
    ping.add_argument("--socket", type=socket_type, required=True, help="where it listens")
    ping.add_argument("--timeout", type=float, default=5.0, help="seconds (default 5)")


def _script(args: argparse.Namespace) -> Script:
    message = args.message.read_bytes() if args.message is not None else None
    return Script(
        client=args.client, helo=args.helo, sender=envelope_arg(args.sender),
        rcpts=tuple((envelope_arg(r), ()) for r in args.rcpt), client_name=args.client_name,
        listener=args.listener, login=args.auth, tls=args.tls,
        params=tuple(args.mail_param), message=message, queue_id=args.qid)


def run_test(args: argparse.Namespace) -> int:
    try:
        script = _script(args)
    except OSError as err:
        print(f"policy-milter: cannot read {args.message}: {err.strerror}", file=sys.stderr)
        return EXIT_USAGE
    if args.connect:
        try:
            played = play_wire(args.connect, script)
        except (OSError, MilterProtocolError, MilterTimeout, ValueError) as err:
            print(f"policy-milter: {args.connect}: {err}", file=sys.stderr)
            return EXIT_RUNTIME
        return _print(args, played, [f"milter   {args.connect}"])
    prepared = _prepare(args.rules, args.dns, args.scanners == "on")
    if isinstance(prepared, int):
        return prepared
    policy, world = prepared
    log, lines = captured_log()
    try:
        engine = Engine(policy, world.services, log, world.leave_out)
        played = play(engine, script, world.notes)
    except DependencyError as err:
        print(f"policy-milter: {err}", file=sys.stderr)
        return EXIT_RUNTIME
    finally:
        world.close()
    played.log = lines
    played.changes += [f"held for {rcpt}: nothing is held by a test"
                       for rcpt, _sender in world.store.held]
    played.changes += [f"a challenge would go to {', '.join(to)}" for _f, to in world.mailer.sent]
    return _print(args, played, [f"rules    {policy.source} (hash {policy.digest})"])


def _prepare(rules: str, dns: str, scanners: bool) -> tuple[Policy, Offline] | int:
    """The rules and the offline services, or the exit status once what is wrong is said."""
    try:
        policy = load(rules)
    except RuleErrors as err:
        print("\n".join(err.errors), file=sys.stderr)
        return EXIT_RULES
    try:
        return policy, offline(policy, dns, scanners)
    except StubError as err:
        print(f"policy-milter: {err}", file=sys.stderr)
        return EXIT_USAGE


def run_replay(args: argparse.Namespace) -> int:
    """0 whatever would change: it is a report; 1 the rules have errors."""
    # The scanners are left as configured: a replay never reaches end of message.
    prepared = _prepare(args.rules, args.dns, scanners=True)
    if isinstance(prepared, int):
        return prepared
    policy, world = prepared
    notes = world.notes
    try:
        engine = Engine(policy, world.services, silent_log(), world.leave_out)
        summary = replay(engine, logread.records(args.logs, args.since, args.until), notes)
    except OSError as err:
        print(f"policy-milter: {err}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        world.close()
    heading = f"rules {policy.source} (hash {policy.digest}); logs {' '.join(args.logs)}"
    if args.json:
        print(render.replay_json(summary, notes, rules=policy.source, rules_hash=policy.digest,
                                 logs=args.logs))
    else:
        print(render.replay_text(summary, [heading], notes))
    return 0


def run_explain(args: argparse.Namespace) -> int:
    """0 explained; 2 nothing to explain (no such line, no such queue id)."""
    if (args.line is None) == (args.qid is None) or (args.qid and not args.log):
        print("policy-milter: explain takes a log line, or --qid QID with --log FILE",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        policy: Policy | None = load(args.rules)
    except RuleErrors as err:
        print(f"policy-milter: the rules in {args.rules} have errors "
              f"({len(err.errors)}); showing the files as they are", file=sys.stderr)
        policy = None
    envelope = None
    try:
        if args.qid:
            decisions, envelope = transaction(logread.records(args.log), args.qid)
        else:  # '-': read as report and replay read it (a byte not UTF-8 is kept)
            read = (logread.records(["-"]) if args.line == "-"
                    else [r for r in [logread.parse(args.line, "argument")] if r is not None])
            decisions = [r for r in read if r.event == "decision"]
    except OSError as err:
        print(f"policy-milter: {err}", file=sys.stderr)
        return EXIT_USAGE
    if not decisions:
        print("policy-milter: no decision line to explain" +
              (f" for queue id {args.qid}" if args.qid else ""), file=sys.stderr)
        return EXIT_USAGE
    blocks = ["\n".join(explain(r, policy, args.rules).lines) for r in decisions]
    if envelope is not None and policy is not None:
        blocks.append(_now(envelope, policy))
    print("\n\n".join(blocks))
    return 0


def _now(record: logread.Record, policy: Policy) -> str:
    """The transaction's envelope played under the rules as they are now."""
    world = offline(policy, "off", scanners=False)
    try:
        played = play(Engine(policy, world.services, silent_log(), world.leave_out),
                      replay_script(record), world.notes)
    finally:
        world.close()
    lines = [f"now: under the rules in {policy.source} (hash {policy.digest}), the envelope "
             f"of {record['qid'] or 'this transaction'} ({record.source}) gets:"]
    for run in played.stages:
        if run.answer != "continue" or run.stage == "rcpt":
            answer = "accept" if run.answer == "continue" else run.answer
            lines.append(f"  {run.stage:<5} {quote(run.subject) if run.subject else ''}  "
                         f"{answer}" + (f"  {run.rule}" if run.rule else "")
                         + (f"  {run.reply}" if run.reply else ""))
    lines += [f"  ({note})" for note in played.notes]
    return "\n".join(lines)


def _print(args: argparse.Namespace, played: Played, heading: list[str]) -> int:
    who = args.client + (f" ({args.client_name})" if args.client_name else "")
    heading = [f"session  {who} helo={args.helo or '-'} listener={args.listener or '-'} "
               f"login={args.auth or '-'}{' tls' if args.tls else ''}", *heading]
    if args.json:
        print(render.as_json(played, client=args.client, rules=args.rules,
                             connect=args.connect or ""))
    else:
        print(render.text(played, heading))
    return played.exit_code


def run_ping(args: argparse.Namespace) -> int:
    """0: it negotiated (what it asks for is printed, and how long that took); 3: it did
    not, with why."""
    started = time.perf_counter()
    client = MilterClient(args.socket, args.timeout)
    try:
        client.open()
    except (OSError, MilterProtocolError, MilterTimeout, ValueError) as err:
        print(f"policy-milter: no milter at {args.socket}: {err}", file=sys.stderr)
        return EXIT_RUNTIME
    try:
        print(f"{args.socket}: negotiated in {(time.perf_counter() - started) * 1000:.1f} ms; "
              f"steps: {' '.join(client.steps)}; actions: "
              f"{' '.join(client.action_names) or 'none'}")
    finally:
        client.close()
    return 0
