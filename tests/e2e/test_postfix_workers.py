"""Worker processes through a real Postfix: both workers serve its sessions, and a worker
killed in the middle of one makes Postfix tempfail that message (nothing accepted is
lost) while the replacement serves the next."""

from __future__ import annotations

import os
import re
import signal
import smtplib
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.conftest import copy_rules
from tests.e2e.conftest import Pair, start_pair
from tests.milter.test_workers import wait_workers, workers_of

MESSAGE = "Subject: {marker}\r\n\r\nHello.\r\n"


@pytest.fixture(scope="module")
def workers_pair(e2e_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    work = tmp_path_factory.mktemp("workers")
    rules = copy_rules(work / "rules", state_file=str(work / "state.sqlite3"))
    with ExitStack() as stack:
        pair = start_pair(stack, e2e_root, "workers", rules, milter_args=("--workers", "2"))
        wait_workers(pair.milter, 2)
        yield pair


def send(pair: Pair, marker: str) -> None:
    with pair.postfix.smtp() as smtp:
        smtp.sendmail("a@sender.example", ["postmaster@example.com"],
                      MESSAGE.format(marker=marker))


def test_both_workers_serve_postfix(workers_pair: Pair) -> None:
    for n in range(12):
        send(workers_pair, f"spread-{n}")
    assert len([d for d in workers_pair.postfix.delivered() if "spread-" in
                str(d.message["Subject"])]) == 12
    served = {m.group(1) for line in workers_pair.milter.log_lines()
              if " event=envelope " in line and (m := re.search(r" worker=(\d) ", line))}
    assert served == {"1", "2"}


def test_a_worker_killed_mid_session_loses_nothing(workers_pair: Pair) -> None:
    milter, postfix = workers_pair.milter, workers_pair.postfix
    victims = workers_of(milter)
    with postfix.smtp() as smtp:
        smtp.ehlo()
        assert smtp.mail("a@sender.example")[0] == 250
        assert smtp.rcpt("postmaster@example.com")[0] == 250
        for pid in victims:  # whichever holds this session
            os.kill(pid, signal.SIGKILL)
        try:
            code = smtp.data(MESSAGE.format(marker="cut-off").encode())[0]
        except smtplib.SMTPDataError as err:  # at DATA or at its end
            code = err.smtp_code
    assert 400 <= code < 500  # Postfix's milter_default_action = tempfail
    wait_workers(milter, 2)
    send(workers_pair, "after-the-death")
    assert postfix.deliveries_of("after-the-death")
    assert not postfix.deliveries_of("cut-off")
    assert all(pid not in workers_of(milter) for pid in victims)
    time.sleep(0.2)
    exits = [line for line in milter.log_lines() if " event=worker_exit " in line]
    assert len(exits) >= 2 and all("action=replaced" in line for line in exits)

