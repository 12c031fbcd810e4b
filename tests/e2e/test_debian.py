"""The Debian package, built from the work tree (scripts/build-deb): lintian finds no error,
it holds what debian/ promises, and once installed with apt the admin's commands work from
/usr/bin, the milter answers as the policy-milter user, and a purge takes it all away.

The test installs and purges its own build, so it refuses to run where policy-milter is
already installed rather than purge someone's.
"""

from __future__ import annotations

import io
import os
import pwd
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from policy_milter import __version__, catalogue
from tests.conftest import REPO
from tests.support.daemon import free_port
from tests.support.postfix import PostfixInstance

PROGRAM = "/usr/bin/policy-milter"
APT = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, env=env)


def is_installed() -> bool:
    status = run("dpkg-query", "-W", "-f=${Status}", "policy-milter").stdout
    return status == "install ok installed"


def user_exists(name: str = "policy-milter") -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    result = run(str(REPO / "scripts" / "build-deb"), str(tmp_path_factory.mktemp("deb")))
    assert result.returncode == 0, result.stderr
    return Path(result.stdout.strip())


@pytest.fixture(scope="module")
def installed(deb: Path) -> Iterator[Path]:
    """The package installed with apt; purged afterwards, with the user if it made it."""
    assert not is_installed(), "policy-milter is installed here: purge it to run this test"
    had_user = user_exists()
    result = run("apt-get", "install", "-y", "-q", "--no-install-recommends", str(deb), env=APT)
    assert result.returncode == 0, result.stdout + result.stderr
    try:
        yield deb
    finally:
        purged = run("apt-get", "purge", "-y", "-q", "policy-milter", env=APT)
        if not had_user:
            run("deluser", "--system", "--quiet", "policy-milter")
    assert purged.returncode == 0, purged.stdout + purged.stderr
    assert not is_installed() and not Path("/etc/policy-milter").exists()


def test_lintian_finds_no_error(deb: Path) -> None:
    result = run("lintian", str(deb))
    assert result.returncode in (0, 1), result.stderr  # 1: it printed tags
    errors = [line for line in result.stdout.splitlines() if line.startswith("E:")]
    assert errors == [], result.stdout


def test_the_package_holds_the_program_the_unit_and_the_rules_as_conffiles(deb: Path) -> None:
    assert run("dpkg-deb", "-f", str(deb), "Version").stdout.strip() == __version__
    data = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True,
                          check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tree:
        def content(path: str) -> bytes:
            member = tree.extractfile(f"./{path}")
            assert member is not None, path
            return member.read()
        unit = content("lib/systemd/system/policy-milter.service")
        rules = {p.name: content(f"etc/policy-milter/{p.name}")
                 for p in (REPO / "rules").iterdir()}
        names = tree.getnames()
    assert unit == (REPO / "contrib" / "systemd" / "policy-milter.service").read_bytes()
    documentation = re.findall(r"(?m)^Documentation=file://(\S+)$", unit.decode())
    assert documentation and all(f".{path}" in names for path in documentation)
    assert rules == {p.name: p.read_bytes() for p in (REPO / "rules").iterdir()}
    assert "./usr/bin/policy-milter" in names and "./usr/lib/policy-milter/re2/__init__.py" in names
    conffiles = run("dpkg-deb", "--info", str(deb), "conffiles").stdout.split()
    assert sorted(conffiles) == sorted(f"/etc/policy-milter/{name}" for name in rules)


def test_installed_check_accepts_the_rules_in_etc(installed: Path) -> None:
    result = run(PROGRAM, "check", "--rules", "/etc/policy-milter")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("rules: /etc/policy-milter (")
    assert user_exists()


def test_installed_init_writes_rules_whose_patterns_are_re2(installed: Path,
                                                            tmp_path: Path) -> None:
    """The bundled google-re2 compiles content patterns: RE2 takes this one, and refuses a
    backreference, which Python's re would take."""
    rules = tmp_path / "rules"
    assert run(PROGRAM, "init", str(rules)).returncode == 0
    with open(rules / "access", "a", encoding="utf-8") as access:
        access.write("body /wire\\s+transfer/i   reject\n")
    accepted = run(PROGRAM, "check", "--rules", str(rules))
    assert accepted.returncode == 0 and "1 at end of message" in accepted.stdout, accepted.stderr
    with open(rules / "access", "a", encoding="utf-8") as access:
        access.write("body /(a)\\1/   reject\n")
    refused = run(PROGRAM, "check", "--rules", str(rules))
    assert refused.returncode == 1 and "patterns are RE2" in refused.stderr, refused.stderr


def test_installed_milter_answers_as_its_user(installed: Path, tmp_path: Path) -> None:
    address = f"inet:{free_port()}@127.0.0.1"
    log = tmp_path / "milter.log"
    with open(log, "wb") as out:
        milter = subprocess.Popen([PROGRAM, "run", "--rules", "/etc/policy-milter", "--socket",
                                   address], user="policy-milter", group="policy-milter",
                                  cwd="/", stdout=out, stderr=subprocess.STDOUT)
    try:
        port = int(address.split(":")[1].split("@")[0])
        deadline = time.monotonic() + 15
        while milter.poll() is None and time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        ping = run(PROGRAM, "ping", "--socket", address)
        assert ping.returncode == 0, ping.stderr + log.read_text()
        assert ping.stdout.startswith(f"{address}: negotiated in ")
    finally:
        milter.send_signal(signal.SIGTERM)
        status = milter.wait(timeout=40)
    assert status == 0, log.read_text()
    assert " event=stop " in log.read_text()


def unit_commands(unit: str, queue: Path) -> tuple[list[str], list[str], dict[str, str]]:
    """The installed unit's ExecStartPre and ExecStart command lines and its [Service]
    settings, with Postfix's queue directory moved to ``queue`` (a private instance's)."""
    text = unit.replace("\\\n", " ").replace("/var/spool/postfix", str(queue))
    service = {key: value for key, _, value in (
        line.partition("=") for line in text.splitlines() if "=" in line
        and not line.startswith("#"))}
    return (service["ExecStartPre"].removeprefix("+").split(), service["ExecStart"].split(),
            service)


@pytest.fixture
def syslog() -> Iterator[socket.socket]:
    """/dev/log, which the unit logs to (systemd's journal provides it; here nothing does)."""
    path = Path("/dev/log")
    assert not path.exists(), "a syslog daemon owns /dev/log here"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        path.chmod(0o666)
        sock.settimeout(10)
        try:
            yield sock
        finally:
            path.unlink()


def test_mail_flows_through_postfix_with_the_package_and_the_kit(
        installed: Path, syslog: socket.socket) -> None:
    """The README's path: the package's program and rules, its unit's command lines as
    systemd would run them (the socket directory made as root, then the milter as
    policy-milter, group postfix, logging to syslog), and contrib/postfix's chrooted
    smtpd: mail to a mailbox of the sample rules is delivered, an unknown one refused
    with the catalogue's reply."""
    workdir = Path(tempfile.mkdtemp(prefix="deb-", dir="/tmp"))  # short: socket paths
    workdir.chmod(0o711)
    postfix = PostfixInstance(workdir / "postfix", local_domains=["example.com"],
                              mailboxes=["postmaster@example.com", "abuse@example.com"])
    unit = Path("/lib/systemd/system/policy-milter.service").read_text()
    prepare, start, service = unit_commands(unit, postfix.queue)
    assert service["User"] == "policy-milter" and service["Group"] == "postfix"
    postfix.queue.mkdir(parents=True)
    assert run(*prepare).returncode == 0
    milter = subprocess.Popen(start, user=service["User"], group=service["Group"],
                              extra_groups=[], umask=int(service["UMask"], 8), cwd="/",
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        started = syslog.recv(65536).decode()
        assert "event=start" in started, started
        postfix.start()
        with postfix.smtp() as smtp:
            smtp.sendmail("a@sender.example", ["postmaster@example.com"],
                          b"Subject: through the package\r\n\r\nHello.\r\n")
            with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
                smtp.sendmail("a@sender.example", ["nobody@example.com"], b"\r\nHi.\r\n")
        entry = catalogue.get("unknown_user_local")
        code, text = refused.value.recipients["nobody@example.com"]
        assert (code, text.decode()) == (int(entry.code), f"{entry.enhanced} {entry.text}")
        [copy] = postfix.delivered()
        assert copy.recipient == "postmaster@example.com"
        assert copy.message["Subject"] == "through the package"
        logged = [syslog.recv(65536).decode() for _ in range(4)]
        assert any("event=decision" in line and "rcpt=nobody@example.com" in line
                   and "entry=unknown_user_local" in line for line in logged), logged
    finally:
        postfix.stop()
        milter.send_signal(signal.SIGTERM)
        status = milter.wait(timeout=40)
        shutil.rmtree(workdir)
    assert status == 0, milter.stdout.read() if milter.stdout else ""
