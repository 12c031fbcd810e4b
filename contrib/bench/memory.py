"""Memory benchmark: idle connections and 25 MB messages, policy-milter against a null milter.

    .venv/bin/python contrib/bench/memory.py [--json FILE]

Both milters run as processes on unix sockets and are driven over the milter protocol
by policy_milter.mtaclient.  The null milter negotiates the same callbacks as
policy-milter with the benchmark's rules (content rules and clamd on, so the whole
message is kept and streamed to clamd), on the shipped rules.  Figures are the milter process's resident
memory from /proc: per idle connection (0, 64 and 256 held open), and the peak
increase (VmHWM after resetting it) while one, then eight, 25 MB messages go through.
Targets: <= 200 KB per idle connection, <= 5 MB peak increase for one 25 MB message.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from harness import null_milter, policy_milter, process, status  # noqa: E402

from policy_milter.engine import Engine  # noqa: E402
from policy_milter.mtaclient import MilterClient  # noqa: E402
from policy_milter.rules.policy import load  # noqa: E402
from tests.conftest import copy_rules  # noqa: E402
from tests.support.scanners import ClamdServer  # noqa: E402

BIG = 25 * 1024 * 1024
IDLE_COUNTS = (0, 64, 256)
LINE = b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAxMjM0\r\n"


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM starts again from VmRSS


def session(address: str, body: bytes | None) -> MilterClient:
    """A client through HELO; with a body, a whole message and the client closed."""
    client = MilterClient(address, timeout=120)
    client.open()
    client.connect("mx.sender.example", "192.0.2.10", 40000, macros={"{daemon_name}": "smtpd"})
    client.helo("mx.sender.example")
    if body is None:
        return client
    client.mail("<a@sender.example>")
    client.rcpt("<postmaster@example.com>")
    client.data()
    client.header("Subject", "big")
    client.eoh()
    for i in range(0, len(body), 65535):
        client.body(body[i:i + 65535])
    reply = client.eom().reply
    assert reply.action == "continue", reply
    client.close()
    return client


def measure(pid: int, address: str, big: bytes) -> dict[str, float]:
    for _ in range(3):
        session(address, b"warm-up\r\n")
    rss: dict[int, int] = {}
    for count in IDLE_COUNTS:
        clients = [session(address, None) for _ in range(count)]
        time.sleep(0.3)
        rss[count] = status(pid, "VmRSS")
        for client in clients:
            client.close()
    time.sleep(0.5)
    result = {f"per_idle_connection_kb_{n}": (rss[n] - rss[0]) / n / 1024
              for n in IDLE_COUNTS if n}
    for parallel in (1, 8):
        reset_peak(pid)
        before = status(pid, "VmRSS")
        threads = [threading.Thread(target=session, args=(address, big))
                   for _ in range(parallel)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        result[f"peak_increase_mb_{parallel}x25mb"] = (status(pid, "VmHWM") - before) / 2**20
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    big = LINE * (BIG // len(LINE) + 1)
    work = Path(tempfile.mkdtemp(prefix="memory-bench-"))
    try:
        with ExitStack() as stack:
            clamd = stack.enter_context(ClamdServer(work / "clamd", stream_max="40M"))
            rules = copy_rules(work / "rules", REPO / "rules", clamd=clamd.unix_address,
                               clamd_max_size="40M")
            (rules / "filters").write_text("attachment *.exe reject\n")
            needs = Engine(load(rules)).plan.needs
            callbacks = ",".join(s.value for s in needs.callbacks)
            noreply = ",".join(s.value for s in needs.noreply)
            null_sock, policy_sock = work / "null.sock", work / "policy.sock"
            null = stack.enter_context(process(
                null_milter(f"unix:{null_sock}", callbacks, noreply), null_sock))
            policy = stack.enter_context(process(
                policy_milter(rules, f"unix:{policy_sock}", work / "milter.log"), policy_sock))
            results = {"null milter": measure(null.pid, f"unix:{null_sock}", big),
                       "policy-milter": measure(policy.pid, f"unix:{policy_sock}", big)}
    finally:
        shutil.rmtree(work)
    print("| figure | null milter | policy-milter |")
    print("|---|---|---|")
    for key in results["policy-milter"]:
        print(f"| {key} | {results['null milter'][key]:.1f} | {results['policy-milter'][key]:.1f} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
