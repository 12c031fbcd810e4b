"""Regenerates the README's sample report: docs/report-sample.log and docs/report.png.

Run with the venv's Python and Debian's chromium (paths are the repository root's):

    .venv/bin/python contrib/report/sample.py

A day of traffic (2026-11-30, UTC) goes through the real engine on
contrib/report/sample-rules, logging as the milter does; only the clock is the day's,
and the DNS list is a stand-in that lists 198.51.100.128/25 and times out from 14:00 to
15:00.  Then ``policy-milter report`` makes the page, printing its text, and chromium
takes the screenshot.  The same seed gives the same log, but for the durations and
the session names (they carry the process id).
"""

from __future__ import annotations

import logging
import os
import random
import subprocess
import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import Future
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from policy_milter.engine import Engine, Session  # noqa: E402
from policy_milter.log import DecisionLog, configure  # noqa: E402
from policy_milter.rules.policy import load  # noqa: E402
from policy_milter.services import Services  # noqa: E402
from policy_milter.services.dns import Answer, DnsError  # noqa: E402

RULES = "contrib/report/sample-rules"  # paths from the repository root, as the log names them
LOG = Path("docs/report-sample.log")
PNG = Path("docs/report.png")
DAY = datetime(2026, 11, 30, tzinfo=UTC)
OUTAGE = 14  # the hour the DNS list does not answer
MAILBOXES = ("postmaster", "alice", "bob", "sales")


class Clock(logging.Filter):
    """Stamps each line with the simulated time instead of now."""

    now = DAY

    def filter(self, record: logging.LogRecord) -> bool:
        record.created = self.now.timestamp()
        record.msecs = self.now.microsecond // 1000
        return True


class ListResolver:
    """bl.example lists the upper half of 198.51.100.0/24, and fails in the outage hour."""

    def submit(self, name: str, rdtype: str) -> Future[Answer]:
        future: Future[Answer] = Future()
        octets = name.split(".")[:4]
        if Clock.now.hour == OUTAGE:
            future.set_exception(DnsError("timed out"))
        elif octets[1:4] == ["100", "51", "198"] and int(octets[0]) >= 128:
            future.set_result(Answer(name, rdtype, ("127.0.0.2",), 300))
        else:
            future.set_result(Answer(name, rdtype, (), 300))
        return future


def session(engine: Engine, rng: random.Random, client: str, helo: str, sender: str,
            rcpts: list[str]) -> None:
    """One SMTP session: greeting, MAIL, each RCPT, and the message if a recipient
    passed (as the MTA does)."""
    qid = f"{rng.getrandbits(40):010X}"
    s: Session = engine.session()
    s.connect(client, helo if "." in helo and "<" not in helo else "", "smtpd")
    if not s.helo(helo, False).stops and not s.mail(f"<{sender}>", [], "", qid).stops:
        passed = [r for r in rcpts if not s.rcpt(f"<{r}>", [], qid).stops]
        if passed and not s.data(qid).stops:
            s.eom(qid)
    s.close()


def mailbox(rng: random.Random) -> str:
    return f"{rng.choice(MAILBOXES)}@example.com"


def remote(rng: random.Random) -> str:
    return f"192.0.2.{rng.randrange(20, 250)}"


# What a day brings, with how often: (weight, client, HELO, sender, recipients).
Kind = tuple[int, Callable[[random.Random], tuple[str, str, str, list[str]]]]
KINDS: list[Kind] = [
    (40, lambda r: (remote(r), f"mx{r.randrange(9)}.sender{r.randrange(30)}.example",
                    f"user{r.randrange(99)}@sender{r.randrange(30)}.example",
                    sorted({mailbox(r) for _ in range(r.randrange(1, 4))}))),
    (8, lambda r: (remote(r), "mail.lists.example", f"bounce{r.randrange(99)}@lists.example",
                   [mailbox(r), f"{r.choice(['info', 'jobs', 'admin'])}@example.com"])),
    (3, lambda r: (remote(r), "mx.sender.example", "a@sender.example",
                   ["former@example.com", mailbox(r)])),
    (6, lambda r: (f"203.0.113.{r.randrange(1, 250)}", "spam.example",
                   f"x{r.randrange(999)}@spam.example", [mailbox(r)])),
    (5, lambda r: (remote(r), "mta.bulk-offers.example", "deals@bulk-offers.example",
                   [mailbox(r)])),
    (5, lambda r: (remote(r), f"host-{r.randrange(255)}.dynamic.example.net",
                   f"{r.randrange(999)}@freemail.example", [mailbox(r)])),
    (7, lambda r: (f"198.51.100.{r.randrange(128, 250)}", "relay.example",
                   f"info@shop{r.randrange(9)}.example", [mailbox(r)])),
    (4, lambda r: (remote(r), "mx.newsletter.example", "news@newsletter.example",
                   ["sales@example.com"])),
    (4, lambda r: (remote(r), "mx.partner.example", "orders@partner.example",
                   ["sales@example.com", "bob@example.com"])),
    (3, lambda r: ("198.51.100.7", "gw.example.org", "ops@example.org", ["alice@example.com"])),
    (3, lambda r: (remote(r), "mx.sender.example", "ceo@example.com", ["alice@example.com"])),
    (3, lambda r: (remote(r), "mx.sender.example", "a@sender.example",
                   [f"someone@elsewhere{r.randrange(9)}.example"])),
    (1, lambda r: (remote(r), r.choice(["<script>alert(1)</script>", "[127.0.0.1]"]),
                   "probe@sender.example", [mailbox(r)])),
]


def day(engine: Engine, rng: random.Random) -> None:
    for hour in range(24):
        busy = 2 + round(6 * max(0.0, 1 - abs(hour - 14) / 8))  # a working day's curve
        starts = sorted(rng.uniform(0, 3600) for _ in range(busy + rng.randrange(3)))
        for second in starts:
            Clock.now = DAY + timedelta(hours=hour, seconds=second)
            _, make = rng.choices(KINDS, weights=[w for w, _ in KINDS])[0]
            session(engine, rng, *make(rng))


def main() -> int:
    os.chdir(REPO)
    LOG.unlink(missing_ok=True)
    logger = configure(f"file:{LOG}")
    for handler in logger.handlers:
        handler.addFilter(Clock())
    engine = Engine(load(RULES), Services(dns=ListResolver()), log=DecisionLog(logger))
    day(engine, random.Random(2026))
    engine.close()
    logging.shutdown()
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "report.html"
        subprocess.run([sys.executable, "-m", "policy_milter.cli", "report", "--top", "5",
                        "--rules", RULES, "--html", str(page), str(LOG)], check=True)
        subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu",
                        "--hide-scrollbars", f"--screenshot={PNG.resolve()}",
                        "--window-size=1000,1180", f"--user-data-dir={tmp}/profile",
                        page.as_uri()], check=True, capture_output=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
