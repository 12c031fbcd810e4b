"""Running ``policy-milter`` as an admin does: a process of its own, from the repository's
root, with the venv's interpreter."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from tests.conftest import REPO


def cli(*args: str, stdin: str | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``policy-milter ARGS``: its exit status and what it printed."""
    return subprocess.run([sys.executable, "-m", "policy_milter.cli", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, input=stdin)


def cli_json(*args: str) -> dict[str, Any]:
    """``policy-milter ARGS`` (with ``--json`` among them): what it printed, parsed; it
    must have printed nothing on standard error."""
    result = cli(*args)
    assert result.stderr == "", result.stderr
    parsed: dict[str, Any] = json.loads(result.stdout)
    return parsed
