"""The engine alone, no milter protocol: what a session's policy costs, and what moves it.

    .venv/bin/python contrib/bench/engine_alone.py [--sessions 5000] [--rounds 3]

The milter-alone benchmark's rules and sessions (the shipped rules plus 300 access
entries, reverse DNS and a DNS list answered by dnsmasq and rbldnsd on loopback;
connect, HELO, MAIL, three RCPT, DATA, end of message) run through the engine in this
process, logging to a file as `policy-milter run` does.  Reported: CPU microseconds per
session (the session's own thread), median of the rounds, for

  a. every session in the one thread that ran the ones before (the baseline);
  b. as (a) with the log at warning, so no decision or envelope line is written;
  c. as (a) without the envelope line, and d. without the accepted decision line;
  e. every session in a thread started for it, as libmilter runs each connection;

each also as a ratio to (a).  The DNS answers come from the milter's cache after a
warm-up, as they do for a busy client.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any
from contextlib import ExitStack
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from harness import dns_servers  # noqa: E402
from milter_alone import CLIENT_PTRS, CLIENTS, policy_rules  # noqa: E402

from policy_milter.engine import Engine  # noqa: E402
from policy_milter.log import DecisionLog, configure  # noqa: E402
from policy_milter.rules.policy import load  # noqa: E402

RECIPIENTS = ("<postmaster@example.com>", "<abuse@example.com>", "<postmaster+x@example.com>")


def session(engine: Engine, n: int) -> None:
    """One session that every check passes; a refusal would measure something else."""
    s = engine.session()
    s.connect(CLIENTS[n % len(CLIENTS)], f"mx{n}.sender.example", "smtpd", "mx.example.com")
    s.helo("mx.sender.example", False)
    s.mail(f"<user{n}@sender.example>", (), "", "")
    for rcpt in RECIPIENTS:
        if s.rcpt(rcpt, (), "Q").stops:
            raise RuntimeError(f"session {n}: {rcpt} refused")
    s.data("Q")
    if s.eom("Q").decision.stops:
        raise RuntimeError(f"session {n} refused at end of message")
    s.close()


class WithoutEnvelope(DecisionLog):
    def envelope(self, *args: Any) -> None:
        """Not written."""


class WithoutAccepted(DecisionLog):
    def accepted(self, *args: Any) -> None:
        """Not written."""


def in_one_thread(engine: Engine, sessions: int) -> float:
    started = time.thread_time()
    for n in range(sessions):
        session(engine, n)
    return (time.thread_time() - started) / sessions


def in_fresh_threads(engine: Engine, sessions: int) -> float:
    """Each session in a new thread, timed from inside it (thread start-up not counted)."""
    spent = [0.0]

    def one(n: int) -> None:
        started = time.thread_time()
        session(engine, n)
        spent[0] += time.thread_time() - started

    for n in range(sessions):
        thread = threading.Thread(target=one, args=(n,))
        thread.start()
        thread.join()
    return spent[0] / sessions


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="engine-bench-"))
    variants: dict[str, tuple[Callable[[Engine, int], float], str, type[DecisionLog]]] = {
        "a. one thread (baseline)": (in_one_thread, "info", DecisionLog),
        "b. log at warning": (in_one_thread, "warning", DecisionLog),
        "c. no envelope line": (in_one_thread, "info", WithoutEnvelope),
        "d. no accepted decision line": (in_one_thread, "info", WithoutAccepted),
        "e. a fresh thread per session": (in_fresh_threads, "info", DecisionLog),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    try:
        with ExitStack() as stack:
            dns = dns_servers(stack, work, CLIENT_PTRS)
            logger = configure(f"file:{work / 'milter.log'}")
            engine = Engine(load(policy_rules(work, dns.port)), log=DecisionLog(logger))
            in_one_thread(engine, 1000)  # warm-up: every DNS answer cached
            for _ in range(args.rounds):
                for name, (run, level, log) in variants.items():
                    logger.setLevel(level.upper())
                    engine.log = log(logger)  # new sessions take the engine's log
                    times[name].append(run(engine, args.sessions))
    finally:
        shutil.rmtree(work)
    base = statistics.median(times["a. one thread (baseline)"])
    print(f"engine alone, {args.sessions} sessions per run, median of {args.rounds} rounds")
    print("| variant | CPU us per session | against (a) |")
    print("|---|---|---|")
    for name, runs in times.items():
        median = statistics.median(runs)
        print(f"| {name} | {median * 1e6:.1f} | {median / base:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
