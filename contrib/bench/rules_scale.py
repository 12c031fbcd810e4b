"""Rule evaluation cost against the size of the access list: 10 entries against 10,000.

    .venv/bin/python contrib/bench/rules_scale.py [--sessions 3000] [--repeats 7]

The shipped rules plus an access list of N entries, one rule a line, mixing client
addresses, CIDR blocks, sender addresses and sender domains (the forms admins keep in
large lists).  The engine alone (no milter protocol) runs the same sessions, MAIL
FROM and two RCPT TO each, none of them listed, so every rule list is consulted in
full.  Reported: microseconds per session for each N, best of the repeats, and the
ratio 10,000 / 10 (target: within 10%).  The loaded rules are frozen out of the
garbage collector's sight, as `policy-milter run` does.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from policy_milter.engine import Engine  # noqa: E402
from policy_milter.log import DecisionLog  # noqa: E402
from policy_milter.rules.policy import load  # noqa: E402
from tests.conftest import copy_rules  # noqa: E402

SIZES = (10, 10_000)


def access_list(entries: int) -> str:
    """N rules in the four usual forms; none matches the benchmark's sessions."""
    lines = []
    for i in range(entries):
        a, b = divmod(i, 250)
        form = i % 4
        if form == 0:
            lines.append(f"client 198.18.{a % 250}.{b + 1} reject")
        elif form == 1:
            lines.append(f"client 10.{a % 250}.{b}.0/24 reject")
        elif form == 2:
            lines.append(f"sender spammer{i}@bulk{a}.example reject")
        else:
            lines.append(f"sender @junk{i}.example reject")
    return "".join(f"{line}\n" for line in lines)


def engine_for(work: Path, entries: int) -> Engine:
    rules = copy_rules(work / f"rules{entries}", REPO / "rules")
    (rules / "access").write_text(access_list(entries))
    return Engine(load(rules), log=DecisionLog(_quiet()))


def _quiet():  # type: ignore[no-untyped-def]
    import logging
    logger = logging.getLogger("rules-scale")
    logger.disabled = True
    return logger


def run(engine: Engine, sessions: int) -> float:
    """Seconds per session for MAIL FROM and two RCPT TO."""
    started = time.perf_counter()
    for i in range(sessions):
        s = engine.session()
        s.connect(f"192.0.2.{i % 200 + 1}", "mx.sender.example", "smtpd")
        s.helo("mx.sender.example", False)
        s.mail(f"<user{i}@sender.example>", [], "", "")
        s.rcpt("<postmaster@example.com>", [], "")
        s.rcpt("<abuse@example.com>", [], "")
        s.abort()
        s.close()
    return (time.perf_counter() - started) / sessions


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rules-bench-"))
    try:
        engines = {n: engine_for(work, n) for n in SIZES}
        gc.freeze()
        best = {n: float("inf") for n in SIZES}
        for _ in range(args.repeats):  # interleaved, so drift hits both alike
            for n in SIZES:
                best[n] = min(best[n], run(engines[n], args.sessions))
    finally:
        shutil.rmtree(work)
    ratio = best[SIZES[1]] / best[SIZES[0]]
    print("| access entries | us per session (MAIL + 2 RCPT) |")
    print("|---|---|")
    for n in SIZES:
        print(f"| {n} | {best[n] * 1e6:.1f} |")
    print(f"ratio {SIZES[1]} / {SIZES[0]}: {ratio:.3f}")
    if args.json:
        args.json.write_text(json.dumps({"us_per_session": {str(n): best[n] * 1e6 for n in SIZES},
                                         "ratio": ratio}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
