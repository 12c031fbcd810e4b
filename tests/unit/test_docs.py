"""Documentation that is generated from code, or shows its output, stays identical to it."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from policy_milter import catalogue
from policy_milter.cli import main
from policy_milter.checks import order
from tests.conftest import REPO
from tests.support.cli import cli


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
    result = cli(*args)
    assert result.stderr == ""
    assert normalised(result.stdout) == normalised(output)


# The README's `policy-milter check` example: its files, as the README shows them.
CHECK_EXAMPLE = {
    "policy.conf": ["relay_networks = 127.0.0.0/8, 192.0.2.1/24", "max_message_size = 20M",
                    "domains = domains", "accounts = accounts", "access = access"],
    "domains": ["example.com   local", "example.org   local"],
    "accounts": ["alice@example.com   max_size=50M"],
    "access": ["sender @spammer.example       reject", "sender boss@spammer.example   permit"],
}


def test_readme_check_example_is_what_check_prints(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for name, lines in CHECK_EXAMPLE.items():
        assert all(line in readme for line in lines), name
        (tmp_path / "example").mkdir(exist_ok=True)
        (tmp_path / "example" / name).write_text("".join(f"{line}\n" for line in lines))
    (tmp_path / "contrib").symlink_to(REPO / "contrib")
    monkeypatch.chdir(tmp_path)
    for command, status in (("policy-milter check --rules example", 0),
                            ("policy-milter check --rules example --postfix "
                             "contrib/postfix/main.cf contrib/postfix/master.cf", 1)):
        shown = re.search(rf"\$ {re.escape(command)} 2>&1 >/dev/null\n(.*?)\n```", readme, re.S)
        assert shown is not None, command
        assert main(command.split()[1:]) == status
        printed = capsys.readouterr().err.splitlines()  # the README shows the findings alone
        if "--postfix" in command:  # and leaves the rules' four out the second time
            printed = [line for line in printed if not line.startswith("example/")]
        assert printed == shown.group(1).splitlines()
