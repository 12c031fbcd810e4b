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
import signal
import socket
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from policy_milter import __version__
from tests.conftest import REPO
from tests.support.daemon import free_port

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
