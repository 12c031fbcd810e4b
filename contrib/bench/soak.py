"""Soak: a long run of mixed sessions with injected faults against one milter process.

    .venv/bin/python contrib/bench/soak.py [--sessions 100000] [--concurrency 32] [--json FILE]

policy-milter runs the shipped rules plus reverse DNS, a DNS list, clamd and content
rules; its resolver is a DNS server of the project's own that fails on demand (SERVFAIL,
silence, garbage) and its clamd a small stand-in in this process that hangs, answers
garbage or hangs up when the message asks it to.  An MTA-side driver (threads of this
process, policy_milter.mtaclient) plays twenty kinds of sessions in turn: clean mail,
refused recipients, each DNS and scanner fault, hostile content, 8-bit envelopes,
connections dropped in the middle of a message.  Every session must get exactly the
answer of its kind (a message that got none, or another one, counts as lost).

Reported: sessions, sessions lost (target 0), and the milter's resident memory, threads
and open descriptors after a warm-up and at the end (a leak shows as growth), with its
peak memory; ``--json`` writes them.
"""

from __future__ import annotations

import argparse
import json
import os
import socketserver
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from harness import policy_milter, process, status  # noqa: E402

from policy_milter import catalogue  # noqa: E402
from policy_milter.mtaclient import MilterClient, Reply  # noqa: E402
from tests.conftest import copy_rules  # noqa: E402
from tests.support.dnsservers import FakeDns  # noqa: E402
from tests.support.hostile import (  # noqa: E402
    after_many_fields,
    nested_multiparts,
    nested_zips,
    with_attachment,
)

WARM_UP = 1000
CLEAN = b"From: a@sender.example\r\nSubject: soak\r\n\r\n" + (b"x" * 78 + b"\r\n") * 10
HANG, GARBAGE, HANG_UP = b"SOAK-FAULT-HANG", b"SOAK-FAULT-GARBAGE", b"SOAK-FAULT-HANGUP"
FAULTY_CLIENTS = {"servfail": "203.0.113.1", "silent": "203.0.113.2", "garbage": "203.0.113.3"}


class FaultyClamd(socketserver.ThreadingTCPServer):
    """clamd's INSTREAM, answered "OK" unless the message carries a fault marker."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256  # the milter's threads all scan at once

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ClamdHandler)

    @property
    def address(self) -> str:
        return f"tcp:127.0.0.1:{self.server_address[1]}"


class _ClamdHandler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        if self.rfile.read(10) != b"zINSTREAM\0":
            return
        data = bytearray()
        while size := int.from_bytes(self.rfile.read(4), "big"):
            data += self.rfile.read(size)
        if HANG in data:
            time.sleep(2)  # past the milter's clamd_timeout
        elif GARBAGE in data:
            self.wfile.write(b"\x16\x03\x01 nonsense\0")
        elif HANG_UP not in data:
            self.wfile.write(b"stream: OK\0")


@dataclass(frozen=True)
class Kind:
    """One kind of session: who connects, what it sends, what it must get."""

    name: str
    client: str
    expect: str  # a catalogue entry name, "accept", "unchecked" or "dropped"
    sender: str = "<a@sender.example>"
    rcpt: str = "<postmaster@example.com>"
    message: bytes = CLEAN


KINDS = [
    *(Kind(f"clean {i}", f"198.51.100.{i + 1}", "accept",
           rcpt=("<postmaster@example.com>", "<Postmaster+tag@EXAMPLE.com>")[i % 2])
      for i in range(10)),
    Kind("unknown user", "198.51.100.11", "unknown_user_local", rcpt="<nobody@example.com>"),
    Kind("dns servfail", FAULTY_CLIENTS["servfail"], "dns_tempfail"),
    Kind("dns silent", FAULTY_CLIENTS["silent"], "dns_tempfail"),
    Kind("dns garbage", FAULTY_CLIENTS["garbage"], "dns_tempfail"),
    Kind("clamd hangs", "198.51.100.12", "scanner_tempfail", message=CLEAN + HANG),
    Kind("clamd garbage", "198.51.100.13", "scanner_tempfail", message=CLEAN + GARBAGE),
    Kind("clamd hangs up", "198.51.100.14", "scanner_tempfail", message=CLEAN + HANG_UP),
    Kind("a field after 1,200", "198.51.100.15", "content_rejected",
         message=after_many_fields(1200, b"Subject: LOTTERY")),
    Kind("nested zips", "198.51.100.16", "content_rejected",
         message=with_attachment(nested_zips(3), "report.pdf", "application/pdf")),
    Kind("deep MIME", "198.51.100.17", "unchecked", message=nested_multiparts(150)),
    Kind("8-bit sender", "198.51.100.18", "syntax_error", sender="<a\udcff@sender.example>"),
    Kind("dropped in the body", "198.51.100.19", "dropped"),
]


def rules_for(work: Path, dns_port: int, clamd: str) -> Path:
    rules = copy_rules(work / "rules", REPO / "rules", dns_nameservers="127.0.0.1",
                       dns_port=str(dns_port), dns_timeout="0.3", dns_budget="1",
                       rdns="required", dnsbl="dnsbl", relay_networks="127.0.0.0/8",
                       clamd=clamd, clamd_timeout="0.5", mime_max_depth="100")
    (rules / "dnsbl").write_text("bl.test client\n")
    (rules / "filters").write_text("header Subject=/lottery/i reject\n"
                                   "attachment *.exe reject\n")
    return rules


def fake_dns() -> FakeDns:
    dns = FakeDns()
    for i in range(1, 21):
        dns.add(f"{i}.100.51.198.in-addr.arpa", "PTR", f"mx{i}.sender.test.")
        dns.nxdomain(f"{i}.100.51.198.bl.test")
    for name, ip in FAULTY_CLIENTS.items():
        reverse = ".".join(reversed(ip.split("."))) + ".in-addr.arpa"
        {"servfail": dns.servfail, "silent": dns.drop, "garbage": dns.garbage}[name](reverse)
        dns.nxdomain(".".join(reversed(ip.split("."))) + ".bl.test")
    return dns


def entry_of(reply: Reply) -> str:
    known = catalogue.by_reply(reply.line) if reply.action == "replycode" else None
    return known.name if known else f"{reply.action} {reply.line}"


def play(address: str, kind: Kind) -> str:
    """One session of ``kind``; what it got, in the words of Kind.expect."""
    with MilterClient(address, timeout=30) as client:
        client.connect(f"mx.{kind.name.replace(' ', '-')}.test", kind.client, 40000,
                       macros={"{daemon_name}": "smtpd"})
        client.helo("mx.sender.test")
        for step in (lambda: client.mail(kind.sender, macros={"i": ""}),
                     lambda: client.rcpt(kind.rcpt, macros={"i": "Q"}),
                     lambda: client.data(macros={"i": "Q"})):
            reply = step()
            if not reply.passed:
                return entry_of(reply)
        if kind.expect == "dropped":
            client.header("Subject", "cut short")
            return "dropped"  # the connection closes with the message half sent
        result = client.message(kind.message)
    if isinstance(result, Reply):
        return entry_of(result)
    if not result.reply.passed:
        return entry_of(result.reply)
    added = [args[0] for what, args in result.modifications if what == "addheader"]
    return "unchecked" if "X-Policy-Unchecked" in added else "accept"


def drive(address: str, first: int, count: int, concurrency: int) -> Counter[str]:
    """``count`` sessions from number ``first``; the kinds of those that went wrong."""
    lost: Counter[str] = Counter()
    lock = threading.Lock()
    numbers = iter(range(first, first + count))

    def worker() -> None:
        for n in numbers:
            kind = KINDS[n % len(KINDS)]
            try:
                got = play(address, kind)
            except Exception as err:  # a session with no answer is a lost one
                got = f"{type(err).__name__}: {err}"
            if got != kind.expect:
                with lock:
                    lost[f"{kind.name}: {got}"] += 1

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return lost


def reading(pid: int) -> dict[str, int]:
    return {"rss_kb": status(pid, "VmRSS") // 1024, "threads": _threads(pid),
            "fds": len(os.listdir(f"/proc/{pid}/fd"))}


def _threads(pid: int) -> int:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines()
                if x.startswith("Threads:"))
    return int(line.split()[1])


def soak(sessions: int, concurrency: int, report: Callable[[str], None] = print
         ) -> dict[str, object]:
    work = Path(tempfile.mkdtemp(prefix="soak-"))
    with ExitStack() as stack:
        dns = stack.enter_context(fake_dns())
        clamd = FaultyClamd()
        threading.Thread(target=clamd.serve_forever, daemon=True).start()
        stack.callback(clamd.shutdown)
        rules = rules_for(work, dns.port, clamd.address)
        sock = work / "policy.sock"
        milter = stack.enter_context(process(policy_milter(rules, f"unix:{sock}",
                                                           work / "milter.log"), sock))
        address = f"unix:{sock}"
        warm = drive(address, 0, min(WARM_UP, sessions), concurrency)
        start = reading(milter.pid)
        started = time.monotonic()
        lost = drive(address, WARM_UP, sessions, concurrency)
        elapsed = time.monotonic() - started
        time.sleep(1)  # sessions cut short finish their cleanup
        end = reading(milter.pid)
        peak = status(milter.pid, "VmHWM") // 1024
        alive = milter.poll() is None
    lost += warm
    result: dict[str, object] = {
        "sessions": sessions + min(WARM_UP, sessions), "lost": sum(lost.values()),
        "lost_by_kind": dict(lost), "kinds": len(KINDS), "seconds": round(elapsed, 1),
        "sessions_per_s": round(sessions / elapsed), "start": start, "end": end,
        "peak_rss_kb": peak, "milter_alive": alive,
    }
    report(f"{result['sessions']} sessions of {len(KINDS)} kinds, {result['lost']} lost "
           f"({result['sessions_per_s']}/s after the warm-up)")
    report(f"after warm-up: {start}; at the end: {end}; peak RSS {peak} KB")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = soak(args.sessions, args.concurrency)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["lost"] == 0 and result["milter_alive"] else 1


if __name__ == "__main__":
    sys.exit(main())
