"""DNS fan-out benchmark: N lists answering after L ms cost one L, not N x L.

    .venv/bin/python contrib/bench/dns_fanout.py [--latency-ms 50] [--runs 7] [--json FILE]

Runs against a delaying DNS responder on loopback in a process of its own: it answers
every query "no such name" after the given delay, patching the query's header in
place so that its own work (microseconds, as in a real resolver) does not count as
the milter's.
Reported as ratios to a baseline measured in the same run: one uncached lookup of the
same latency.

- fan-out: time from connect to the MAIL FROM decision with N client lists (N = 1, 3,
  6, 10), each query name new (no cache), against the baseline; target <= 1.10.
- cache hit: the cost of a repeated lookup, and the packets it sends (target < 0.1 ms, 0).
- sharing: 64 sessions from one address at once send N queries, not 64 x N.
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import select
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from policy_milter.engine import Engine  # noqa: E402
from policy_milter.rules.policy import load  # noqa: E402
from policy_milter.services import Services  # noqa: E402
from policy_milter.services.dns import DnsConfig, DnsResolver, collect  # noqa: E402

ZONE_COUNTS = (1, 3, 6, 10)
SESSIONS = 64


class ServerProcess:
    """The responder in a child process; ``count()`` asks how many queries it received."""

    def __init__(self, latency: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(latency)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())

    def count(self) -> int:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("count\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def serve(latency: float) -> int:
    """The child: answer every query NXDOMAIN after ``latency``; report counts on request."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    print(sock.getsockname()[1], flush=True)
    received = [0]

    def report() -> None:
        for line in sys.stdin:
            if line.strip() == "count":
                print(received[0], flush=True)
        os._exit(0)

    threading.Thread(target=report, daemon=True).start()
    due: list[tuple[float, int, bytes, tuple[str, int]]] = []
    while True:
        wait = max(0.0, due[0][0] - time.monotonic()) if due else None
        if select.select([sock], [], [], wait)[0]:
            query, peer = sock.recvfrom(512)
            received[0] += 1
            heapq.heappush(due, (time.monotonic() + latency, received[0], _nxdomain(query), peer))
        while due and due[0][0] <= time.monotonic():
            _, _, answer, peer = heapq.heappop(due)
            sock.sendto(answer, peer)


def _nxdomain(query: bytes) -> bytes:
    """The query turned into its answer: QR, AA, RA set, rcode NXDOMAIN, no records."""
    end = 12
    while query[end]:
        end += query[end] + 1
    end += 5  # the root label, QTYPE and QCLASS
    flags = bytes([0x84 | (query[2] & 0x01), 0x83])
    return query[:2] + flags + b"\x00\x01" + b"\x00" * 6 + query[12:end]


def rules_with_zones(workdir: Path, port: int, zones: int) -> Path:
    """A minimal rules directory: N client lists, our fake server as the resolver."""
    rules = workdir / f"rules{zones}"
    rules.mkdir()
    (rules / "policy.conf").write_text(
        "dns_nameservers = 127.0.0.1\n"
        f"dns_port = {port}\n"
        "dns_timeout = 5\ndns_budget = 10\nrelay_networks = 127.0.0.1/32\n"
        "dnsbl = dnsbl\n")
    (rules / "dnsbl").write_text("".join(f"z{i}.bench client\n" for i in range(zones)))
    return rules


def resolver(port: int) -> DnsResolver:
    return DnsResolver(DnsConfig(nameservers=("127.0.0.1",), port=port, timeout=5))


def client_address(n: int) -> str:
    return f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"


def baseline(server: ServerProcess, runs: int) -> float:
    """One uncached lookup of a name that answers after the latency."""
    r = resolver(server.port)
    times = []
    for i in range(runs):
        started = time.perf_counter()
        collect(r.submit(f"base{i}.z0.bench", "A"), time.monotonic() + 10)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def fan_out(rules: Path, server: ServerProcess, runs: int, first_client: int) -> float:
    """Connect to MAIL FROM decision with every list to ask; new names every run."""
    engine = Engine(load(rules), Services(dns=resolver(server.port)))
    times = []
    for i in range(runs):
        session = engine.session()
        started = time.perf_counter()
        session.connect(client_address(first_client + i), "", "smtpd")
        session.helo("mx.bench.example", False)
        decision = session.mail("<a@bench.example>", [], "", "")
        times.append(time.perf_counter() - started)
        assert decision.entry is None, decision  # nothing listed: every list answered
    return statistics.median(times)


def cache_hit(server: ServerProcess) -> tuple[float, int]:
    """Seconds per repeated lookup, and the packets the repeats sent."""
    r = resolver(server.port)
    collect(r.submit("cached.z0.bench", "A"), time.monotonic() + 10)
    before = server.count()
    repeats = 2000
    started = time.perf_counter()
    for _ in range(repeats):
        r.submit("cached.z0.bench", "A").result()
    return (time.perf_counter() - started) / repeats, server.count() - before


def sharing(rules: Path, server: ServerProcess, zones: int) -> int:
    """Queries sent when 64 sessions from one new address reach MAIL FROM at once."""
    engine = Engine(load(rules), Services(dns=resolver(server.port)))
    address = client_address(900_000 + zones)
    start = threading.Barrier(SESSIONS)
    before = server.count()

    def one() -> None:
        session = engine.session()
        start.wait()
        session.connect(address, "", "smtpd")
        session.helo("mx.bench.example", False)
        session.mail("<a@bench.example>", [], "", "")

    threads = [threading.Thread(target=one) for _ in range(SESSIONS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return server.count() - before


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--serve", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        return serve(args.serve)
    latency = args.latency_ms / 1000
    workdir = Path(tempfile.mkdtemp(prefix="dns-bench-"))
    server = ServerProcess(latency)
    try:
        base = baseline(server, args.runs)
        rows = []
        for n, zones in enumerate(ZONE_COUNTS):
            rules = rules_with_zones(workdir, server.port, zones)
            took = fan_out(rules, server, args.runs, 1000 * (n + 1))
            rows.append({"zones": zones, "seconds": took, "ratio_to_one_lookup": took / base,
                         "queries_for_64_sessions": sharing(rules, server, zones)})
        hit, hit_packets = cache_hit(server)
    finally:
        server.close()
        shutil.rmtree(workdir)
    result = {"latency_ms": args.latency_ms, "runs": args.runs, "baseline_seconds": base,
              "fan_out": rows, "cache_hit_ms": hit * 1000, "cache_hit_packets": hit_packets}
    print(f"DNS fan-out, {args.latency_ms:g} ms per list, median of {args.runs} runs; "
          f"baseline one lookup = {base * 1000:.1f} ms")
    print("| lists | connect..MAIL decision | ratio to one lookup | queries for 64 sessions |")
    print("|---|---|---|---|")
    for row in rows:
        print(f"| {row['zones']} | {row['seconds'] * 1000:.1f} ms | "
              f"{row['ratio_to_one_lookup']:.3f} | {row['queries_for_64_sessions']} |")
    print(f"cache hit: {hit * 1000:.4f} ms per lookup, {hit_packets} packets sent")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
