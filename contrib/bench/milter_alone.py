"""Milter-alone benchmark: policy-milter against a null milter, no MTA in between.

    .venv/bin/python contrib/bench/milter_alone.py [--sessions 600] [--rounds 3] [--json FILE]
                                                   [--metrics] [--workers N]

An MTA-side driver (policy_milter.mtaclient, which honours the negotiated no-reply and
no-callback flags) runs in a process of its own and plays sessions against each milter
on a unix socket: connect, HELO, MAIL, RCPT x3, 10 header fields, a 1 KB body, end of
message.  Concurrency 1, 8 and 64; the two milters alternate, each configuration runs
--rounds times and medians are reported.  policy-milter runs the shipped rules plus
300 access entries, reverse DNS and a DNS list answered by dnsmasq and rbldnsd on
loopback (no delay); the null milter negotiates the same callbacks and answers
"continue" to everything.  Figures: sessions/s, p50/p99 session latency, and the
milter's CPU seconds per session from /proc (stable on a noisy machine).  Target:
policy-milter >= 0.9x the null milter.  ``--metrics`` adds a third milter, policy-milter
on the same rules with Prometheus metrics on, and reports its cost against the second;
``--workers N`` adds policy-milter with N workers, and reports its speed-up over one
process beside the speed-up the machine's CPUs allow: with C cores, milter CPU m and driver
CPU d per session (the driver shares the cores), at most min(N / m, C / (m + d)) sessions
per second.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from harness import cpu_seconds, dns_servers, null_milter, policy_milter, process  # noqa: E402

from policy_milter.engine import Engine  # noqa: E402
from policy_milter.mtaclient import MilterClient  # noqa: E402
from policy_milter.rules.policy import load  # noqa: E402
from tests.conftest import copy_rules  # noqa: E402
from tests.support.daemon import free_port  # noqa: E402

CONCURRENCY = (1, 8, 64)
CLIENTS = [f"198.51.100.{i}" for i in range(1, 251)]
CLIENT_PTRS = [(ip, f"mx{i}.sender.test") for i, ip in enumerate(CLIENTS)]
HEADERS = [("From", "a@sender.example"), ("To", "postmaster@example.com"),
           ("Subject", "benchmark"), ("Date", "Fri, 27 Nov 2026 20:00:00 +0000"),
           ("Message-ID", "<bench@sender.example>"), ("MIME-Version", "1.0"),
           ("Content-Type", "text/plain; charset=us-ascii"), ("X-Mailer", "bench"),
           ("Received", "from mx.sender.example by mx.example.com"), ("X-Extra", "10")]
BODY = (b"x" * 78 + b"\r\n") * 13


def one_session(address: str, n: int) -> float:
    """Seconds for one whole session; every step must pass."""
    started = time.perf_counter()
    with MilterClient(address, timeout=30) as client:
        replies = [client.connect(f"mx{n}.sender.example", CLIENTS[n % len(CLIENTS)], 40000,
                                  macros={"{daemon_name}": "smtpd"}),
                   client.helo("mx.sender.example"),
                   client.mail(f"<user{n}@sender.example>", macros={"i": ""}),
                   *(client.rcpt(r, macros={"i": "Q"}) for r in (
                       "<postmaster@example.com>", "<abuse@example.com>",
                       "<postmaster+x@example.com>")),
                   client.data(macros={"i": "Q"}),
                   *(client.header(name, value) for name, value in HEADERS),
                   client.eoh(), client.body(BODY), client.eom().reply]
    bad = [r for r in replies if not r.passed]
    if bad:
        raise RuntimeError(f"session {n} refused: {bad[0]}")
    return time.perf_counter() - started


def drive(address: str, sessions: int, concurrency: int) -> dict[str, float]:
    """The driver process: run the sessions, report throughput and latency."""
    latencies: list[float] = []
    lock = threading.Lock()
    counter = iter(range(sessions))

    def worker() -> None:
        for n in counter:
            took = one_session(address, n)
            with lock:
                latencies.append(took)

    started, cpu = time.perf_counter(), time.process_time()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu
    latencies.sort()
    return {"sessions_per_s": len(latencies) / elapsed,
            "driver_cpu_ms_per_session": cpu / len(latencies) * 1000,
            "p50_ms": latencies[len(latencies) // 2] * 1000,
            "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000}


def measure(pid: int, address: str, sessions: int, concurrency: int) -> dict[str, float]:
    """The driver's figures (its CPU counted over the sessions alone, not its start-up)
    and the milter's CPU per session."""
    before = cpu_seconds(pid)
    out = subprocess.run([sys.executable, __file__, "--drive", address, str(sessions),
                          str(concurrency)], check=True, capture_output=True, text=True).stdout
    result = json.loads(out)
    result["milter_cpu_ms_per_session"] = (cpu_seconds(pid) - before) / sessions * 1000
    return result


def policy_rules(work: Path, dns_port: int) -> Path:
    rules = copy_rules(work / "rules", REPO / "rules", dns_nameservers="127.0.0.1",
                       dns_port=str(dns_port), rdns="required", dnsbl="dnsbl",
                       relay_networks="127.0.0.0/8")
    (rules / "dnsbl").write_text("bl.test client\n")
    (rules / "access").write_text("".join(
        f"client 203.0.113.{i % 250 + 1} reject\n" if i % 3 == 0 else
        f"sender @spam{i}.example reject\n" if i % 3 == 1 else
        f"recipient former{i}@example.com deny\n" for i in range(300)))
    return rules


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--metrics", action="store_true",
                        help="also run policy-milter with metrics on")
    parser.add_argument("--workers", type=int, default=0,
                        help="also run policy-milter with this many workers")
    parser.add_argument("--drive", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.drive:
        address, sessions, concurrency = args.drive
        print(json.dumps(drive(address, int(sessions), int(concurrency))))
        return 0
    work = Path(tempfile.mkdtemp(prefix="milter-bench-"))
    runs: dict[tuple[str, int], list[dict[str, float]]] = {}
    try:
        with ExitStack() as stack:
            rules = policy_rules(work, dns_servers(stack, work, CLIENT_PTRS).port)
            needs = Engine(load(rules)).plan.needs
            names = ("null", "policy", *(("metrics",) if args.metrics else ()),
                     *(("workers",) if args.workers else ()))
            sockets = {name: work / f"{name}.sock" for name in names}
            pids = {
                "null": stack.enter_context(process(null_milter(
                    f"unix:{sockets['null']}", ",".join(s.value for s in needs.callbacks),
                    ",".join(s.value for s in needs.noreply)), sockets["null"])).pid,
                "policy": stack.enter_context(process(policy_milter(
                    rules, f"unix:{sockets['policy']}", work / "milter.log"),
                    sockets["policy"])).pid,
            }
            if args.metrics:
                metered = copy_rules(work / "metered", rules, metrics=f"inet:{free_port()}")
                pids["metrics"] = stack.enter_context(process(policy_milter(
                    metered, f"unix:{sockets['metrics']}", work / "metered.log"),
                    sockets["metrics"])).pid
            if args.workers:
                pids["workers"] = stack.enter_context(process(policy_milter(
                    rules, f"unix:{sockets['workers']}", work / "workers.log", args.workers),
                    sockets["workers"])).pid
            for name in pids:  # warm up: caches, threads, first DNS answers
                measure(pids[name], f"unix:{sockets[name]}", 300, 8)
            for _ in range(args.rounds):
                for concurrency in CONCURRENCY:
                    for name in names:
                        runs.setdefault((name, concurrency), []).append(measure(
                            pids[name], f"unix:{sockets[name]}", args.sessions, concurrency))
    finally:
        shutil.rmtree(work)
    table = {f"{name}@{c}": {k: statistics.median(r[k] for r in rs) for k in rs[0]}
             for (name, c), rs in runs.items()}
    print(f"milter alone, {args.sessions} sessions per run, median of {args.rounds} rounds")
    print("| concurrency | null sessions/s | policy sessions/s | ratio | policy p50 / p99 ms "
          "| null CPU ms/session | policy CPU ms/session |")
    print("|---|---|---|---|---|---|---|")
    for c in CONCURRENCY:
        null, pol = table[f"null@{c}"], table[f"policy@{c}"]
        print(f"| {c} | {null['sessions_per_s']:.0f} | {pol['sessions_per_s']:.0f} | "
              f"{pol['sessions_per_s'] / null['sessions_per_s']:.2f} | "
              f"{pol['p50_ms']:.1f} / {pol['p99_ms']:.1f} | "
              f"{null['milter_cpu_ms_per_session']:.2f} | "
              f"{pol['milter_cpu_ms_per_session']:.2f} |")
    if args.metrics:
        print("\n| concurrency | policy sessions/s | with metrics | ratio | policy CPU "
              "ms/session | with metrics | ratio |")
        print("|---|---|---|---|---|---|---|")
        for c in CONCURRENCY:
            pol, met = table[f"policy@{c}"], table[f"metrics@{c}"]
            print(f"| {c} | {pol['sessions_per_s']:.0f} | {met['sessions_per_s']:.0f} | "
                  f"{met['sessions_per_s'] / pol['sessions_per_s']:.2f} | "
                  f"{pol['milter_cpu_ms_per_session']:.2f} | "
                  f"{met['milter_cpu_ms_per_session']:.2f} | "
                  f"{met['milter_cpu_ms_per_session'] / pol['milter_cpu_ms_per_session']:.2f} |")
    if args.workers:
        print(f"\n{args.workers} workers on {os.cpu_count()} cores | sessions/s | speed-up | "
              "allowed | achieved / allowed | milter CPU ms/session | driver CPU ms/session")
        print("|---|---|---|---|---|---|---|")
        for c in CONCURRENCY:
            one, many = table[f"policy@{c}"], table[f"workers@{c}"]
            m, d = many["milter_cpu_ms_per_session"], many["driver_cpu_ms_per_session"]
            allowed = min(args.workers / m, (os.cpu_count() or 1) / (m + d)) * 1000
            speedup = many["sessions_per_s"] / one["sessions_per_s"]
            ceiling = allowed / one["sessions_per_s"]
            print(f"| concurrency {c} | {many['sessions_per_s']:.0f} | {speedup:.2f} | "
                  f"{ceiling:.2f} | {speedup / ceiling:.2f} | {m:.2f} | {d:.2f} |")
    if args.json:
        args.json.write_text(json.dumps(table, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
