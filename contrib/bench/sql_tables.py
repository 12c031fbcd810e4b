"""The cost of tables from SQL against flat files, per session through the engine.

    .venv/bin/python contrib/bench/sql_tables.py [--sessions 2000] [--repeats 5] [--json FILE]

The test rules (tests/fixtures/rules) with their five tables read from flat files, from
an SQLite file and from a PostgreSQL server (a throwaway cluster on a unix socket, as
the tests start it; run as root), both in the postfixadmin schema of
tests/support/sqltables.py.  The engine alone (no milter protocol) runs the same
sessions: MAIL FROM a new sender each time, RCPT TO an account with an extension, an
alias and a list; every step must pass.  Cached: the default sql_cache_ttl (only the
new sender's keys reach the database); uncached: sql_cache_ttl = 0 (every key does).
Reported: microseconds per session (best of the repeats), lookups sent per session,
and the ratio to flat files in the same run.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from policy_milter.decision import Action  # noqa: E402
from policy_milter.engine import Engine  # noqa: E402
from policy_milter.log import DecisionLog  # noqa: E402
from policy_milter.rules.policy import load  # noqa: E402
from tests.conftest import FIXTURE_RULES  # noqa: E402
from tests.support.postgres import Postgres  # noqa: E402
from tests.support.sqltables import fill, sql_rules, sqlite_database  # noqa: E402

RECIPIENTS = ("<alice+bench@example.com>", "<abuse@example.com>", "<announce@lists.example.com>")


def run(engine: Engine, sessions: int, offset: int) -> float:
    """Seconds per session; the senders are new to every run (``offset``)."""
    started = time.perf_counter()
    for i in range(offset, offset + sessions):
        s = engine.session()
        s.connect("10.1.0.5", "client.example.com", "smtpd")
        s.helo("client.example.com", False)
        steps = [s.mail(f"<user{i}@example.com>", [], "", "")]
        steps += [s.rcpt(r, [], "") for r in RECIPIENTS]
        if any(d.action is not Action.CONTINUE for d in steps):
            raise SystemExit(f"a step did not pass: {steps}")
        s.abort()
        s.close()
    return (time.perf_counter() - started) / sessions


def measure(engine: Engine, sessions: int, repeats: int, serial: list[int]) -> tuple[float, float]:
    """Best seconds per session over the repeats, and lookups sent per session."""
    run(engine, 50, serial[0])  # connect, warm what is shared by every session
    serial[0] += 50
    tables = engine.plan.live.tables.values()
    before = sum(t.lookups for t in tables)
    best = []
    for _ in range(repeats):
        best.append(run(engine, sessions, serial[0]))
        serial[0] += sessions
    return min(best), (sum(t.lookups for t in tables) - before) / (sessions * repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    quiet = logging.getLogger("sql-bench")
    quiet.disabled = True
    serial = [0]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        server = Postgres().start()
        try:
            import psycopg
            with psycopg.connect(server.url, autocommit=True) as conn:
                fill(conn.execute)
            urls = {"sqlite": f"sqlite:{sqlite_database(work / 'mail.db')}",
                    "postgresql": server.url}
            configs = {"flat files": FIXTURE_RULES}
            for name, url in urls.items():
                configs[f"{name}, cached"] = sql_rules(work / f"{name}-cached", url)
                configs[f"{name}, uncached"] = sql_rules(work / f"{name}-uncached", url,
                                                         sql_cache_ttl="0")
            results = {}
            for name, rules in configs.items():
                engine = Engine(load(rules), log=DecisionLog(quiet))
                seconds, lookups = measure(engine, args.sessions, args.repeats, serial)
                results[name] = {"us_per_session": seconds * 1e6, "lookups_per_session": lookups}
                engine.close()
        finally:
            server.remove()
    flat = results["flat files"]["us_per_session"]
    print(f"{'tables':<24}{'us/session':>12}{'lookups/session':>17}{'x flat':>9}")
    for name, r in results.items():
        r["ratio"] = r["us_per_session"] / flat
        print(f"{name:<24}{r['us_per_session']:>12.1f}{r['lookups_per_session']:>17.1f}"
              f"{r['ratio']:>9.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
