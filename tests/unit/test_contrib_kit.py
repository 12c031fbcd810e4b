"""contrib/systemd as an admin installs it: the unit and its drop-ins are what systemd reads
without a word, and they run the milter on the sockets contrib/postfix and contrib/sendmail
name (the Postfix side: tests/unit/test_postconf.py; the kit through a real Postfix and
Sendmail: tests/e2e)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path, PurePath

import pytest

from tests.conftest import REPO

SYSTEMD = REPO / "contrib" / "systemd"
UNIT = SYSTEMD / "policy-milter.service"
DROP_INS = ("venv.conf", "sendmail.conf")
MC = REPO / "contrib" / "sendmail" / "policy-milter.mc"
PROGRAMS = ("/usr/bin/policy-milter", "/opt/policy-milter/bin/policy-milter")


def directives(*paths: Path) -> dict[str, list[str]]:
    """Each setting's values once systemd has read ``paths`` in order (the unit, then its
    drop-ins): continuation lines joined, an empty assignment resetting the setting."""
    found: dict[str, list[str]] = {}
    for path in paths:
        text = re.sub(r"\\\n\s*", "", path.read_text())
        for line in text.splitlines():
            if "=" not in line or line.startswith(("#", ";", "[")):
                continue
            name, value = (part.strip() for part in line.split("=", 1))
            if value:
                found.setdefault(name, []).append(value)
            else:
                found.pop(name, None)
    return found


def socket_of(settings: dict[str, list[str]]) -> str:
    [command] = settings["ExecStart"]
    return command.split("--socket ", 1)[1].split()[0]


def analyze(unit: Path, drop_in: str | None, root: Path) -> str:
    """What `systemd-analyze verify` says about the unit (and one drop-in), their text as it
    is but for the program's path: the venv's policy-milter, which exists here."""
    analyzer = shutil.which("systemd-analyze")
    if analyzer is None:
        raise FileNotFoundError("systemd-analyze not installed (Debian package systemd)")
    program = Path(sys.executable).parent / "policy-milter"
    assert program.is_file(), f"{program} missing: scripts/setup installs it"
    sources = [unit, *([SYSTEMD / drop_in] if drop_in else [])]
    targets = [root / unit.name, *([root / f"{unit.name}.d" / drop_in] if drop_in else [])]
    for source, target in zip(sources, targets):
        target.parent.mkdir(exist_ok=True)
        text = source.read_text()
        for path in PROGRAMS:
            text = text.replace(path, str(program))
        target.write_text(text)
    result = subprocess.run([analyzer, "verify", str(targets[0])], cwd=root,
                            capture_output=True, text=True, timeout=60)
    return result.stdout + result.stderr + (f"exit {result.returncode}" if result.returncode
                                            else "")


@pytest.mark.parametrize("drop_in", [None, *DROP_INS])
def test_systemd_reads_the_unit_without_a_word(tmp_path: Path, drop_in: str | None) -> None:
    """systemd-analyze verify exits 0 on unknown keys and bad values too: only its silence
    says the unit is right."""
    assert analyze(UNIT, drop_in, tmp_path) == ""


def test_a_misspelt_setting_is_heard(tmp_path: Path) -> None:
    unit = tmp_path / "src" / UNIT.name
    unit.parent.mkdir()
    unit.write_text(UNIT.read_text().replace("ProtectHome=", "ProtectHomes="))
    assert "Unknown key 'ProtectHomes'" in analyze(unit, None, tmp_path)


def test_the_socket_is_in_a_directory_the_unit_makes_writable() -> None:
    """ProtectSystem=strict: the socket's directory is made before the start, as root, for
    the milter's user and Postfix's group, and is the one path left writable."""
    unit = directives(UNIT)
    socket = PurePath(socket_of(unit).removeprefix("unix:"))
    assert unit["ProtectSystem"] == ["strict"]
    assert unit["ReadWritePaths"] == [str(socket.parent)]
    assert unit["ExecStartPre"] == [f"+/usr/bin/install -d -o {unit['User'][0]} "
                                    f"-g {unit['Group'][0]} -m 0750 {socket.parent}"]
    assert (unit["User"], unit["Group"]) == (["policy-milter"], ["postfix"])
    assert "--socket-mode 660" in unit["ExecStart"][0]
    assert "RuntimeDirectory" not in unit


def test_the_venv_drop_in_runs_the_same_command_from_the_venv() -> None:
    unit, venv = directives(UNIT), directives(UNIT, SYSTEMD / "venv.conf")
    assert venv["ExecStart"] == [c.replace(*PROGRAMS) for c in unit["ExecStart"]]
    assert {k: v for k, v in venv.items() if k != "ExecStart"} == {
        k: v for k, v in unit.items() if k != "ExecStart"}


def test_the_sendmail_drop_in_listens_where_the_mc_looks() -> None:
    """On a Sendmail host: the socket contrib/sendmail names, in a runtime directory of the
    milter's user and group, and nothing of Postfix's (its group, its queue directory)."""
    unit, sendmail = directives(UNIT), directives(UNIT, SYSTEMD / "sendmail.conf")
    socket = socket_of(sendmail)
    assert re.findall(r"S=([^,]+),", MC.read_text()) == [socket]
    assert PurePath(socket.removeprefix("unix:")).parent == PurePath(
        "/run", *sendmail["RuntimeDirectory"])
    assert sendmail["ExecStart"] == [c.replace(socket_of(unit), socket)
                                     for c in unit["ExecStart"]]
    assert not {"Group", "ExecStartPre", "ReadWritePaths"} & set(sendmail)
