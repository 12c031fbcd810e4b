"""The code checks itself: types, and the setting names it spells out as strings.

A misspelt attribute of the typed Settings object is a type error; a misspelt setting
name in a string (``policy.where["..."]``, ``sender_limit(ctx, "...", ...)``) is caught
here, before a message could reach that line.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from policy_milter.rules.policy import RULE_FILES, TABLE_FILES
from policy_milter.rules.settings import NAMES
from tests.conftest import REPO

PACKAGE = REPO / "policy_milter"
KNOWN = set(NAMES) | set(TABLE_FILES) | set(RULE_FILES)


def test_the_package_type_checks(tmp_path: Path) -> None:
    """mypy with setup.cfg's configuration: attribute typos, wrong types, stale ignores."""
    result = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path)],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def setting_strings(tree: ast.AST) -> list[tuple[int, str]]:
    """String constants used as setting names: ``where["name"]`` and ``X.where["name"]``
    subscripts, and the second argument of ``sender_limit`` and ``setting_at``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) and (
                isinstance(node.value, ast.Attribute) and node.value.attr == "where"
                or isinstance(node.value, ast.Name) and node.value.id == "where"):
            found.append((node.lineno, node.slice.value))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                and node.func.id in ("sender_limit", "setting_at"):
            found += [(node.lineno, a.value) for a in node.args[1:2]
                      if isinstance(a, ast.Constant)]
    return found


def test_every_setting_name_in_the_code_exists() -> None:
    used = {(p.relative_to(REPO).as_posix(), line, name)
            for p in PACKAGE.rglob("*.py")
            for line, name in setting_strings(ast.parse(p.read_text(encoding="utf-8")))}
    assert len(used) > 10  # the scan finds what it looks for
    assert [u for u in used if u[2] not in KNOWN] == []


def test_the_scan_sees_a_misspelt_name() -> None:
    tree = ast.parse('ctx.policy.where["rdsn"]\nwhere["spam_tag_scor"]\n'
                     'sender_limit(ctx, "max_recipient", "x")\nsetting_at(policy, "dns_budgt")\n')
    assert sorted(name for _, name in setting_strings(tree)) == [
        "dns_budgt", "max_recipient", "rdsn", "spam_tag_scor"]
