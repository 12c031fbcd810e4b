"""Throughput through a real Postfix: smtp-source -> private Postfix -> smtp-sink.

    .venv/bin/python contrib/bench/postfix_throughput.py [--messages 400] [--rounds 3]
                                                         [--scanners] [--workers N]
                                                         [--json FILE]

Configurations, run interleaved, --rounds times each, medians reported:
  a. Postfix with no milter;
  b. Postfix with a null pymilter milter negotiating the same callbacks as (c);
  c. Postfix with policy-milter on the shipped rules plus 300 access entries, reverse
     DNS and a DNS list answered on loopback with no delay (dnsmasq, rbldnsd);
  d. as (c) with clamd and spamd scanning every message (--scanners; slow);
  e. as (c) with N worker processes (--workers N).
Each at concurrency 1, 10 and 32, with 1 KB and 50 KB messages, over a unix socket
and, for (b) and (c) at 1 KB, over TCP too.  The client (smtp-source, 127.0.0.1) is
outside policy-milter's relay networks, so every check runs.  Figures: messages
delivered to smtp-sink per second, from the first connection to the last delivery; and
the CPU time per message of the milter's processes and of all the Postfix instance's
processes (its master and every child, ended ones included), from /proc before and
after each run: on a machine whose throughput swings from run to run, the figure a
ratio can be trusted on.  A last table says what the CPU budget allows: with the CPU
per message of everything that shares the cores (Postfix, the milter, smtp-source and
smtp-sink), the policy/none ratio the machine could reach were its cores the limit, beside
the ratio measured.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from harness import cpu_seconds, dns_servers, null_milter, policy_milter, process  # noqa: E402

from policy_milter.engine import Engine  # noqa: E402
from policy_milter.rules.policy import load  # noqa: E402
from tests.conftest import copy_rules  # noqa: E402
from tests.support.dnsservers import free_port  # noqa: E402
from tests.support.postfix import PostfixInstance  # noqa: E402
from tests.support.scanners import ClamdServer, SpamdServer  # noqa: E402

CONCURRENCY = (1, 10, 32)
SIZES = {"1KB": 1024, "50KB": 50 * 1024}


def policy_rules(work: Path, dns_port: int, name: str, **settings: str) -> Path:
    rules = copy_rules(work / name, REPO / "rules", dns_nameservers="127.0.0.1",
                       dns_port=str(dns_port), rdns="required", dnsbl="dnsbl",
                       relay_networks="10.255.0.0/16", local_sender_requires_auth="no",
                       **settings)
    (rules / "dnsbl").write_text("bl.test client\n")
    (rules / "access").write_text("".join(
        f"client 203.0.113.{i % 250 + 1} reject\n" if i % 2 else
        f"sender @spam{i}.example reject\n" for i in range(300)))
    return rules


def run_once(postfix: PostfixInstance, milter: int | None, sink: tuple[Path, int],
             messages: int, sessions: int, size: int) -> dict[str, float]:
    """Messages per second from the first connection to the last delivery, and the CPU
    ms per message of the milter, of Postfix, and of the client and sink that share the
    machine's cores with them."""
    sink_dir, sink_pid = sink
    before = len(list(sink_dir.iterdir()))
    master = postfix.master_pid or 0
    cpu = (cpu_seconds(milter) if milter else 0.0, cpu_seconds(master, reaped=True),
           _children_cpu() + cpu_seconds(sink_pid))
    started = time.perf_counter()
    subprocess.run(["/usr/sbin/smtp-source", "-c", "-l", str(size), "-m", str(messages),
                    "-s", str(sessions), "-f", "bench@sender.example",
                    "-t", "postmaster@example.com", f"127.0.0.1:{postfix.smtp_port}"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   timeout=600)
    deadline = time.monotonic() + 300
    while len(list(sink_dir.iterdir())) < before + messages:
        if time.monotonic() > deadline:
            raise RuntimeError("not every message reached the sink")
        time.sleep(0.01)
    rate = messages / (time.perf_counter() - started)
    return {"per_s": rate,
            "milter_ms": ((cpu_seconds(milter) if milter else 0.0) - cpu[0]) / messages * 1000,
            "postfix_ms": (cpu_seconds(master, reaped=True) - cpu[1]) / messages * 1000,
            "client_ms": (_children_cpu() + cpu_seconds(sink_pid) - cpu[2]) / messages * 1000}


def _children_cpu() -> float:
    """CPU seconds of the ended children: smtp-source, each run waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scanners", action="store_true")
    parser.add_argument("--workers", type=int, default=0,
                        help="also run policy-milter with this many workers (e)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="postfix-bench-"))
    work.chmod(0o755)
    results: dict[str, list[dict[str, float]]] = {}
    milters: dict[str, int | None] = {}
    try:
        with ExitStack() as stack:
            dns = dns_servers(stack, work, [("127.0.0.1", "localhost.test")])
            rules = {"policy": policy_rules(work, dns.port, "rules")}
            if args.scanners:
                clamd = stack.enter_context(ClamdServer(work / "clamd"))
                spamd = stack.enter_context(SpamdServer(work / "spamd"))
                rules["scanners"] = policy_rules(work, dns.port, "rules-scanners",
                                                 clamd=clamd.unix_address, spamd=spamd.address)
            needs = Engine(load(rules["policy"])).plan.needs
            null_args = [",".join(s.value for s in needs.callbacks),
                         ",".join(s.value for s in needs.noreply)]
            sink_dir = work / "sink"
            sink_dir.mkdir()
            sink_dir.chmod(0o777)  # smtp-sink writes as postfix
            sink_port = free_port()
            sink_pid = stack.enter_context(process(["/usr/sbin/smtp-sink", "-u", "postfix", "-d",
                                            f"{sink_dir}/%M.", f"127.0.0.1:{sink_port}", "256"])).pid
            # Over a unix socket Postfix uses contrib's smtpd_milters as written, the milter
            # listening in its queue directory (smtpd's chroot); over TCP, and with no milter,
            # the services override it.
            postfixes = {}
            for label in ("none", "null/unix", "null/inet", "policy/unix", "policy/inet",
                          *(("scanners/unix",) if args.scanners else ()),
                          *(("workers/unix",) if args.workers else ())):
                name, _, transport = label.partition("/")
                port = free_port()
                postfix = PostfixInstance(
                    work / f"postfix-{label.replace('/', '-')}",
                    {"unix": None, "inet": f"inet:127.0.0.1:{port}", "": ""}[transport],
                    local_domains=["example.com"], mailboxes=["postmaster@example.com"],
                    extra_main_cf={"transport_maps": f"static:smtp:[127.0.0.1]:{sink_port}",
                                   "default_process_limit": "100"})
                if transport:
                    postfix.milter_directory.mkdir(parents=True)
                    sock = postfix.milter_directory / "milter.sock"
                    spec = f"unix:{sock}" if transport == "unix" else f"inet:{port}@127.0.0.1"
                    command = null_milter(spec, *null_args) if name == "null" else policy_milter(
                        rules.get(name, rules["policy"]), spec, work / f"{name}-{transport}.log",
                        args.workers if name == "workers" else 1)
                    milters[label] = stack.enter_context(
                        process(command, sock if transport == "unix" else None)).pid
                    if transport == "inet":
                        time.sleep(1)
                postfixes[label] = stack.enter_context(postfix)
            for _ in range(args.rounds):
                for size_name, size in SIZES.items():
                    for c in CONCURRENCY:
                        for label, postfix in postfixes.items():
                            if label.endswith("/inet") and size_name != "1KB":
                                continue
                            key = f"{label}|{size_name}|{c}"
                            results.setdefault(key, []).append(run_once(
                                postfix, milters.get(label), (sink_dir, sink_pid), args.messages,
                                c, size))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table = {k: statistics.median(r["per_s"] for r in v) for k, v in results.items()}
    cpu = {k: {f: statistics.median(r[f] for r in v)
               for f in ("milter_ms", "postfix_ms", "client_ms")} for k, v in results.items()}
    spread = {k: {f: (min(r[f] for r in v), max(r[f] for r in v))
                  for f in ("milter_ms", "postfix_ms")} for k, v in results.items()}
    print(f"through Postfix, {args.messages} messages per run, median of {args.rounds} rounds "
          "(messages/s delivered)")
    labels = list(dict.fromkeys(k.split("|")[0] for k in table))
    print("| size | concurrency | " + " | ".join(labels) + " | policy/none | policy/null |")
    print("|---|---|" + "---|" * len(labels) + "---|---|")
    for size_name in SIZES:
        for c in CONCURRENCY:
            row = [table.get(f"{label}|{size_name}|{c}") for label in labels]
            cells = " | ".join(f"{v:.0f}" if v else "-" for v in row)
            pol, none, null = (table[f"{x}|{size_name}|{c}"] for x in
                               ("policy/unix", "none", "null/unix"))
            print(f"| {size_name} | {c} | {cells} | {pol / none:.2f} | {pol / null:.2f} |")
    for c in CONCURRENCY:
        pol, null, none = (table[f"{x}|1KB|{c}"] for x in ("policy/inet", "null/inet", "none"))
        print(f"inet, 1KB, concurrency {c}: policy/none {pol / none:.2f}, "
              f"policy/null {pol / null:.2f}")
    print("\nCPU ms per message, median (min-max over the rounds): milter processes; "
          "all Postfix processes")
    print("| size | concurrency | Postfix, no milter | null milter | Postfix with it "
          "| policy-milter | Postfix with it | policy/null milter CPU |")
    print("|---|---|---|---|---|---|---|---|")

    def cell(key: str, field: str) -> str:
        low, high = spread[key][field]
        return f"{cpu[key][field]:.2f} ({low:.2f}-{high:.2f})"

    for size_name in SIZES:
        for c in CONCURRENCY:
            alone, with_null, with_policy = (f"{x}|{size_name}|{c}" for x in (
                "none", "null/unix", "policy/unix"))
            null_ms = cpu[with_null]["milter_ms"]  # 0 in a run too short for one 10 ms tick
            ratio = f"{cpu[with_policy]['milter_ms'] / null_ms:.2f}" if null_ms else "-"
            print(f"| {size_name} | {c} | {cell(alone, 'postfix_ms')} | "
                  f"{cell(with_null, 'milter_ms')} | {cell(with_null, 'postfix_ms')} | "
                  f"{cell(with_policy, 'milter_ms')} | {cell(with_policy, 'postfix_ms')} | "
                  f"{ratio} |")
    cores = os.cpu_count() or 1
    print(f"\nWhat the CPU budget allows ({cores} cores): total CPU ms per message (Postfix, "
          "milter, smtp-source and smtp-sink); the share of the cores Postfix alone kept busy; "
          "the policy/none ratio if every core were busy (capped at 1); the measured ratio")
    print("| size | concurrency | milter | no milter CPU ms | with the milter CPU ms | no "
          "milter: cores busy | allowed against none | measured | measured / allowed |")
    print("|---|---|---|---|---|---|---|---|---|")
    for size_name in SIZES:
        for c in CONCURRENCY:
            alone = f"none|{size_name}|{c}"
            t_none = sum(cpu[alone].values())
            busy = table[alone] * t_none / 1000 / cores
            for label in ("policy/unix", "workers/unix"):
                with_milter = f"{label}|{size_name}|{c}"
                if with_milter not in table:
                    continue
                t_pol = sum(cpu[with_milter].values())
                allowed = min(1.0, cores * 1000 / t_pol / table[alone])
                measured = table[with_milter] / table[alone]
                print(f"| {size_name} | {c} | {label.split('/')[0]} | {t_none:.2f} | "
                      f"{t_pol:.2f} | {busy:.0%} | {allowed:.2f} | {measured:.2f} | "
                      f"{measured / allowed:.2f} |")
    if args.json:
        args.json.write_text(json.dumps({"per_s": table, "cpu": cpu}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
