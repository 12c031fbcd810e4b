"""Documentation that is generated from code stays identical to it."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys

import pytest

from policy_milter import catalogue
from policy_milter.checks import order
from tests.conftest import REPO


@pytest.mark.parametrize("marker, generated", [
    ("catalogue", catalogue.markdown_table),
    ("checks", order.markdown),
])
def test_readme_tables_are_generated(marker: str, generated: object) -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    table = re.search(rf"<!-- {marker}:begin -->\n(.*?)\n<!-- {marker}:end -->", readme, re.S)
    assert table is not None
    assert callable(generated) and table.group(1) == generated()


def console_blocks() -> list[tuple[str, str]]:
    """The README's ```console blocks: a ``$ policy-milter ...`` line, then its output."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```console\n\$ (policy-milter [^\n]*)\n(.*?)```", readme, re.S)
    assert blocks, "the README shows no command with its output"
    return blocks


def normalised(text: str) -> str:
    """Output without what differs from run to run: times and session ids."""
    text = re.sub(r"\s+\d+\.\d+ ms\b", " N ms", text)
    text = re.sub(r"duration_ms=[\d.]+", "duration_ms=N", text)
    return re.sub(r"session=[0-9a-f]+\.[0-9a-f]+", "session=X", text)


@pytest.mark.parametrize("command, output", console_blocks(), ids=lambda v: v[:40])
def test_readme_examples_print_what_the_readme_shows(command: str, output: str) -> None:
    """Each example, run as written from the repository's root, prints what the README
    says it prints: the examples are real runs, and stay so."""
    args = shlex.split(command)[1:]
    result = subprocess.run([sys.executable, "-m", "policy_milter.cli", *args], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.stderr == ""
    assert normalised(result.stdout) == normalised(output)
