"""``policy-milter init DIR``: the sample rules, as a directory that ``check`` accepts, and
never over anything already there."""

from __future__ import annotations

from pathlib import Path

import pytest

from policy_milter import sample
from tests.conftest import REPO
from tests.support.cli import cli

SHIPPED = sorted(p.name for p in (REPO / "rules").iterdir())


def test_init_writes_the_shipped_rules_and_check_accepts_them(tmp_path: Path) -> None:
    target = tmp_path / "etc" / "policy-milter"  # parents are made too
    result = cli("init", str(target))
    assert (result.returncode, result.stderr) == (0, "")
    assert sorted(p.name for p in target.iterdir()) == SHIPPED
    assert all((target / name).read_bytes() == (REPO / "rules" / name).read_bytes()
               for name in SHIPPED)
    assert result.stdout.splitlines() == [f"wrote {target / name}" for name in SHIPPED] + [
        f"check them with: policy-milter check --rules {target}"]
    assert (target / "policy.conf").read_text().startswith("#")  # the comments come along
    assert cli("check", "--rules", str(target)).returncode == 0


def test_init_fills_an_empty_directory(tmp_path: Path) -> None:
    assert cli("init", str(tmp_path)).returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == SHIPPED


@pytest.mark.parametrize("existing", ["policy.conf", "my-own-notes"])
def test_init_refuses_a_directory_that_is_not_empty(tmp_path: Path, existing: str) -> None:
    (tmp_path / existing).write_text("mine\n")
    result = cli("init", str(tmp_path))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == (f"policy-milter: {tmp_path} is in the way: init writes only into "
                             "a new or empty directory\n")
    assert [p.name for p in tmp_path.iterdir()] == [existing]
    assert (tmp_path / existing).read_text() == "mine\n"


def test_init_refuses_a_file_where_the_directory_would_be(tmp_path: Path) -> None:
    (tmp_path / "rules").write_text("mine\n")
    result = cli("init", str(tmp_path / "rules"))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"policy-milter: {tmp_path / 'rules'} is in the way: "
                                          "init writes only into a new or empty directory"]


def test_init_says_what_it_cannot_write(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    result = cli("init", str(tmp_path / "file" / "rules"))
    assert result.returncode == 2
    assert result.stderr == f"policy-milter: cannot write {tmp_path / 'file' / 'rules'}: " \
                            "Not a directory\n"


def test_a_file_that_appears_meanwhile_is_not_overwritten(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Each file is created exclusively: the second copy of a name finds the first."""
    policy = next(f for f in sample.sample_files() if f.name == "policy.conf")
    monkeypatch.setattr(sample, "sample_files", lambda: [policy, policy])
    with pytest.raises(FileExistsError) as raised:
        sample.write(tmp_path)
    assert raised.value.filename == str(tmp_path / "policy.conf")
