"""policy-milter report: the counts of a small hand-written log, each checked, and the
text, JSON and HTML made of them (the HTML escaped: the log carries what clients typed)."""

from __future__ import annotations

import argparse
import io
import json
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from policy_milter import logread
from policy_milter.cli import main
from policy_milter.report import html, moment, sections, text
from policy_milter.report.summary import RuleNames, Summary
from policy_milter.rules.policy import Policy
from tests.conftest import FIXTURE_RULES, REPO

FIXTURES = REPO / "tests" / "fixtures"
HASH = "d8ab35e16cb9"  # tests/fixtures/rules' (the log names their copy in /etc)
# Five transactions from 09:59 to 11:10 (one hour through syslog with its own stamp), a
# rule in monitor mode, failures, an internal error, a syslog line of RFC 3164 (no year),
# one from stderr (no time stamp), and two lines that are not ours.
LOG = FIXTURES / "report.log"
HOSTILE_HELO = "<script>alert(1)</script>"
HOSTILE_SENDER = '"><svg/onload=alert(1)>@filtered.example'


def summarise(log: Path, policy: Policy | None = None, since: datetime | None = None,
              until: datetime | None = None) -> Summary:
    summary = Summary(since, until).add_all(logread.records([str(log)], since, until))
    if policy is not None:
        summary.match_rules(policy)
    return summary


def test_every_count_of_the_log(fixture_policy: Policy) -> None:
    s = summarise(LOG, fixture_policy)
    assert s.records == 20  # the postfix line and the stray one are not ours
    assert s.events == {"start": 1, "decision": 9, "envelope": 5, "dependency_failure": 1,
                        "dnsbl_zone_error": 1, "not_checked": 1, "internal_error": 1,
                        "stop": 1}
    assert s.outcomes == {"accept": 2, "reject": 2, "tempfail": 1}
    assert s.actions == {"reject": 4, "accept": 2, "tempfail": 1, "permit": 1}
    assert s.monitor == {("/etc/policy-milter/access:8", "reject"): 1}
    assert s.checks == {("recipients", "reject"): 1, ("access", "reject"): 2,
                        ("filters", "reject"): 1, ("dnsbl", "tempfail"): 1,
                        ("access", "permit"): 1}
    assert s.rules["/etc/policy-milter/access:6", "permit"] == 1
    assert sum(s.rules.values()) == 6  # every decision but the two accepts names a rule
    assert s.clients == {"192.0.2.10": 2, "192.0.2.66": 1, "203.0.113.5": 1,
                         "198.51.100.7": 1}
    assert s.helos == {"mx.sender.example": 2, "spam.example": 1, HOSTILE_HELO: 1,
                       "mail.example.net": 1}
    assert s.senders == {"a@sender.example": 2, "x@blocked.example": 1, HOSTILE_SENDER: 1,
                         "b@example.net": 1}  # t@trial.example: its rule only monitors
    assert s.recipients == {"nobody@example.com": 1, "former@example.com": 1,
                            "postmaster@example.com": 1, "alice@example.com": 1}
    assert s.failures == {("dependency_failure", "dnsbl", "dns"): 1,
                          ("dnsbl_zone_error", "dnsbl", "bl.example"): 1,
                          ("not_checked", "content", ""): 1}
    nine, ten, eleven = (datetime(2026, 11, 30, h, tzinfo=UTC) for h in (9, 10, 11))
    assert s.hours == {(nine, "accept"): 1, (ten, "reject"): 2, (ten, "accept"): 1,
                       (eleven, "tempfail"): 1}
    assert s.first == datetime(2026, 11, 30, 9, 58, tzinfo=UTC)
    assert s.hashes == {HASH: 9}


def test_replies_are_known_by_their_catalogue_entry() -> None:
    [entries] = [t for t in sections.sections(summarise(LOG), 10) if t.key == "entry"]
    assert sorted(row[:3] for row in entries.rows) == [
        ("access_denied", "reject", 1), ("content_rejected", "reject", 1),
        ("dns_tempfail", "tempfail", 1), ("permission_denied", "reject", 1),
        ("unknown_user_local", "reject", 1)]  # the monitor line's reply is not among them


def test_a_rule_that_never_matched_is_listed(fixture_policy: Policy) -> None:
    s = summarise(LOG, fixture_policy)
    access, filters = FIXTURE_RULES / "access", FIXTURE_RULES / "filters"
    assert s.unmatched == [f"{access}:{n}" for n in (1, 2, 4, 5, 7, 9, 10, 11, 12, 14, 15)] \
        + [f"{filters}:2"]  # access:8 matched in monitor mode only: it matched


def test_since_and_until_bound_the_period() -> None:
    s = summarise(LOG, since=moment("2026-11-30T10:00"), until=moment("2026-11-30T11:00Z"))
    assert s.outcomes == {"accept": 1, "reject": 2}
    assert {when.hour for when, _ in s.hours} == {10}
    assert s.events == {"decision": 4, "envelope": 3}  # no stamp, no place in a period
    assert dict(sections.heading(s))["period"] == \
        "since 2026-11-30T10:00:00Z, until 2026-11-30T11:00:00Z"
    assert dict(sections.heading(summarise(LOG)))["period"] == "the whole log"


@pytest.mark.parametrize("logged, rule, found", [
    ("/etc/policy-milter/access:3", "/srv/copy/access:3", True),  # another host's path
    ("access:3", "/srv/copy/access:3", True),  # the milter ran in its rules directory
    ("/srv/copy/access:3", "/srv/copy/access:3", True),
    ("/etc/policy-milter/access:4", "/srv/copy/access:3", False),
    ("/etc/policy-milter/access:3", "/srv/copy/sub/access:3", False),
    ("/etc/policy-milter/sub/access:3", "/srv/copy/sub/access:3", True),
    ("/etc/policy-milter/filters:3", "/srv/copy/access:3", False),
])
def test_a_rule_is_found_by_its_place_under_the_rules_directory(
        logged: str, rule: str, found: bool) -> None:
    assert RuleNames([logged]).names(rule, "/srv/copy") is found


def test_other_rules_than_the_logs_are_noted(fixture_policy: Policy) -> None:
    s = summarise(LOG, fixture_policy)
    assert not any(label == "note" for label, _ in sections.heading(s))
    s.rules_hash = "0123456789ab"
    [(_, note)] = [item for item in sections.heading(s) if item[0] == "note"]
    assert "not those of" in note


@pytest.mark.parametrize("given, wanted", [
    ("2026-11-30", "2026-11-30T00:00:00+00:00"),
    ("2026-11-30T14:00", "2026-11-30T14:00:00+00:00"),
    ("2026-11-30T14:00:00+01:00", "2026-11-30T13:00:00+00:00"),
    ("2026-11-30T14:00Z", "2026-11-30T14:00:00+00:00"),
])
def test_moments(given: str, wanted: str) -> None:
    assert moment(given).isoformat() == wanted


@pytest.mark.parametrize("given, age", [("90m", timedelta(minutes=90)),
                                        ("24h", timedelta(hours=24)), ("7d", timedelta(days=7))])
def test_an_age_is_a_moment_before_now(given: str, age: timedelta) -> None:
    assert abs(datetime.now(UTC) - age - moment(given)) < timedelta(seconds=5)


@pytest.mark.parametrize("given", ["yesterday", "24", "h", "2026-13-01", "-1h"])
def test_a_moment_that_is_none_is_refused(given: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=f"'{given}' is not"):
        moment(given)


def test_text_is_aligned_and_greppable(fixture_policy: Policy) -> None:
    out = text.render(summarise(LOG, fixture_policy), 10)
    rows = [line for line in out.splitlines() if line and not line.startswith("#")]
    keys = {t.key for t in sections.sections(summarise(LOG, fixture_policy), 10)}
    assert rows and {row.split()[0] for row in rows} <= keys
    outcome = [row for row in rows if row.startswith("outcome ")]
    assert [row.split() for row in outcome] == [
        ["outcome", "accept", "2"], ["outcome", "reject", "2"], ["outcome", "tempfail", "1"]]
    assert len({len(row) for row in outcome}) == 1  # counts right-aligned in one column
    assert "monitor  /etc/policy-milter/access:8  reject      1" in out
    assert f"unmatched  {FIXTURE_RULES}/filters:2" in out
    assert f"helo  {HOSTILE_HELO}" in out
    assert '"\\"><svg/onload=alert(1)>@filtered.example"' in out  # quoted as the log does


def test_text_escapes_control_characters(tmp_path: Path) -> None:
    path = tmp_path / "esc.log"
    path.write_text('level=info event=decision helo="\\u001b[31mred\\nline" action=reject '
                    'client=192.0.2.1 rule=x:1 rules_hash="\\u001b]0;title\\u0007"\n')
    out = text.render(summarise(path), 10)
    assert "\x1b" not in out and "\x07" not in out
    assert 'helo  "\\u001b[31mred\\nline"' in out


def test_top_cuts_long_lists() -> None:
    [helos] = [t for t in sections.sections(summarise(LOG), 2) if t.key == "helo"]
    assert helos.rows[0] == ("mx.sender.example", 2) and len(helos.rows) == 2
    assert helos.more == 2
    assert "# ... and 2 more (--top)" in text.render(summarise(LOG), 2)


def test_json_has_the_same_tables() -> None:
    doc = json.loads(sections.as_json(summarise(LOG), 10))
    assert doc["outcome"]["rows"] == [{"outcome": "accept", "count": 2},
                                      {"outcome": "reject", "count": 2},
                                      {"outcome": "tempfail", "count": 1}]
    assert doc["hour"]["rows"][1] == {"hour": "2026-11-30T10", "total": 3, "accept": 1,
                                      "reject": 2, "tempfail": 0}
    assert {"helo": HOSTILE_HELO, "count": 1} in doc["helo"]["rows"]
    assert "unmatched" not in doc  # no rules given


def test_html_escapes_what_the_log_carries(fixture_policy: Policy) -> None:
    page = html.page(summarise(LOG, fixture_policy), 10)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&quot;&gt;&lt;svg/onload=alert(1)&gt;@filtered.example" in page
    assert not re.search(r"<script|<svg/|onload=alert\(1\)>|<link|@import|url\(|src=|href=",
                         page, re.IGNORECASE)
    assert "default-src 'none'" in page  # nor could anything that slipped through run
    assert page.count('<svg class="chart"') == 3


def test_html_charts_have_a_bar_per_hour_entry_and_check() -> None:
    page = html.page(summarise(LOG), 10)
    bars = {name: len(re.findall(r'<g class="bar"', svg)) for name, svg in re.findall(
        r'data-chart="(\w+)"(.*?)</svg>', page, re.DOTALL)}
    assert bars == {"hours": 3, "entries": 5, "checks": 4}


def test_the_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    page = tmp_path / "report.html"
    assert main(["report", "--rules", str(FIXTURE_RULES), "--html", str(page), str(LOG)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# policy-milter report\n") and "outcome  accept" in out
    assert page.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert main(["report", "--json", "--since", "2026-11-30T10:00", str(LOG)]) == 0
    assert json.loads(capsys.readouterr().out)["outcome"]["rows"][0]["count"] == 1


def test_the_command_reads_stdin(monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(LOG.read_bytes())))
    assert main(["report"]) == 0
    assert ["outcome", "accept", "2"] in [line.split() for line in
                                          capsys.readouterr().out.splitlines()]


def test_the_command_fails_clearly(tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path / "missing.log")]) == 2
    assert "missing.log" in capsys.readouterr().err
    assert main(["report", "--rules", str(tmp_path), str(LOG)]) == 1
    assert "policy.conf: no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["report", "--since", "last tuesday", str(LOG)])
    assert exit_.value.code == 2
    assert "'last tuesday' is not" in capsys.readouterr().err


def test_the_readme_example_is_a_real_run(monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    example = re.search(r"```\n\$ policy-milter report (.*?[^\\])\n"
                        r"(# policy-milter report\n.*?)```", readme, re.DOTALL)
    assert example is not None
    monkeypatch.chdir(REPO)
    assert main(["report", *example.group(1).replace("\\\n", " ").split()]) == 0
    assert capsys.readouterr().out == example.group(2)
