"""policy-milter report on the log of a real milter behind a real Postfix: the counts are
those of the sessions sent, no more and no fewer.

The pair is the test's own, so its log holds only these sessions.  Each refused session
comes from an address of its own (XCLIENT), so the refused clients can be counted too.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from policy_milter.rules.policy import Policy
from tests.conftest import FIXTURE_RULES
from tests.e2e.conftest import Pair
from tests.support.cli import cli
from tests.e2e.test_postfix_envelope import (
    command,
    expect,
    marker,
    message,
    remote,
    send,
)

HOSTILE_HELO = "<script>alert(1)</script>"


def test_report_counts_what_postfix_sent(fresh_pair: Callable[..., Pair], tmp_path: Path,
                                         fixture_policy: Policy) -> None:
    pair = fresh_pair()
    postfix = pair.postfix
    with remote(postfix) as s:  # accepted
        assert send(s, "a@sender.example", ("postmaster@example.com",), message(marker()))[0] \
            == 250
    with remote(postfix, addr="192.0.2.21") as s:  # two recipients refused, two accepted
        assert command(s, "MAIL FROM:<a@sender.example>")[0] == 250
        expect(command(s, "RCPT TO:<nobody@example.com>"), "unknown_user_local")
        expect(command(s, "RCPT TO:<former@example.com>"), "permission_denied")
        assert command(s, "RCPT TO:<postmaster@example.com>")[0] == 250
        assert command(s, "RCPT TO:<abuse@example.com>")[0] == 250
        assert s.data(message(marker()))[0] == 250
    with remote(postfix, addr="192.0.2.22") as s:
        expect(command(s, "MAIL FROM:<x@blocked.example>"), "access_denied")
    with remote(postfix) as s:  # a rule in monitor mode: logged, and the mail goes through
        assert send(s, "t@trial.example", ("postmaster@example.com",),
                    message(marker(), sender="t@trial.example"))[0] == 250
    with remote(postfix, addr="192.0.2.23") as s:
        expect(command(s, "MAIL FROM:<x@tempfail.example>"), "state_tempfail")
    with remote(postfix, addr="192.0.2.24", greeting=HOSTILE_HELO) as s:
        expect(command(s, "MAIL FROM:<a@sender.example>"), "helo_requires_domain")
    assert pair.milter.stop() == 0  # every session closed and logged

    page = tmp_path / "report.html"
    result = cli("report", "--json", "--html", str(page), "--rules", "tests/fixtures/rules",
                 str(pair.milter.log))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)

    def table(key: str, *columns: str) -> dict[tuple[str, ...] | str, int]:
        found = {}
        for row in report[key]["rows"]:
            names = tuple(row[c] for c in columns)
            found[names if len(names) > 1 else names[0]] = row["count"]
        return found

    access = f"{FIXTURE_RULES}/access"
    assert table("outcome", "outcome") == {"accept": 3, "reject": 2, "tempfail": 1}
    assert table("action", "action") == {"accept": 3, "reject": 4, "tempfail": 1}
    assert table("entry", "entry") == {
        "unknown_user_local": 1, "permission_denied": 1, "access_denied": 1,
        "state_tempfail": 1, "helo_requires_domain": 1}
    assert table("monitor", "rule", "would") == {(f"{access}:8", "reject"): 1}
    assert table("rule", "rule", "action") == {
        (f"{FIXTURE_RULES}/domains:1", "reject"): 1, (f"{access}:13", "reject"): 1,
        (f"{access}:3", "reject"): 1, (f"{access}:12", "tempfail"): 1,
        (f"{FIXTURE_RULES}/policy.conf:7", "reject"): 1}
    rules = "tests/fixtures/rules"  # as given; the milter had the absolute path
    assert [row["rule"] for row in report["unmatched"]["rows"]] == [
        f"{rules}/access:{n}" for n in (1, 2, 4, 5, 6, 7, 9, 10, 11, 14, 15)] + [
        f"{rules}/filters:{n}" for n in (1, 2)]
    assert table("client", "client") == {"192.0.2.21": 2, "192.0.2.22": 1, "192.0.2.23": 1,
                                         "192.0.2.24": 1}
    assert table("helo", "helo") == {"mx.sender.example": 4, HOSTILE_HELO: 1}
    assert table("sender", "sender") == {"a@sender.example": 2, "x@blocked.example": 1,
                                         "x@tempfail.example": 1}
    assert table("recipient", "recipient") == {"nobody@example.com": 1,
                                               "former@example.com": 1}
    assert report["failure"]["rows"] == []
    assert sum(row["total"] for row in report["hour"]["rows"]) == 6
    assert report["hashes"] == f"{fixture_policy.digest} (9 decisions)" and "note" not in report
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.read_text(encoding="utf-8")
