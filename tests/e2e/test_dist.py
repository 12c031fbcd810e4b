"""The sdist and the wheel, built from the work tree as a release would be (``python -m
build``, offline: the venv's setuptools), carry what an admin needs; the sdist installs into
a new venv, where ``init`` and ``check`` work."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from policy_milter import __version__
from tests.conftest import REPO

SHIPPED = sorted(p.name for p in (REPO / "rules").iterdir())


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out),
                    str(REPO)], check=True, capture_output=True, timeout=120)
    return out


def files_under(*tops: str) -> set[str]:
    """The repository's files under ``tops`` (following the rules/ link), as the sdist
    names them."""
    found = set()
    for top in tops:
        for root, dirs, names in os.walk(REPO / top, followlinks=True):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            found |= {(Path(root) / n).relative_to(REPO).as_posix() for n in names}
    return found


def test_the_sdist_carries_the_rules_contrib_docs_and_license(dist: Path) -> None:
    prefix = f"policy-milter-{__version__}/"
    with tarfile.open(dist / f"policy-milter-{__version__}.tar.gz") as sdist:
        names = {n.removeprefix(prefix) for n in sdist.getnames()}
    wanted = files_under("rules", "contrib", "docs") | {"LICENSE", "README.md", "setup.cfg"}
    assert len(wanted) > 40  # the walk finds what it looks for
    assert wanted - names == set()
    assert {f"policy_milter/sample_rules/{name}" for name in SHIPPED} <= names


def test_the_wheel_carries_the_sample_rules_and_license(dist: Path) -> None:
    with zipfile.ZipFile(dist / f"policy_milter-{__version__}-py3-none-any.whl") as wheel:
        names = set(wheel.namelist())
        policy = wheel.read("policy_milter/sample_rules/policy.conf")
    assert {f"policy_milter/sample_rules/{name}" for name in SHIPPED} <= names
    assert policy == (REPO / "rules" / "policy.conf").read_bytes()
    assert f"policy_milter-{__version__}.dist-info/LICENSE" in names
    assert {n.split("/")[0] for n in names} == {"policy_milter",
                                                f"policy_milter-{__version__}.dist-info"}


def test_the_sdist_installs_and_its_program_writes_rules_that_check_accepts(
        dist: Path, tmp_path: Path) -> None:
    """pip in a new venv, as an admin would (dependencies from the index or pip's cache)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"),
                    "install", "--quiet", "--disable-pip-version-check",
                    str(dist / f"policy-milter-{__version__}.tar.gz")],
                   check=True, capture_output=True, timeout=300)
    program = str(venv / "bin" / "policy-milter")
    written = subprocess.run([program, "init", str(tmp_path / "rules")], capture_output=True,
                             text=True, cwd=tmp_path)
    assert written.returncode == 0, written.stderr
    assert sorted(p.name for p in (tmp_path / "rules").iterdir()) == SHIPPED
    checked = subprocess.run([program, "check", "--rules", str(tmp_path / "rules")],
                             capture_output=True, text=True, cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert f"rules: {tmp_path / 'rules'} ({len(SHIPPED)} files" in checked.stdout
