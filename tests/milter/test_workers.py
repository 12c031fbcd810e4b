"""``--workers N``: one parent binds, N forked workers serve the one socket; the parent
replaces a worker that dies, passes on reloads it has checked, and stops them all."""

from __future__ import annotations

import os
import re
import signal
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from policy_milter.exitcodes import EXIT_RUNTIME, EXIT_USAGE
from policy_milter.mtaclient import MilterProtocolError, Reply
from policy_milter.rules.policy import load
from tests.conftest import copy_rules
from tests.milter.conftest import MilterProcess, start_milter
from tests.milter.test_startup import one_line_error
from tests.milter.test_state_wire import send_as_dora
from tests.support.cli import cli
from tests.support.daemon import free_port
from tests.support.session import assert_reply, mail_from


def workers_of(process: MilterProcess) -> dict[int, int]:
    """The live workers, pid -> number, as their start lines and exits say."""
    live: dict[int, int] = {}
    for line in process.log_lines():
        pid = re.search(r" pid=(\d+)", line)
        number = re.search(r" worker=(\d+) ", line)
        if pid and number and " event=worker_start " in line:
            live[int(pid.group(1))] = int(number.group(1))
        elif pid and " event=worker_exit " in line:
            live.pop(int(pid.group(1)), None)
    return live


def wait_workers(process: MilterProcess, count: int, timeout: float = 15) -> dict[int, int]:
    deadline = time.monotonic() + timeout
    while len(live := workers_of(process)) != count:
        assert time.monotonic() < deadline, process.log_lines()
        time.sleep(0.05)
    return live


@pytest.fixture
def two(tmp_path: Path) -> MilterProcess:
    rules = copy_rules(tmp_path / "rules", state_file=str(tmp_path / "state.sqlite3"))
    process = start_milter(rules, tmp_path, "--workers", "2")
    wait_workers(process, 2)
    return process


def test_both_workers_serve_the_one_socket(two: MilterProcess) -> None:
    try:
        def session(n: int) -> None:
            with two.client() as client:
                assert_reply(mail_from(client, f"<x{n}@blocked.example>"), "access_denied")
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(session, range(200)))
        decided = [line for line in two.log_lines() if " event=decision " in line]
        assert len(decided) == 200
        pids = {re.search(r" session=([0-9a-f]+)\.", line).group(1)  # type: ignore[union-attr]
                for line in decided}
        assert {int(pid, 16) for pid in pids} == set(workers_of(two))
        tags = {re.search(r" worker=(\d) ", line).group(1)  # type: ignore[union-attr]
                for line in decided}
        assert tags == {"1", "2"}  # every line says which worker wrote it
    finally:
        assert two.stop() == 0


def test_dead_workers_are_replaced_and_an_open_session_is_cut_not_lost(
        two: MilterProcess) -> None:
    """Both workers killed, one of them holding a session: the MTA's connection ends (it
    tempfails the message, having accepted nothing), and the replacements serve."""
    try:
        client = two.client()
        assert client.connect("mx.sender.example", "192.0.2.10", 40000).passed
        victims = workers_of(two)
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        for pid, number in victims.items():
            line = two.wait_for_log(f"pid={pid} ", event="worker_exit")
            assert f"worker={number} " in line and "status=-9" in line
            assert "action=replaced" in line and "level=error" in line
        replaced = wait_workers(two, 2)
        assert not set(replaced) & set(victims) and sorted(replaced.values()) == [1, 2]
        with pytest.raises((MilterProtocolError, OSError)):
            client.helo("mx.sender.example")
        client.close()
        for _ in range(10):
            with two.client() as fresh:
                assert mail_from(fresh).passed
    finally:
        assert two.stop() == 0  # the deaths were logged; the stop itself was clean


def test_reloads_are_checked_by_the_parent_and_passed_to_every_worker(
        two: MilterProcess) -> None:
    access = two.rules / "access"
    original = access.read_text()
    try:
        access.write_text(original + "sender @later.example frobnicate\n")
        two.proc.send_signal(signal.SIGHUP)
        two.wait_for_log("status=failed", event="reload")
        time.sleep(0.3)
        assert not [line for line in two.log_lines() if " worker=" in line
                    and " event=reload " in line]  # no worker was asked
        access.write_text(original + "sender @later.example reject\n")
        two.proc.send_signal(signal.SIGHUP)
        digest = load(two.rules).digest
        for number in (1, 2):
            two.wait_for_log(f"level=info worker={number} event=reload status=ok")
        assert all(f"rules_hash={digest}" in line for line in two.log_lines()
                   if " worker=" in line and " event=reload " in line)
        for _ in range(6):
            with two.client() as client:
                assert_reply(mail_from(client, "<a@later.example>"), "access_denied")
    finally:
        access.write_text(original)
        assert two.stop() == 0


def test_no_worker_holds_up_a_stop(two: MilterProcess) -> None:
    socket_path = Path(two.socket.removeprefix("unix:"))
    started = time.monotonic()
    assert two.stop() == 0
    assert time.monotonic() - started < 5  # workers idle in libmilter's waits, even so
    assert not socket_path.exists()  # the parent removed it; no worker took it earlier
    exits = [line for line in two.log_lines() if " event=worker_exit " in line]
    assert len(exits) == 2 and all("status=0 action=none" in line for line in exits)


def test_a_stop_lets_open_sessions_finish(two: MilterProcess) -> None:
    client = two.client()
    assert client.connect("mx.sender.example", "192.0.2.10", 40000).passed
    two.proc.send_signal(signal.SIGTERM)
    two.wait_for_log("", event="stop")
    assert client.helo("mx.sender.example").passed  # its worker waits for it
    client.close()
    assert two.proc.wait(timeout=30) == 0


@pytest.mark.parametrize("value", ["0", "-1", "many", "257"])
def test_a_bad_worker_count(value: str) -> None:
    one_line_error(cli("run", "--workers", value), EXIT_USAGE,
                   f"'{value}' is not a number of workers (1-256) or auto")


def test_workers_in_policy_conf(tmp_path: Path) -> None:
    rules = copy_rules(tmp_path / "rules", workers="3",
                       state_file=str(tmp_path / "state.sqlite3"))
    process = start_milter(rules, tmp_path)
    try:
        wait_workers(process, 3)
    finally:
        assert process.stop() == 0
    assert "workers=3" in process.wait_for_log("", event="start")


def test_metrics_are_refused_with_workers(tmp_path: Path) -> None:
    rules = copy_rules(tmp_path / "rules", metrics=f"inet:{free_port()}",
                       state_file=str(tmp_path / "state.sqlite3"))
    one_line_error(cli("run", "--rules", str(rules), "--workers", "2"), EXIT_RUNTIME,
                   "metrics are served by one process; with 2 workers, leave metrics off")


def test_two_workers_enforce_one_account_limit(tmp_path: Path) -> None:
    """dora@quota.example may send 2 an hour: sessions one after another until each
    worker has served three (each counting alone would pass 2 of its own, 4 in all) pass
    exactly 2, with the embedded store's file.  Which worker takes a connection is the
    kernel's choice, so the test sends until both have.  (Sessions at the same moment can
    overshoot a limit by those in flight: it is read at RCPT and counted once a message is
    accepted.)"""
    rules = copy_rules(tmp_path / "rules", state_file=str(tmp_path / "state.sqlite3"))
    process = start_milter(rules, tmp_path, "--workers", "2")
    try:
        wait_workers(process, 2)
        replies: list[Reply] = []
        served: Counter[str] = Counter()
        while min(served["1"], served["2"]) < 3 and len(replies) < 100:
            replies.append(send_as_dora(process))
            served = Counter(re.search(r" worker=(\d) ", line).group(1)  # type: ignore[union-attr]
                             for line in process.log_lines() if " event=envelope " in line)
        assert min(served["1"], served["2"]) >= 3  # both workers took sessions
        assert sum(r.passed for r in replies) == 2
        for refused in (r for r in replies if not r.passed):
            assert_reply(refused, "account_limits")
    finally:
        assert process.stop() == 0


def test_workers_refuse_counters_only_one_process_sees(tmp_path: Path) -> None:
    rules = copy_rules(tmp_path / "rules")  # the fixture rules have account limits
    one_line_error(cli("run", "--rules", str(rules), "--workers", "2"), EXIT_RUNTIME,
                   "with 2 workers the counters must be shared: set state_file")
