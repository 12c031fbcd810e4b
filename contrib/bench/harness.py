"""What the benchmarks share: processes started and stopped around a measurement, and
/proc readings of a process's CPU time and memory."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from tests.support.dnsservers import Dnsmasq, Rbldnsd  # the importer puts the repository first

REPO = Path(__file__).resolve().parents[2]
NULL_MILTER = REPO / "contrib" / "bench" / "nullmilter.py"


@contextmanager
def process(command: list[str], ready: Path | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``command`` for the block; when ``ready`` is given, wait until it exists."""
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while ready is not None and not ready.exists():
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"{' '.join(command[:3])} did not start")
            time.sleep(0.05)
        yield proc
    finally:
        os.killpg(proc.pid, 9)  # a milter's workers too
        proc.wait()


def policy_milter(rules: Path, socket: str, log: Path, workers: int = 1) -> list[str]:
    """The command line of policy-milter serving ``rules`` on ``socket``."""
    return [sys.executable, "-m", "policy_milter.cli", "run", "--rules", str(rules),
            "--socket", socket, "--socket-mode", "666", "--log", f"file:{log}",
            *(["--workers", str(workers)] if workers > 1 else [])]


def dns_servers(stack: ExitStack, work: Path, ptr_records: list[tuple[str, str]]) -> Dnsmasq:
    """For the block of ``stack``: rbldnsd serving the DNS list bl.test (127.0.0.2 for
    203.0.113.0/24), and dnsmasq answering ``ptr_records`` and forwarding bl.test to it:
    the resolver the benchmarks' rules name."""
    rbl = stack.enter_context(Rbldnsd(work / "rbl", {
        "bl.test": ("ip4set", ":127.0.0.2:listed\n203.0.113.0/24\n")}))
    return stack.enter_context(Dnsmasq(work / "dns", ptr_records=ptr_records,
                                       forward={"bl.test": rbl.port}))


def null_milter(socket: str, callbacks: str, noreply: str) -> list[str]:
    return [sys.executable, str(NULL_MILTER), socket, callbacks, noreply]


def cpu_seconds(pid: int, reaped: bool = False) -> float:
    """User plus system CPU time so far of a process and its live descendants (a milter's
    workers); with ``reaped``, also of the children they have waited for (Postfix's master
    collects its ended smtpd and cleanup processes)."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        parents[int(entry.name)] = int(fields[1])
        ticks = int(fields[11]) + int(fields[12])
        if reaped:
            ticks += int(fields[13]) + int(fields[14])
        times[int(entry.name)] = ticks / os.sysconf("SC_CLK_TCK")
    tree, grew = {pid}, True
    while grew:
        below = {child for child, parent in parents.items() if parent in tree} - tree
        grew = bool(below)
        tree |= below
    return sum(times.get(p, 0.0) for p in tree)


def status(pid: int, field: str) -> int:
    """A /proc/PID/status figure in bytes (VmRSS, VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)
