"""What per-worker DNS caches cost: queries sent by 1, 2 and 4 workers for the same mail.

    .venv/bin/python contrib/bench/worker_dns.py [--sessions 2000] [--concurrency 8]

Each worker keeps a DNS cache of its own, so a name a busy MX sees from every worker is
asked once per worker and TTL instead of once.  The milter-alone driver plays the same
sessions against policy-milter (the milter-alone rules: reverse DNS required and a DNS
list of client addresses) run with 1, 2 and 4 workers; the sessions come from 250 client
addresses, each seen sessions / 250 times, and a DNS server of the test suite's on
loopback counts the queries (every answer's TTL outlives the run).  Reported: queries
per run, per session, and against one worker.  The most there can be is one query per
name per worker (two names per client here: its PTR and its DNS-list entry).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from harness import policy_milter, process  # noqa: E402
from milter_alone import CLIENTS, measure, policy_rules  # noqa: E402

from tests.support.dnsservers import FakeDns  # noqa: E402

WORKERS = (1, 2, 4)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="worker-dns-"))
    sent: dict[int, int] = {}
    try:
        with FakeDns() as dns:
            for i, ip in enumerate(CLIENTS):
                dns.add(".".join(reversed(ip.split("."))) + ".in-addr.arpa", "PTR",
                        f"mx{i}.sender.test.", ttl=3600)
            rules = policy_rules(work, dns.port)
            for workers in WORKERS:
                socket = work / f"milter-{workers}.sock"
                with process(policy_milter(rules, f"unix:{socket}",
                                           work / f"milter-{workers}.log", workers),
                             socket) as milter:
                    dns.reset_counts()
                    measure(milter.pid, f"unix:{socket}", args.sessions, args.concurrency)
                    sent[workers] = dns.count()
    finally:
        shutil.rmtree(work)
    names = 2 * min(len(CLIENTS), args.sessions)
    print(f"DNS queries for {args.sessions} sessions from {min(len(CLIENTS), args.sessions)} "
          f"clients ({names} names), concurrency {args.concurrency}")
    print("| workers | queries | per session | against 1 worker | most possible |")
    print("|---|---|---|---|---|")
    for workers, queries in sent.items():
        print(f"| {workers} | {queries} | {queries / args.sessions:.3f} | "
              f"{queries / sent[1]:.2f} | {names * workers} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
