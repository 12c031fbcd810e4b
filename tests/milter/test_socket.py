"""Where `policy-milter run` listens, and who may connect: a unix socket gets
``--socket-mode`` by chmod and its missing directory 0750 (the MTA's group may enter),
the process umask is never changed, and ``inet:PORT`` without a host means loopback."""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from policy_milter.cli import _socket_spec
from tests.conftest import FIXTURE_RULES, REPO
from tests.milter.conftest import start_milter
from tests.support.cli import cli
from tests.support.session import mail_from


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def umask_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    return int(next(line for line in status if line.startswith("Umask:")).split()[1], 8)


@contextmanager
def umask(mask: int) -> Iterator[None]:
    """The test process's umask, which the milter it starts inherits."""
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def test_missing_socket_directory_is_made_0750_and_the_umask_kept(tmp_path: Path) -> None:
    run = tmp_path / "run" / "policy-milter"
    with umask(0o077):  # a umask that would leave the MTA's group out of the directory
        # The workdir start_milter puts the socket in is the missing directory; the log
        # goes elsewhere, since the milter makes the directory only once it has started.
        process = start_milter(FIXTURE_RULES, run, "--socket-mode", "640",
                               "--log", f"file:{tmp_path / 'milter.log'}")
    try:
        with process.client() as client:  # libmilter's loop runs: the socket is all set
            assert mail_from(client).passed
        assert mode(run) == 0o750
        assert stat.S_ISSOCK((run / "milter.sock").stat().st_mode)
        assert mode(run / "milter.sock") == 0o640
        assert umask_of(process.proc.pid) == 0o077
    finally:
        assert process.stop() == 0


def test_an_existing_socket_directory_keeps_its_modes(tmp_path: Path) -> None:
    """The admin's directory (contrib/: group postfix, setgid) is left as it is."""
    run = tmp_path / "run"
    run.mkdir()
    run.chmod(0o2710)
    process = start_milter(FIXTURE_RULES, run, "--log", f"file:{tmp_path / 'milter.log'}")
    try:
        with process.client() as client:
            assert mail_from(client).passed
        assert mode(run) == 0o2710
        assert mode(run / "milter.sock") == 0o660
        assert umask_of(process.proc.pid) == umask_of(os.getpid())
    finally:
        assert process.stop() == 0


def listening(port: int) -> set[str]:
    """The local addresses of the TCP sockets listening on ``port``, from /proc/net."""
    found = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hexport = local.partition(":")
            if state == "0A" and int(hexport, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(address)  # 32-bit words in host (little-endian) order
                found.add(str(ipaddress.ip_address(
                    b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4)))))
    return found


def free_port(family: socket.AddressFamily, host: str) -> int:
    with socket.socket(family) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize("kind, family, loopback", [
    ("inet", socket.AF_INET, "127.0.0.1"),
    ("inet6", socket.AF_INET6, "::1"),
])
def test_a_port_without_a_host_listens_on_loopback(
        tmp_path: Path, kind: str, family: socket.AddressFamily, loopback: str) -> None:
    port = free_port(family, loopback)
    log = tmp_path / "milter.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "policy_milter.cli", "run", "--rules", str(FIXTURE_RULES),
         "--socket", f"{kind}:{port}", "--log", f"file:{log}"], cwd=REPO)
    try:
        deadline = time.monotonic() + 20
        while not listening(port) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert listening(port) == {loopback}
        assert f"socket={kind}:{port}@{loopback if kind == 'inet' else '[::1]'} " in \
            log.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


@pytest.mark.parametrize("given, meant", [
    ("inet:8894", "inet:8894@127.0.0.1"),
    ("inet6:8894", "inet6:8894@[::1]"),
    ("inet:8894@0.0.0.0", "inet:8894@0.0.0.0"),  # every interface, when said so
    ("unix:/run/policy-milter/milter.sock", "unix:/run/policy-milter/milter.sock"),
])
def test_socket_specs(given: str, meant: str) -> None:
    assert _socket_spec(given) == meant


def test_help_says_a_bare_port_means_loopback() -> None:
    result = cli("run", "--help")
    assert "inet:PORT and inet6:PORT mean loopback" in " ".join(result.stdout.split())
