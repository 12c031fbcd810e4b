"""A real Postfix wired to a real policy-milter process on the fixture rules.

Everything lives in one directory of its own under /tmp (not pytest's basetemp, which is
private to root: smtpd and virtual(8) run as user postfix and must reach the milter socket
and the Maildir).  The milter listens where contrib/systemd runs it, in the directory
policy-milter of Postfix's queue directory (smtpd's chroot), which contrib/postfix/main.cf
names as it is.  The directory is setgid group postfix, so the socket, made with the default
mode 660 by a milter running as root here, belongs to group postfix as under the unit.
Every Postfix and milter started here is stopped at the end, also when a test fails.
"""

from __future__ import annotations

import grp
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import FIXTURE_RULES
from tests.milter.conftest import MilterProcess, start_milter
from tests.support.postfix import PostfixInstance

# What Postfix itself knows of the site of tests/fixtures/rules: its address classes and
# the addresses in its own maps.  contrib's main.cf makes Postfix leave unknown users to
# the milter, which these maps would otherwise make Postfix refuse itself.
LOCAL_DOMAINS = ("example.com", "xn--bcher-kva.example", "catchall.example",
                 "lists.example.com", "quota.example")
MAILBOXES = ("postmaster@example.com", "abuse@example.com", "alice@example.com",
             "intern@example.com", "carol@example.com", "former@example.com",
             "trap@example.com", "team-list@example.com", "info@xn--bcher-kva.example",
             "@catchall.example", "staff@lists.example.com", "announce@lists.example.com",
             "rater@quota.example", "dora@quota.example")
RELAY_DOMAINS = ("backup.example.org", "open-backup.example.net")
RELAY_RECIPIENTS = ("info@backup.example.org", "@open-backup.example.net")


def sasl_users(rules: Path = FIXTURE_RULES) -> dict[str, str]:
    """Every ``login=`` of the rules' accounts, with a known password: LOGIN-secret."""
    text = (rules / "accounts").read_text(encoding="utf-8")
    return {login: f"{login}-secret" for login in re.findall(r"\blogin=(\S+)", text)}


USERS = sasl_users()


@dataclass
class Pair:
    """A milter and the Postfix wired to it."""

    milter: MilterProcess
    postfix: PostfixInstance
    milter_dir: Path

    def restart_milter(self) -> MilterProcess:
        """A new milter process on the same socket, with the same rules."""
        self.milter = start_milter(self.milter.rules, self.milter_dir)
        return self.milter


def milter_dir(path: Path) -> Path:
    """A directory for a milter socket that smtpd (group postfix) may use: as contrib/systemd
    makes it, group postfix, 0750, and setgid, since the milter here runs as root."""
    path.mkdir(parents=True)
    os.chown(path, 0, grp.getgrnam("postfix").gr_gid)
    path.chmod(0o2750)  # setgid: the socket gets group postfix
    return path


def _stop_milter(pair: Pair) -> None:
    if pair.milter.proc.poll() is None:
        assert pair.milter.stop() == 0, "the milter did not stop cleanly"


def start_pair(stack: ExitStack, root: Path, name: str, rules: Path = FIXTURE_RULES,
               smtpd_options: dict[str, str] | None = None,
               milter_args: tuple[str, ...] = ()) -> Pair:
    """Start a milter (``run`` with ``milter_args`` too) and a Postfix; ``stack`` stops
    both (Postfix first) when it closes."""
    workdir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=root))  # short: a unix socket
    workdir.chmod(0o711)                                           # path has <= 107 bytes
    postfix = PostfixInstance(
        workdir / "postfix", users=USERS, local_domains=LOCAL_DOMAINS, mailboxes=MAILBOXES,
        relay_domains=RELAY_DOMAINS, relay_recipients=RELAY_RECIPIENTS,
        smtpd_options=smtpd_options)
    sockets = milter_dir(postfix.milter_directory)
    pair = Pair(start_milter(rules, sockets, *milter_args), postfix, sockets)
    stack.callback(_stop_milter, pair)  # the pair's current milter, restarted or not
    pair.postfix.start()
    stack.callback(pair.postfix.stop)
    return pair


@pytest.fixture(scope="session")
def e2e_root() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="policy-milter-e2e-"))
    root.chmod(0o711)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def pair(e2e_root: Path) -> Iterator[Pair]:
    """One milter on tests/fixtures/rules and one Postfix wired to it, for a test module."""
    with ExitStack() as stack:
        yield start_pair(stack, e2e_root, "module")


@pytest.fixture(scope="module")
def postfix(pair: Pair) -> PostfixInstance:
    return pair.postfix


@pytest.fixture(scope="module")
def e2e_milter(pair: Pair) -> MilterProcess:
    return pair.milter


@pytest.fixture
def fresh_pair(e2e_root: Path) -> Iterator[Callable[..., Pair]]:
    """Pairs of the test's own (a test that stops its milter, or changes Postfix settings:
    ``fresh_pair(smtpd_options={...})``); all are stopped at the end."""
    with ExitStack() as stack:
        yield lambda **kw: start_pair(stack, e2e_root, "fresh", **kw)
