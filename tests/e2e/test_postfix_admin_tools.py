"""replay and explain on the log a milter wrote behind a real Postfix.

A pair of its own (Postfix and milter on the fixture rules) takes a few sessions from
"remote" clients; the milter's log then holds Postfix's queue ids, macros and framing,
and the commands must read it as it is: the same rules change nothing, candidate rules
change exactly what they should, and a Postfix queue id leads explain to the rule.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

from policy_milter import logread
from tests.conftest import FIXTURE_RULES
from tests.e2e.conftest import Pair
from tests.e2e.test_postfix_envelope import command, end_of_data, expect, marker, message, remote
from tests.support.cli import cli

SENT = [  # sender, recipients and what each recipient gets through Postfix
    ("a@sender.example", [("postmaster@example.com", "ok"), ("abuse@example.com", "ok")]),
    ("b@sender.example", [("nobody@example.com", "unknown_user_local"),
                          ("alice@example.com", "ok")]),
    ("c@blocked.example", []),  # refused at MAIL
]


def send_traffic(pair: Pair) -> None:
    for sender, rcpts in SENT:
        with remote(pair.postfix, addr="192.0.2.10") as s:
            mail = command(s, f"MAIL FROM:<{sender}>")
            if not rcpts:
                expect(mail, "access_denied")
                continue
            assert mail[0] == 250, mail
            for rcpt, wanted in rcpts:
                got = command(s, f"RCPT TO:<{rcpt}>")
                assert got[0] == 250 if wanted == "ok" else expect(got, wanted) is None, got
            assert s.docmd("DATA")[0] == 354
            assert end_of_data(s, message(marker(), sender))[0] == 250
    pair.milter.wait_for_log("mail_from=<c@blocked.example>", event="envelope")


def test_replay_and_explain_read_the_log_postfix_made(
        fresh_pair: Callable[..., Pair], tmp_path: Path) -> None:
    pair = fresh_pair()
    send_traffic(pair)
    log = str(pair.milter.log)
    envelopes = [r for r in logread.records([log]) if r.event == "envelope"]
    assert len(envelopes) == len(SENT)
    assert all(r["qid"] and r["listener"] for r in envelopes[:2])  # Postfix's macros

    same = json.loads(cli("replay", "--rules", str(FIXTURE_RULES), "--json", log).stdout)
    assert (same["transactions"], same["answers"], same["unchanged"]) == (3, 5, 5)
    assert same["reached_eom"] == 2

    rules = shutil.copytree(FIXTURE_RULES, tmp_path / "rules")
    access = rules / "access"
    access.write_text(access.read_text().replace("sender @blocked.example", "sender @x.invalid")
                      + "recipient alice@example.com  reject\n")
    changed = json.loads(cli("replay", "--rules", str(rules), "--json", log).stdout)
    [refused] = changed["changes"]["newly refused"]
    assert (refused["count"], refused["rule"]) == (
        1, f"{rules}/access:{len(access.read_text().splitlines())}")
    assert refused["examples"][0]["qid"] == envelopes[1]["qid"]
    [accepted] = changed["changes"]["newly accepted"]
    assert accepted["rule"] == f"{FIXTURE_RULES}/access:3" and accepted["count"] == 1

    qid = envelopes[1]["qid"]
    told = cli("explain", "--rules", str(FIXTURE_RULES), "--qid", qid, "--log", log)
    assert told.returncode == 0, told.stderr
    assert "catalogue  unknown_user_local" in told.stdout
    assert f"     1 | {(FIXTURE_RULES / 'domains').read_text().splitlines()[0]}" in told.stdout
    assert f"now: under the rules in {FIXTURE_RULES}" in told.stdout
