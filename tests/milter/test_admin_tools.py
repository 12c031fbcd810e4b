"""The admin's commands as an admin runs them: ``policy-milter test`` offline and against
a running milter (``--connect``), ``ping``, and ``explain`` and ``replay`` on the log that
milter wrote.  Every command runs as a process, exactly as the README shows it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from policy_milter import catalogue, logread
from policy_milter.engine import Engine
from policy_milter.log import quote
from policy_milter.mtaclient import ACTION_NAMES, STEP_NAMES
from policy_milter.offline.play import OUTCOMES
from policy_milter.rules.policy import load
from policy_milter.stages import Stage
from tests.conftest import FIXTURE_RULES, REPO
from tests.milter.conftest import MilterProcess
from tests.support.cli import cli

CLIENT = ["--client", "192.0.2.10", "--client-name", "mx.sender.example",
          "--helo", "mx.sender.example"]
MESSAGE = b"From: a@sender.example\r\nTo: postmaster@example.com\r\nSubject: hi\r\n\r\nHello.\r\n"


def session_args(sender: str, *rcpts: str) -> list[str]:
    return [*CLIENT, "--sender", sender, *(a for r in rcpts for a in ("--rcpt", r))]


@pytest.fixture(scope="module")
def message(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("message") / "hello.eml"
    path.write_bytes(MESSAGE)
    return str(path)


SESSIONS = [
    (["a@sender.example", "postmaster@example.com"], "accepted"),
    (["a@sender.example", "nobody@example.com", "former@example.com"], "rejected"),
    (["a@blocked.example", "postmaster@example.com"], "rejected"),
    (["a@tempfail.example", "postmaster@example.com"], "tempfailed"),
    (["a@discard.example", "postmaster@example.com"], "discarded"),
    (["a@quarantine.example", "postmaster@example.com"], "held"),
    (["a@tagged.example", "postmaster@example.com", "trap@example.com"], "accepted"),
]


@pytest.mark.parametrize("addresses, outcome", SESSIONS)
def test_test_offline_and_over_the_wire_agree(milter: MilterProcess, message: str,
                                              addresses: list[str], outcome: str) -> None:
    args = [*session_args(*addresses), message, "--json"]
    offline = cli("test", "--rules", str(FIXTURE_RULES), *args)
    wire = cli("test", "--connect", milter.socket, *args)
    assert (offline.returncode, wire.returncode) == (OUTCOMES[outcome],) * 2, \
        offline.stderr + wire.stderr
    here, there = json.loads(offline.stdout), json.loads(wire.stdout)
    assert here["outcome"] == there["outcome"] == outcome
    # Over the wire an entry is known by its reply: an outcome (discard) has none.
    assert [(s["stage"], s["answer"], s["reply"], s["entry"]) for s in there["stages"]] == [
        (s["stage"], s["answer"], s["reply"], s["entry"] if s["reply"] else "")
        for s in here["stages"]]
    assert there["changes"] == here["changes"]


def test_test_prints_each_check_with_its_rule_and_reply() -> None:
    result = cli("test", "--rules", str(FIXTURE_RULES),
                 *session_args("a@sender.example", "nobody@example.com",
                               "postmaster@example.com"))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    at = lines.index(next(line for line in lines if line.startswith("rcpt     <nobody@")))
    assert lines[at].split()[2] == "reject"
    assert lines[at + 2].split()[:3] == ["recipients", "reject", f"{FIXTURE_RULES}/domains:1"]
    assert lines[at + 3].strip().endswith("[unknown_user_local]")
    assert "outcome: accepted (exit status 0)" in lines
    assert any(line.startswith("  event=envelope ") for line in lines)  # what it would log


@pytest.mark.parametrize("args, status, error", [
    (["--rules", str(FIXTURE_RULES), "--sender", "a@b.example", "--rcpt", "c@d.example"], 2,
     "--client"),
    (["--rules", "/nonexistent", *session_args("a@b.example", "c@d.example")], 1,
     "/nonexistent/policy.conf"),
    (["--rules", str(FIXTURE_RULES), "--dns", "sometimes",
      *session_args("a@b.example", "c@d.example")], 2, "off, live or stub=FILE"),
    (["--rules", str(FIXTURE_RULES), *session_args("a@b.example", "c@d.example"),
      "/nonexistent.eml"], 2, "cannot read /nonexistent.eml"),
    (["--connect", "unix:/nonexistent.sock", *session_args("a@b.example", "c@d.example")],
     3, "unix:/nonexistent.sock"),
])
def test_test_says_what_is_wrong(args: list[str], status: int, error: str) -> None:
    result = cli("test", *args)
    assert result.returncode == status and error in result.stderr, result.stderr


def test_ping(milter: MilterProcess) -> None:
    up = cli("ping", "--socket", milter.socket)
    assert up.returncode == 0 and up.stdout.startswith(f"{milter.socket}: negotiated in ")
    needs = Engine(load(FIXTURE_RULES)).plan.needs  # what the milter must have asked for
    steps = [name for name in STEP_NAMES.values() if Stage(name) in needs.callbacks]
    actions = [name for name in ACTION_NAMES if name in needs.actions | {"setsymlist"}]
    assert f"; steps: {' '.join(steps)}; actions: {' '.join(actions)}\n" in up.stdout
    assert "header" in steps and "quarantine" in actions  # the fixture rules need them
    down = cli("ping", "--socket", "unix:/nonexistent/milter.sock", "--timeout", "1")
    assert down.returncode == 3 and "no milter at unix:/nonexistent" in down.stderr


def played_through(milter: MilterProcess, message: str, sender: str, *rcpts: str) -> str:
    """The queue id of a session played against the milter (test --connect, no MTA)."""
    result = cli("test", "--connect", milter.socket, *session_args(sender, *rcpts), message)
    assert result.returncode in OUTCOMES.values(), result.stderr
    return "TEST"


def test_explain_a_line_of_the_running_milters_log(milter: MilterProcess,
                                                   message: str) -> None:
    played_through(milter, message, "a@blocked.example", "postmaster@example.com")
    line = milter.wait_for_log("sender=a@blocked.example", event="decision")
    result = cli("explain", "--rules", str(FIXTURE_RULES), line)
    assert result.returncode == 0, result.stderr
    source = (FIXTURE_RULES / "access").read_text().splitlines()[2]
    assert f"     3 | {source}" in result.stdout
    assert "catalogue  access_denied (row " in result.stdout
    assert "holds the rules that decided, unchanged" in result.stdout
    piped = cli("explain", "--rules", str(FIXTURE_RULES), "-", stdin=f"noise\n{line}\n")
    assert piped.stdout == result.stdout


def test_explain_reads_piped_syslog_with_bytes_that_are_not_utf8() -> None:
    """explain - reads standard input as report and replay do: a byte that is not UTF-8
    (another program's line, a carrier's host name) is kept, not a crash."""
    line = (f"ts=2026-11-30T10:00:00.000Z level=info event=decision stage=mail qid=Q1 "
            f"client=192.0.2.10 helo=mx.sender.example sender=a@blocked.example "
            f"rule={FIXTURE_RULES}/access:3 check=access action=reject "
            f"reply={quote(catalogue.get('access_denied').reply_line())} monitor=no "
            f"rules_hash={load(FIXTURE_RULES).digest} entry=access_denied session=1.1")
    piped = (b"Nov 30 10:00:00 mx postfix/smtpd[1]: connect from caf\xe9.example\n"
             b"Nov 30 10:00:00 m\xe9x policy-milter[812]: " + line.encode() + b"\n")
    result = subprocess.run(
        [sys.executable, "-m", "policy_milter.cli", "explain", "--rules", str(FIXTURE_RULES),
         "-"], cwd=REPO, input=piped, capture_output=True, timeout=60,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"})
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    assert b"catalogue  access_denied (row " in result.stdout
    given = cli("explain", "--rules", str(FIXTURE_RULES), line)  # the same line, as argument
    assert given.returncode == 0 and result.stdout.decode() == given.stdout


def test_explain_by_queue_id_replays_the_envelope_under_todays_rules(
        milter: MilterProcess, message: str, tmp_path: Path) -> None:
    played_through(milter, message, "a@sender.example", "nobody@example.com")
    milter.wait_for_log("rcpt=nobody@example.com", event="decision")
    rules = shutil.copytree(FIXTURE_RULES, tmp_path / "rules")
    with (rules / "access").open("a") as access:
        access.write("recipient nobody@example.com  tempfail\n")
    result = cli("explain", "--rules", str(rules), "--qid", "TEST", "--log", str(milter.log))
    assert result.returncode == 0, result.stderr
    assert "WARNING: the rules changed since" in result.stdout
    assert "now: under the rules in" in result.stdout
    absent = cli("explain", "--rules", str(rules), "--qid", "NOSUCH", "--log", str(milter.log))
    assert absent.returncode == 2 and "no decision line" in absent.stderr


def test_replay_the_running_milters_log(milter: MilterProcess, message: str,
                                        tmp_path: Path) -> None:
    played_through(milter, message, "a@sender.example", "postmaster@example.com",
                   "abuse@example.com")
    milter.wait_for_log("mail_from=<a@sender.example>", event="envelope")
    same = cli("replay", "--rules", str(FIXTURE_RULES), "--json", str(milter.log))
    assert same.returncode == 0, same.stderr
    report = json.loads(same.stdout)
    envelopes = [r for r in logread.records([str(milter.log)]) if r.event == "envelope"]
    assert report["transactions"] == len(envelopes) > 0
    assert all(not groups for groups in report["changes"].values()), report["changes"]
    rules = shutil.copytree(FIXTURE_RULES, tmp_path / "rules")
    with (rules / "access").open("a") as access:
        access.write("recipient abuse@example.com  reject\n")
    changed = json.loads(cli("replay", "--rules", str(rules), "--json",
                             str(milter.log)).stdout)
    [group] = changed["changes"]["newly refused"]
    assert group["rule"].endswith(f"access:{len((rules / 'access').read_text().splitlines())}")
    assert group["examples"][0]["rcpt"] == "<abuse@example.com>"
    text = cli("replay", "--rules", str(rules), str(milter.log)).stdout
    assert "newly refused: " in text and "not compared:" in text
