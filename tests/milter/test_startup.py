"""Starting `policy-milter run`: every way it can fail is one line on stderr naming the
address or path and the reason, with the documented exit code and no traceback; the start
is logged, and systemd told READY, only once the socket is bound; services the rules name
that do not answer are warned about by name."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from policy_milter.exitcodes import EXIT_RUNTIME, EXIT_USAGE
from policy_milter.log import SYSLOG
from tests.conftest import FIXTURE_RULES, REPO, copy_rules
from tests.milter.conftest import start_milter
from tests.support.cli import cli
from tests.support.daemon import free_port
from tests.support.dnsservers import Dnsmasq, Rbldnsd
from tests.support.session import mail_from

NOBODY = 65534


def one_line_error(result: subprocess.CompletedProcess[str], code: int, *names: str) -> str:
    """The one line the command printed, checked: exit ``code``, nothing on stdout, no
    traceback, and each of ``names`` in it."""
    assert result.returncode == code, result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    for name in names:
        assert name in lines[0]
    return lines[0]


@pytest.mark.parametrize("spec, reason", [
    ("inet:99999@127.0.0.1", "port 99999 is outside 1-65535"),
    ("inet:0", "port 0 is outside 1-65535"),
    ("inet6:65536", "port 65536 is outside 1-65535"),
    ("inet:-1@127.0.0.1", "is not a port number"),
    ("inet:smtp@127.0.0.1", "is not a port number"),
    ("inet:8894@", "is not an IP address or host name"),
    ("inet:8894@bad host", "is not an IP address or host name"),
    ("inet:8894@::1", "write inet6:PORT@[::1]"),
    ("inet6:8894@127.0.0.1", "write inet:PORT@127.0.0.1"),
    ("unix:milter.sock", "needs an absolute file path"),
    ("unix:/run/policy-milter/", "needs an absolute file path"),
    ("unix:/" + "d" * 120, "longer than a unix socket allows"),
    ("tcp:127.0.0.1:8894", "is not unix:/PATH, inet:PORT[@HOST] or inet6:PORT[@HOST]"),
    ("8894", "is not unix:/PATH"),
])
def test_a_bad_socket_is_a_usage_error(spec: str, reason: str) -> None:
    line = one_line_error(cli("run", "--rules", str(FIXTURE_RULES), "--socket", spec),
                          EXIT_USAGE, f"'{spec}'", reason)
    assert line.startswith("policy-milter run: error: argument --socket:")


def test_check_and_ping_take_the_same_socket_forms() -> None:
    for command in ("check", "ping"):
        one_line_error(cli(command, "--socket", "inet:70000@127.0.0.1"), EXIT_USAGE,
                       "port 70000 is outside 1-65535")


@pytest.mark.parametrize("target, reason", [
    ("syslog:bogus", "unknown syslog facility 'bogus'"),
    ("syslog:", "unknown syslog facility ''"),
    ("file:", "is not stderr, syslog[:FACILITY] or file:PATH"),
    ("journal", "is not stderr, syslog[:FACILITY] or file:PATH"),
])
def test_a_bad_log_destination_is_a_usage_error(target: str, reason: str) -> None:
    one_line_error(cli("run", "--rules", str(FIXTURE_RULES), "--log", target), EXIT_USAGE,
                   f"'{target}'", reason)


@pytest.fixture
def no_syslog() -> Iterator[Path]:
    """/dev/log as this machine kind has it: absent (no syslog daemon runs here)."""
    path = Path(SYSLOG)
    if path.exists():
        pytest.skip(f"a syslog daemon owns {path} on this machine")
    yield path
    path.unlink(missing_ok=True)


def test_syslog_gets_the_lines_at_its_facility(tmp_path: Path, no_syslog: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as syslog:
        syslog.bind(str(no_syslog))
        syslog.settimeout(20)
        port = free_port()
        proc = run_milter("--rules", str(FIXTURE_RULES), "--log", "syslog:local3",
                          "--socket", f"inet:{port}")
        try:
            line = syslog.recv(65536).decode()
            local3_info = 19 * 8 + 6  # RFC 5424 PRI: facility local3, severity info
            assert line.startswith(f"<{local3_info}>policy-milter: level=info event=start ")
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0


def test_syslog_that_is_not_there(no_syslog: Path) -> None:
    """Without this check every log line would print a traceback to stderr."""
    one_line_error(cli("run", "--rules", str(FIXTURE_RULES), "--log", "syslog"), EXIT_RUNTIME,
                   f"cannot log to syslog at {no_syslog}: No such file or directory")


def test_a_log_file_in_a_missing_directory(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "milter.log"
    one_line_error(cli("run", "--rules", str(FIXTURE_RULES), "--log", f"file:{path}"),
                   EXIT_RUNTIME, f"cannot write the log file {path}: No such file or directory")


def run_milter(*args: str, env: dict[str, str] | None = None,
               user: int | None = None) -> subprocess.Popen[str]:
    """`policy-milter run ARGS` in the background (as ``user``, dropping root)."""
    command = [sys.executable, "-m", "policy_milter.cli", "run", *args]
    if user is not None:
        command = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups",
                   *command]
    return subprocess.Popen(command, cwd=REPO, text=True, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def finished(proc: subprocess.Popen[str]) -> subprocess.CompletedProcess[str]:
    out, err = proc.communicate(timeout=30)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory of root's that an unprivileged user may enter (pytest's own tmp_path
    is under a 0700 directory), holding the fixture rules where that user can read them."""
    path = Path(tempfile.mkdtemp(prefix="policy-milter-"))
    path.chmod(0o755)
    rules = copy_rules(path / "rules")
    for item in rules.rglob("*"):
        item.chmod(0o755 if item.is_dir() else 0o644)
    yield path
    shutil.rmtree(path)


def test_an_unwritable_log_file(open_dir: Path) -> None:
    rules, tmp_path = open_dir / "rules", open_dir
    logs = tmp_path / "logs"
    logs.mkdir(mode=0o755)  # root's: the milter's user may not write in it
    result = finished(run_milter("--rules", str(rules), "--log", f"file:{logs}/milter.log",
                                 "--socket", f"unix:{tmp_path}/s/milter.sock", user=NOBODY))
    one_line_error(result, EXIT_RUNTIME,
                   f"cannot write the log file {logs}/milter.log: Permission denied")


def test_an_unwritable_socket_directory(open_dir: Path) -> None:
    rules, tmp_path = open_dir / "rules", open_dir
    run = tmp_path / "run"
    run.mkdir(mode=0o755)
    log = tmp_path / "milter.log"
    log.touch()
    log.chmod(0o666)
    for socket_dir, reason in [
        (run, f"cannot listen on unix:{run}/milter.sock: Permission denied"),
        (run / "policy-milter",
         f"cannot make the socket directory {run}/policy-milter: Permission denied"),
    ]:
        result = finished(run_milter("--rules", str(rules), "--log", f"file:{log}", "--socket",
                                     f"unix:{socket_dir}/milter.sock", user=NOBODY))
        one_line_error(result, EXIT_RUNTIME, reason)
        assert "event=start" not in log.read_text()
        assert f'event=error error="{reason}"' in log.read_text()


def test_a_port_in_use(tmp_path: Path) -> None:
    log = tmp_path / "milter.log"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cli("run", "--rules", str(FIXTURE_RULES), "--socket", f"inet:{port}",
                     "--log", f"file:{log}")
    one_line_error(result, EXIT_RUNTIME, f"cannot listen on inet:{port}@127.0.0.1: the "
                                         "address is in use by another process")
    assert "event=start" not in log.read_text()


def test_an_address_this_host_does_not_have() -> None:
    one_line_error(cli("run", "--rules", str(FIXTURE_RULES), "--socket",
                       "inet:8894@192.0.2.1"),
                   EXIT_RUNTIME, "cannot listen on inet:8894@192.0.2.1: no interface of this "
                                 "host has that address")


def test_a_unix_socket_another_server_holds_is_left_to_it(tmp_path: Path) -> None:
    """libmilter would remove the path and take it over; the milter refuses instead."""
    path = tmp_path / "milter.sock"
    with socket.socket(socket.AF_UNIX) as other:
        other.bind(str(path))
        other.listen()
        result = cli("run", "--rules", str(FIXTURE_RULES), "--socket", f"unix:{path}")
        one_line_error(result, EXIT_RUNTIME,
                       f"cannot listen on unix:{path}: another process is serving it")
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(path))  # still the other server's


def test_a_stale_unix_socket_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "milter.sock"
    with socket.socket(socket.AF_UNIX) as gone:
        gone.bind(str(path))  # bound, never listening: what a killed process leaves
    process = start_milter(FIXTURE_RULES, tmp_path)
    try:
        with process.client() as client:
            assert mail_from(client).passed
    finally:
        assert process.stop() == 0


def test_a_path_that_is_not_a_socket(tmp_path: Path) -> None:
    path = tmp_path / "milter.sock"
    path.write_text("the admin's file\n")
    one_line_error(cli("run", "--rules", str(FIXTURE_RULES), "--socket", f"unix:{path}"),
                   EXIT_RUNTIME, f"cannot listen on unix:{path}: {path} exists and is not a "
                                 "socket")
    assert path.read_text() == "the admin's file\n"


@contextmanager
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    """What systemd listens on for a Type=notify service."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(tmp_path / "notify"))
        sock.settimeout(20)
        yield sock


def states(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def test_systemd_is_told_ready_only_once_the_socket_is_bound(tmp_path: Path) -> None:
    path = tmp_path / "run" / "milter.sock"
    log = tmp_path / "milter.log"
    with notify_socket(tmp_path) as sock:
        proc = run_milter("--rules", str(FIXTURE_RULES), "--socket", f"unix:{path}",
                          "--log", f"file:{log}",
                          env={**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify")})
        try:
            ready = states(sock)
            assert ready[0] == "READY=1" and ready[1] == f"STATUS=serving unix:{path}"
            with socket.socket(socket.AF_UNIX) as client:
                client.connect(str(path))  # bound and listening when READY came
            assert "event=start " in log.read_text()
            proc.send_signal(signal.SIGHUP)
            assert states(sock) == ["RELOADING=1"]
            assert states(sock)[0] == "READY=1"
            proc.send_signal(signal.SIGTERM)
            assert states(sock) == ["STOPPING=1"]
            assert proc.wait(timeout=30) == 0
        finally:
            proc.kill()
            proc.communicate()


def test_the_start_is_logged_after_the_bind(tmp_path: Path) -> None:
    """The moment event=start is in the log, the socket takes connections."""
    port = free_port()
    log = tmp_path / "milter.log"
    proc = run_milter("--rules", str(FIXTURE_RULES), "--socket", f"inet:{port}",
                      "--log", f"file:{log}")
    try:
        deadline = time.monotonic() + 20
        while "event=start " not in (log.read_text() if log.exists() else ""):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.01)
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def test_unreachable_services_are_warned_about_by_name(tmp_path: Path) -> None:
    clamd, spamd, dns_port, smtp = (free_port() for _ in range(4))  # nothing listens
    store = tmp_path / "held"
    rules = copy_rules(tmp_path / "rules", clamd=f"tcp:127.0.0.1:{clamd}",
                       spamd=f"tcp:127.0.0.1:{spamd}", dns_nameservers="127.0.0.1",
                       dns_port=str(dns_port), dns_timeout="0.5", rdns="required",
                       challenge_store=str(store), challenge_address="c@example.com",
                       challenge_smtp=f"127.0.0.1:{smtp}")
    workdir = tmp_path / "m"
    workdir.mkdir()
    process = start_milter(rules, workdir)
    try:
        expected = {"clamd": f"tcp:127.0.0.1:{clamd}", "spamd": f"tcp:127.0.0.1:{spamd}",
                    "dns": f"127.0.0.1:{dns_port}", "smtp": f"127.0.0.1:{smtp}"}
        for service, address in expected.items():
            line = process.wait_for_log(f"service={service} ", event="unreachable")
            assert f"address={address} " in line and "level=warning" in line
        with process.client() as client:  # still answering: the failure action applies
            assert mail_from(client).code.startswith("4")
    finally:
        assert process.stop() == 0


def test_reachable_dns_servers_raise_no_warning(tmp_path: Path) -> None:
    """rbldnsd serving the lists alone, and dnsmasq with no list zones (the probe asks
    for the root): both answer the probe."""
    zones = {"bl.test": ("ip4set", ":127.0.0.2:Listed $\n192.0.2.77\n")}
    with Rbldnsd(tmp_path / "rbl", zones) as rbl, Dnsmasq(tmp_path / "dnsmasq") as resolver:
        for port, lists in ((rbl.port, "bl.test client\n"), (resolver.port, "")):
            rules = copy_rules(tmp_path / f"rules{port}", dns_nameservers="127.0.0.1",
                               dns_port=str(port), rdns="required", dnsbl="dnsbl")
            (rules / "dnsbl").write_text(lists)
            workdir = tmp_path / f"m{port}"
            workdir.mkdir()
            process = start_milter(rules, workdir)
            try:
                with process.client() as client:
                    mail_from(client, addr="192.0.2.77")
                process.wait_for_log("client=192.0.2.77", event="envelope")
                time.sleep(0.5)  # the probe was answered long before: a warning would show
                assert not [line for line in process.log_lines() if "unreachable" in line]
            finally:
                assert process.stop() == 0
