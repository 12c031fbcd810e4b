"""Prometheus metrics, scraped from a running milter while mail goes through it, and the
debug log of each check's answer."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from policy_milter.exitcodes import EXIT_RULES, EXIT_RUNTIME
from policy_milter.mtaclient import EomResult
from policy_milter.rules.policy import load
from tests.conftest import REPO, copy_rules
from tests.milter.conftest import MilterProcess, start_milter
from tests.milter.test_startup import one_line_error
from tests.support.cli import cli
from tests.support.daemon import free_port
from tests.support.dnsservers import Dnsmasq
from tests.support.session import assert_reply, mail_from

MESSAGE = b"From: a@sender.example\r\nTo: postmaster@example.com\r\nSubject: hi\r\n\r\nHi.\r\n"
Sample = tuple[str, frozenset[tuple[str, str]]]


@dataclass
class Scraper:
    url: str

    def samples(self) -> dict[Sample, float]:
        with urllib.request.urlopen(self.url, timeout=10) as response:
            assert response.headers["Content-Type"].startswith("text/plain")
            text = response.read().decode()
        return {(s.name, frozenset(s.labels.items())): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    def value(self, name: str, **labels: str) -> float:
        """The sample's value; 0 when it has not been counted yet."""
        return self.samples().get((name, frozenset(labels.items())), 0.0)

    def total(self, name: str, **labels: str) -> float:
        """The sum over the samples named ``name`` that carry ``labels``."""
        return sum(v for (n, ls), v in self.samples().items()
                   if n == name and set(labels.items()) <= ls)


@pytest.fixture(scope="module")
def metered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MilterProcess, Scraper]]:
    """A milter with metrics on, its resolver a real dnsmasq, its spamd away."""
    work = tmp_path_factory.mktemp("metrics")
    port = free_port()
    with Dnsmasq(work / "dnsmasq", ptr_records=[("192.0.2.10", "mx.sender.example")]) as dns:
        rules = copy_rules(work / "rules", metrics=f"inet:{port}", rdns="required",
                           dns_nameservers="127.0.0.1", dns_port=str(dns.port),
                           spamd=f"tcp:127.0.0.1:{free_port()}", spam_failure_action="accept")
        process = start_milter(rules, work)
        yield process, Scraper(f"http://127.0.0.1:{port}/metrics")
        assert process.stop() == 0


def deliver(process: MilterProcess) -> None:
    with process.client() as client:
        assert mail_from(client).passed
        assert client.rcpt("<postmaster@example.com>").passed
        assert client.data(macros={"i": "QID1"}).passed
        result = client.message(MESSAGE)
        assert isinstance(result, EomResult) and result.reply.passed


def test_decisions_by_outcome_entry_check_and_rule(
        metered: tuple[MilterProcess, Scraper]) -> None:
    process, scraper = metered
    rule = f"{process.rules / 'access'}:3"  # sender @blocked.example reject
    refused = dict(stage="mail", outcome="reject", entry="access_denied", check="access",
                   rule=rule, monitor="no")
    before = scraper.value("policy_milter_decisions_total", **refused)
    with process.client() as client:
        assert_reply(mail_from(client, "<x@blocked.example>"), "access_denied")
    assert scraper.value("policy_milter_decisions_total", **refused) == before + 1
    accepted = dict(stage="eom", outcome="accept", entry="", check="", rule="", monitor="no")
    before = scraper.value("policy_milter_decisions_total", **accepted)
    deliver(process)
    assert scraper.value("policy_milter_decisions_total", **accepted) == before + 1


def test_monitor_mode_decisions_are_labelled(metered: tuple[MilterProcess, Scraper]) -> None:
    process, scraper = metered
    with process.client() as client:
        assert mail_from(client, "<x@trial.example>").passed  # monitor reject: passes
    assert scraper.total("policy_milter_decisions_total", outcome="reject", monitor="yes",
                         rule=f"{process.rules / 'access'}:8") == 1


def test_time_per_stage(metered: tuple[MilterProcess, Scraper]) -> None:
    process, scraper = metered
    before = {stage: scraper.value("policy_milter_stage_seconds_count", stage=stage)
              for stage in ("connect", "helo", "mail", "rcpt", "data", "eom")}
    deliver(process)
    for stage, count in before.items():
        assert scraper.value("policy_milter_stage_seconds_count", stage=stage) == count + 1
    assert scraper.value("policy_milter_stage_seconds_bucket", stage="rcpt", le="+Inf") >= 1
    assert scraper.value("policy_milter_stage_seconds_sum", stage="eom") > 0


def test_dns_cache_hits_and_misses(metered: tuple[MilterProcess, Scraper]) -> None:
    """The client's PTR is asked once; the next session from it is a cache hit."""
    process, scraper = metered
    with process.client() as client:
        assert mail_from(client, addr="192.0.2.10").passed
    misses = scraper.value("policy_milter_dns_lookups_total", result="miss")
    hits = scraper.value("policy_milter_dns_lookups_total", result="hit")
    assert misses >= 1
    with process.client() as client:
        assert mail_from(client, addr="192.0.2.10").passed
    assert scraper.value("policy_milter_dns_lookups_total", result="miss") == misses
    assert scraper.value("policy_milter_dns_lookups_total", result="hit") > hits


def test_scanner_failures(metered: tuple[MilterProcess, Scraper]) -> None:
    process, scraper = metered
    failed = dict(kind="dependency", check="spam", service="spamd")
    before = scraper.value("policy_milter_failures_total", **failed)
    deliver(process)  # accepted, marked unchecked: spam_failure_action = accept
    assert scraper.value("policy_milter_failures_total", **failed) == before + 1


def test_open_sessions(metered: tuple[MilterProcess, Scraper]) -> None:
    process, scraper = metered
    with process.client() as client:
        assert client.connect("mx.sender.example", "192.0.2.10", 40000).passed
        assert scraper.value("policy_milter_open_sessions") == 1
    deadline = time.monotonic() + 10
    while scraper.value("policy_milter_open_sessions") != 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_rules_hash_and_reloads(metered: tuple[MilterProcess, Scraper]) -> None:
    process, scraper = metered
    rules = str(process.rules)
    digest = load(process.rules).digest
    assert scraper.value("policy_milter_rules_info", rules=rules, rules_hash=digest) == 1
    assert 0 < scraper.value("policy_milter_rules_load_seconds") < 30
    loaded = scraper.value("policy_milter_rules_loaded_timestamp_seconds")
    access = process.rules / "access"
    original = access.read_text()
    try:
        access.write_text(original + "sender @later.example reject\n")
        process.proc.send_signal(signal.SIGHUP)
        changed = load(process.rules).digest
        process.wait_for_log(f"rules_hash={changed}", event="reload")
        assert scraper.total("policy_milter_rules_info") == 1  # the old hash is gone
        assert scraper.value("policy_milter_rules_info", rules=rules, rules_hash=changed) == 1
        assert scraper.value("policy_milter_rules_loaded_timestamp_seconds") > loaded
        access.write_text(original + "sender @later.example frobnicate\n")
        process.proc.send_signal(signal.SIGHUP)
        process.wait_for_log("status=failed", event="reload")
        assert scraper.value("policy_milter_reload_failures_total") == 1
        assert scraper.value("policy_milter_rules_info", rules=rules, rules_hash=changed) == 1
    finally:
        access.write_text(original)


def test_a_metrics_address_in_use(tmp_path: Path) -> None:
    port = free_port()
    rules = copy_rules(tmp_path / "rules", metrics=f"inet:{port}@127.0.0.1")
    holder = start_milter(rules, tmp_path)  # holds the port
    try:
        result = cli("run", "--rules", str(rules), "--socket", f"unix:{tmp_path}/other.sock")
        one_line_error(result, EXIT_RUNTIME, f"cannot serve metrics on inet:{port}@127.0.0.1: "
                                             "the address is in use by another process")
    finally:
        assert holder.stop() == 0


@pytest.mark.parametrize("value, reason", [
    ("unix:/run/metrics.sock", "metrics are served over HTTP"),
    ("inet:99999", "port 99999 is outside 1-65535"),
    ("9187", "is not unix:/PATH, inet:PORT[@HOST] or inet6:PORT[@HOST]"),
])
def test_a_bad_metrics_address_is_a_rules_error(tmp_path: Path, value: str, reason: str) -> None:
    rules = copy_rules(tmp_path / "rules", metrics=value)
    result = cli("check", "--rules", str(rules))
    assert result.returncode == EXIT_RULES
    assert f"{rules / 'policy.conf'}:" in result.stderr and reason in result.stderr


def test_metrics_without_prometheus_client(tmp_path: Path) -> None:
    """The setting names where it is and what to install."""
    rules = copy_rules(tmp_path / "rules", metrics=f"inet:{free_port()}")
    blocker = tmp_path / "blocker" / "prometheus_client"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('not installed here')\n")
    line = next(n for n, text in enumerate((rules / "policy.conf").read_text().splitlines(), 1)
                if text.startswith("metrics ="))
    result = subprocess.run(
        [sys.executable, "-m", "policy_milter.cli", "run", "--rules", str(rules)], cwd=REPO,
        capture_output=True, text=True, timeout=60,
        env={"PYTHONPATH": str(blocker.parent), "PATH": "/usr/bin:/bin"})
    one_line_error(result, EXIT_RUNTIME, f"{rules / 'policy.conf'}:{line}: metrics need the "
                                         "Python package prometheus_client")


def test_debug_logs_each_check_and_its_answer(tmp_path: Path) -> None:
    process = start_milter(copy_rules(tmp_path / "rules"), tmp_path, "--log-level", "debug")
    try:
        with process.client() as client:
            assert_reply(mail_from(client, "<x@blocked.example>"), "access_denied")
        decided = process.wait_for_log("answer=reject", event="check")
        assert "stage=mail" in decided and "check=access" in decided
        assert f"rule={process.rules / 'access'}:3" in decided
        assert "entry=access_denied" in decided and "duration_ms=" in decided
        passed = [line for line in process.log_lines()
                  if "event=check" in line and "stage=mail" in line and "answer=continue" in line]
        assert passed, "the checks before the deciding one are logged too"
        assert all("level=debug" in line for line in process.log_lines()
                   if "event=check " in line)
    finally:
        assert process.stop() == 0
    (tmp_path / "quiet").mkdir()
    quiet = start_milter(copy_rules(tmp_path / "quiet-rules"), tmp_path / "quiet")
    try:
        with quiet.client() as client:
            mail_from(client, "<x@blocked.example>")
        quiet.wait_for_log("x@blocked.example", event="decision")
        assert not [line for line in quiet.log_lines() if "event=check " in line]
    finally:
        assert quiet.stop() == 0
