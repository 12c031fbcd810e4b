"""The cost per session of the state store: rate counting and greylisting on the
embedded SQLite file and on Redis, as ratios to the in-memory store, in one run.

    .venv/bin/python contrib/bench/state_stores.py [--sessions 2000] [--repeats 5]
                                                   [--accounts 100]

The engine alone (no milter protocol) on the fixture rules plus a hundred accounts with
period limits they never reach, taking turns (a window's cost grows with the records in
it, one per message; a hundred an hour is a busy account): each session logs in, sends
MAIL FROM and two RCPT TO, and is accepted at end of message, so the limits check reads
two counters at each RCPT and two records are added after the message.  A second
workload turns greylisting on and sends from clients whose triplets have passed (the
common case on a busy MX: two reads and a write per recipient).  Stores: memory (this
process), SQLite (a file in a temporary directory) and a private redis-server on a
loopback port, started here.
Reported: microseconds per session, best of the interleaved repeats, and each store's
ratio to memory.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from ipaddress import ip_address
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from policy_milter.engine import Engine  # noqa: E402
from policy_milter.greylist import Greylist  # noqa: E402
from policy_milter.log import DecisionLog  # noqa: E402
from policy_milter.rules.policy import load  # noqa: E402
from policy_milter.rules.settings import Settings  # noqa: E402
from policy_milter.services import Services  # noqa: E402
from policy_milter.services.state import RedisServer as Address  # noqa: E402
from policy_milter.services.state import StateStore  # noqa: E402
from policy_milter.services.state.memory import MemoryStore  # noqa: E402
from policy_milter.services.state.redis import RedisStore  # noqa: E402
from policy_milter.services.state.sqlite import SqliteStore  # noqa: E402
from tests.conftest import copy_rules  # noqa: E402
from tests.support.redis import RedisServer  # noqa: E402

STORES = ("memory", "sqlite", "redis")
WORKLOADS = ("limits", "greylist")
def rules(work: Path, workload: str, accounts: int) -> Path:
    settings = {"greylist": "yes", "greylist_auto_allow": "0"} if workload == "greylist" else {}
    path = copy_rules(work / f"rules-{workload}", **settings)
    with open(path / "accounts", "a") as table:
        table.writelines(f"bench{i}@quota.example  login=bench{i}  limit_messages=1000000/1h "
                            "limit_recipients=1000000/1h\n" for i in range(accounts))
    return path


def session(engine: Engine, i: int, workload: str, accounts: int) -> None:
    s = engine.session()
    login = f"bench{i % accounts}" if workload == "limits" else ""
    s.connect(f"198.51.100.{i % 50 + 1}" if workload == "greylist" else "192.0.2.9",
              "mx.sender.example", "smtpd")
    s.helo("mx.sender.example", False)
    s.mail(f"<{login}@quota.example>" if login else f"<user{i % 50}@sender.example>", [],
           login, "")
    for rcpt in ("<postmaster@example.com>", "<abuse@example.com>"):
        assert s.rcpt(rcpt, [], "").action.value == "continue"
    s.data("")
    s.header("Subject", b"bench")
    s.body(b"Hello.\r\n")
    s.eom("")
    s.close()


def run(engine: Engine, sessions: int, workload: str, accounts: int) -> float:
    started = time.perf_counter()
    for i in range(sessions):
        session(engine, i, workload, accounts)
    return (time.perf_counter() - started) / sessions


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--accounts", type=int, default=100,
                        help="accounts taking turns: each window holds sessions / accounts "
                             "records at most")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="state-bench-"))
    logger = logging.getLogger("state-bench")
    logger.disabled = True
    try:
        with RedisServer(work / "redis") as redis_server:
            makers: dict[str, Callable[[], StateStore]] = {
                "memory": MemoryStore,
                "sqlite": lambda: SqliteStore(work / f"state-{time.monotonic_ns()}.sqlite3"),
                "redis": lambda: RedisStore(Address.parse(redis_server.url),
                                            f"bench-{time.monotonic_ns()}:"),
            }
            policies = {w: load(rules(work, w, args.accounts)) for w in WORKLOADS}
            engines = {(w, s): Engine(policies[w], Services(state=makers[s]()),
                                      log=DecisionLog(logger))
                       for w in WORKLOADS for s in STORES}
            for s in STORES:
                _pass_triplets(engines["greylist", s].plan.live.state,
                               policies["greylist"].settings)
            gc.freeze()
            best = {key: float("inf") for key in engines}
            for _ in range(args.repeats):  # interleaved, so drift hits all alike
                for (w, s), engine in engines.items():
                    best[w, s] = min(best[w, s], run(engine, args.sessions, w, args.accounts))
    finally:
        shutil.rmtree(work)
    print("| workload | store | us per session | ratio to memory |")
    print("|---|---|---|---|")
    for w, s in engines:
        print(f"| {w} | {s} | {best[w, s] * 1e6:.1f} | {best[w, s] / best[w, 'memory']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps({f"{w}/{s}": best[w, s] * 1e6 for w, s in best},
                                        indent=2) + "\n")
    return 0


def _pass_triplets(state: StateStore, settings: Settings) -> None:
    """Every triplet of the greylist workload has passed already: each was tried once,
    greylist_delay ago, and retried now, through the greylist itself."""
    greylist = Greylist(state, settings)
    t0 = time.time() - greylist.delay
    for i in range(50):
        client = ip_address(f"198.51.100.{i + 1}")  # as session() connects
        sender = f"user{i}@sender.example"  # senders and recipients as mailbox keys
        for rcpt in ("postmaster@example.com", "abuse@example.com"):
            greylist.check(client, sender, rcpt, now=t0)
            assert greylist.check(client, sender, rcpt, now=t0 + greylist.delay).passed


if __name__ == "__main__":
    sys.exit(main())
