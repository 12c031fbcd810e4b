"""The architecture's seams: only the adapter imports pymilter."""

from __future__ import annotations

import ast
import subprocess
import sys

from tests.conftest import REPO

PACKAGE = REPO / "policy_milter"


def imported_modules(path) -> set[str]:  # type: ignore[no-untyped-def]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_only_the_adapter_imports_pymilter() -> None:
    users = {p.relative_to(REPO).as_posix() for p in PACKAGE.rglob("*.py")
             if imported_modules(p) & {"Milter", "milter"}}
    assert users == {"policy_milter/milter.py"}


def test_engine_and_cli_check_run_without_pymilter_loaded() -> None:
    code = ("import sys; import policy_milter.engine, policy_milter.cli; "
            "from policy_milter.rules.policy import load; load('rules'); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('Milter', 'milter')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "[]"
