"""`policy-milter check --postfix` with the real postconf, on the configuration the end-to-end
tests run Postfix with: contrib's main.cf and master.cf as they are (chrooted smtpd, contrib's
``smtpd_milters``), the test's values appended.  Postfix itself is not started: ``postconf -c
DIR`` reads the directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from policy_milter import cli
from policy_milter.rules.policy import load
from tests.conftest import FIXTURE_RULES
from tests.e2e.conftest import LOCAL_DOMAINS, MAILBOXES, RELAY_DOMAINS, RELAY_RECIPIENTS
from tests.support.postfix import PostfixInstance


def configured(root: Path, milter_socket: str | None = None,
               **options: dict[str, str]) -> tuple[Path, str]:
    """The configuration directory, and the socket the milter listens on for it."""
    postfix = PostfixInstance(root / "postfix", milter_socket, local_domains=LOCAL_DOMAINS,
                              mailboxes=MAILBOXES, relay_domains=RELAY_DOMAINS,
                              relay_recipients=RELAY_RECIPIENTS, **options)
    return postfix.configure(), postfix.milter_socket


def check(config: Path, socket: str, *more: str) -> int:
    return cli.main(["check", "--rules", str(FIXTURE_RULES), "--postfix",
                     "--postfix-config", str(config), "--socket", socket, *more])


def line_of(path: Path, start: str) -> str:
    """``path:N`` of the first line that starts with ``start``."""
    number = next(n for n, text in enumerate(path.read_text().split("\n"), 1)
                  if text.startswith(start))
    return f"{path}:{number}"


def test_the_e2e_postfix_reaches_its_milter(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    config, socket = configured(tmp_path)
    assert socket == f"unix:{tmp_path}/postfix/queue/policy-milter/milter.sock"
    assert check(config, socket, "--strict") == 0
    out, err = capsys.readouterr()
    assert (out, err) == ("\n".join(load(FIXTURE_RULES).summary()) + "\n", "")


def test_another_socket_is_one_error_for_main_cf(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    config, _ = configured(tmp_path)
    assert check(config, "inet:8894@127.0.0.1") == 1
    assert capsys.readouterr().err.splitlines() == [
        f"{line_of(config / 'main.cf', 'smtpd_milters')}: error: smtpd_milters = "
        "unix:policy-milter/milter.sock does not reach the milter's socket: every message gets "
        "milter_default_action (tempfailed, or passed unchecked under accept); write "
        "smtpd_milters = inet:127.0.0.1:8894 (the milter's --socket inet:8894@127.0.0.1)",
        "1 error(s), 0 warning(s)"]


def test_a_socket_outside_the_chroot_is_an_error_for_each_service(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    socket = f"unix:{tmp_path}/milter.sock"
    config, _ = configured(tmp_path, milter_socket=socket)
    assert check(config, socket) == 1
    master = config / "master.cf"
    services = [text.split()[0] for text in master.read_text().split("\n")
                if text.startswith("127.0.0.1:")]
    assert len(services) == 2  # smtp and submission, on loopback ports
    queue = tmp_path / "postfix" / "queue"
    assert capsys.readouterr().err.splitlines() == [
        *(f"{line_of(master, name)}: error: service {name} runs chrooted in {queue} (master.cf "
          f"chroot column), where {socket} is {queue}{tmp_path}/milter.sock, not the milter's "
          "socket: every message it receives fails or passes unchecked; set its chroot column "
          "to n, or run the milter with a socket in the queue directory (--socket "
          f"unix:{queue}/policy-milter/milter.sock, smtpd_milters = "
          "unix:policy-milter/milter.sock)" for name in services),
        "2 error(s), 0 warning(s)"]


def test_findings_in_main_cf_and_in_the_services(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    config, socket = configured(
        tmp_path, smtpd_options={"milter_default_action": "accept"},
        extra_main_cf={"smtpd_recipient_restrictions": "reject_unlisted_recipient"})
    assert check(config, socket) == 0  # warnings only
    master, main = config / "master.cf", config / "main.cf"
    services = [text.split()[0] for text in master.read_text().split("\n")
                if text.startswith("127.0.0.1:")]
    assert capsys.readouterr().err.splitlines() == [
        f"{line_of(main, 'smtpd_recipient_restrictions')}: warning: smtpd_recipient_restrictions"
        ": reject_unlisted_recipient answers before the milter and pre-empts the milter's "
        "recipients check (unknown_user_local, unknown_user_relay): remove it",
        *(f"{line_of(master, name)}: warning: service {name}: milter_default_action = accept: "
          "while the milter is away or slow, mail passes unchecked; write tempfail (Postfix's "
          "default): clients retry" for name in services),
        "0 error(s), 3 warning(s)"]
    assert check(config, socket, "--strict") == 1
