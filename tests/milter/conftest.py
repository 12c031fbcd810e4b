"""A real policy-milter process on a unix socket, for tests over the milter protocol."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from policy_milter.mtaclient import MilterClient
from tests.conftest import FIXTURE_RULES, REPO


@dataclass
class MilterProcess:
    proc: subprocess.Popen[bytes]
    socket: str
    log: Path
    rules: Path

    def client(self) -> MilterClient:
        c = MilterClient(self.socket, timeout=10)
        c.open()
        return c

    def log_lines(self) -> list[str]:
        return self.log.read_text(encoding="utf-8").splitlines()

    def wait_for_log(self, text: str, timeout: float = 10, event: str = "") -> str:
        """The last line with ``text`` (and ``event=EVENT``, if given) once there is one."""
        deadline = time.monotonic() + timeout
        kind = f" event={event} " if event else ""
        while time.monotonic() < deadline:
            found = [line for line in self.log_lines() if text in line and kind in line]
            if found:
                return found[-1]
            time.sleep(0.05)
        raise AssertionError(f"no log line with {text!r}:\n" + "\n".join(self.log_lines()))

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)


def start_milter(rules: Path, workdir: Path, *extra: str) -> MilterProcess:
    """Start `policy-milter run` with the venv's interpreter and wait for its socket."""
    path = workdir / "milter.sock"
    log = workdir / "milter.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "policy_milter.cli", "run", "--rules", str(rules),
         "--socket", f"unix:{path}", "--log", f"file:{log}", *extra],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"milter exited {proc.returncode}: {err.decode()}")
        if path.exists():
            try:
                with socket.socket(socket.AF_UNIX) as probe:
                    probe.connect(str(path))
                return MilterProcess(proc, f"unix:{path}", log, rules)
            except OSError:
                pass
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("milter socket never appeared")


@pytest.fixture(scope="module")
def milter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MilterProcess]:
    """One milter on the fixture rules for a whole test module."""
    workdir = tmp_path_factory.mktemp("milter")
    process = start_milter(FIXTURE_RULES, workdir)
    yield process
    assert process.stop() == 0


@pytest.fixture
def fresh_milter(tmp_path: Path) -> Iterator[Callable[..., MilterProcess]]:
    """Start milters on rules of the test's own; all are stopped at the end."""
    started: list[MilterProcess] = []

    def start(rules: Path, *extra: str) -> MilterProcess:
        workdir = tmp_path / f"m{len(started)}"
        workdir.mkdir()
        started.append(start_milter(rules, workdir, *extra))
        return started[-1]

    yield start
    for process in started:
        process.stop()
