"""Greylisting: the triplet's life (first seen, too early, passed, remembered, expired),
networks, automatic allow lists, the admin's command, and who is never greylisted."""

from __future__ import annotations

import logging
from collections.abc import Callable
from ipaddress import ip_address
from pathlib import Path

import pytest

from policy_milter.engine import Engine
from policy_milter.greylist import Greylist
from policy_milter.rules.policy import load
from policy_milter.services import DependencyError, Services
from policy_milter.services.state.memory import MemoryStore
from tests.support.cli import cli
from tests.unit.test_engine import entry, open_session

A = ip_address("192.0.2.7")


@pytest.fixture
def clock() -> list[float]:
    return [1_000_000.0]


@pytest.fixture
def grey(make_rules: Callable[..., Path], clock: list[float]) -> Greylist:
    policy = load(make_rules(greylist="yes", greylist_delay="5m", greylist_retry_window="1h",
                             greylist_expire="30d", greylist_auto_allow="3"))
    return Greylist(MemoryStore(lambda: clock[0]), policy.settings)


def test_a_triplet_waits_then_passes_and_is_remembered(grey: Greylist, clock: list[float]) -> None:
    first = grey.check(A, "a@sender.example", "bob@example.com", clock[0])
    assert not first.passed
    assert "first seen; may pass from 1970-01-12T13:51:40Z (in 300 s" in first.detail
    clock[0] += 299
    early = grey.check(A, "a@sender.example", "bob@example.com", clock[0])
    assert not early.passed and "(in 1 s" in early.detail
    clock[0] += 1
    assert grey.check(A, "a@sender.example", "bob@example.com", clock[0]).passed
    clock[0] += 20 * 86400  # remembered for greylist_expire after its last pass
    assert grey.check(A, "a@sender.example", "bob@example.com", clock[0]).passed
    assert not grey.check(A, "a@sender.example", "carol@example.com", clock[0]).passed


def test_a_retry_after_the_window_starts_over(grey: Greylist, clock: list[float]) -> None:
    assert not grey.check(A, "a@sender.example", "bob@example.com", clock[0]).passed
    clock[0] += 3601
    again = grey.check(A, "a@sender.example", "bob@example.com", clock[0])
    assert not again.passed and "first seen;" in again.detail


def test_neighbours_share_a_triplet(grey: Greylist, clock: list[float]) -> None:
    assert not grey.check(A, "a@x.example", "bob@example.com", clock[0]).passed
    clock[0] += 300
    assert grey.check(ip_address("192.0.2.250"), "a@x.example", "bob@example.com",
                      clock[0]).passed
    assert not grey.check(ip_address("192.0.3.7"), "a@x.example", "bob@example.com",
                          clock[0]).passed
    v6 = ip_address("2001:db8:1:2::25")
    assert grey.network(v6) == "2001:db8:1:2::/64"
    assert not grey.check(v6, "a@x.example", "bob@example.com", clock[0]).passed
    clock[0] += 300
    assert grey.check(ip_address("2001:db8:1:2:ffff::1"), "a@x.example", "bob@example.com",
                      clock[0]).passed


def test_a_client_that_passes_often_is_allowed(grey: Greylist, clock: list[float]) -> None:
    for n in range(3):
        grey.check(A, f"s{n}@x.example", "bob@example.com", clock[0])
    clock[0] += 300
    for n in range(3):
        assert grey.check(A, f"s{n}@x.example", "bob@example.com", clock[0]).passed
    new = grey.check(A, "new@x.example", "bob@example.com", clock[0])
    assert new.passed and new.detail == "client 192.0.2.0/24 allow-listed (auto)"
    assert any(line.startswith("client 192.0.2.0/24 auto since") for line in grey.lines())


def test_allow_drop_and_list(grey: Greylist, clock: list[float]) -> None:
    grey.check(A, "a@x.example", "bob@example.com", clock[0])
    assert grey.lines() == [
        "triplet 192.0.2.0/24 <a@x.example> <bob@example.com> first 1970-01-12T13:46:40Z "
        "waiting, may pass from 1970-01-12T13:51:40Z; kept until 1970-01-12T14:46:40Z"]
    assert grey.allow("198.51.100.9") == "198.51.100.0/24"
    assert grey.check(ip_address("198.51.100.1"), "a@x.example", "b@example.com").passed
    assert grey.drop("192.0.2.99") == 1 and grey.drop("198.51.100.0/24") == 1
    assert grey.lines() == []
    with pytest.raises(ValueError):
        grey.allow("not-an-address")


@pytest.fixture
def greylisting(make_rules: Callable[..., Path]) -> Engine:
    return Engine(load(make_rules(greylist="yes")), Services(state=MemoryStore()))


@pytest.mark.parametrize(("client", "sender", "rcpt", "login", "expected"), [
    ("192.0.2.10", "<a@sender.example>", "<postmaster@example.com>", "", "greylisted"),
    ("192.0.2.10", "<a@sender.example>", "<nobody@example.com>", "", "unknown_user_local"),
    ("192.0.2.10", "<a@sender.example>", "<info@elsewhere.example>", "", "relay_denied"),
    ("192.0.2.10", "<a@sender.example>", "<postmaster@example.com>", "dora", "continue"),
    ("10.1.2.3", "<a@sender.example>", "<postmaster@example.com>", "", "continue"),
    ("198.51.100.100", "<a@sender.example>", "<postmaster@example.com>", "", "continue"),
    ("192.0.2.10", "<>", "<postmaster@example.com>", "", "continue"),
    ("192.0.2.10", "<>", "<Postmaster+bounces@Example.COM>", "", "continue"),  # its mailbox
    ("192.0.2.10", "<>", "<alice@example.com>", "", "greylisted"),
    ("192.0.2.10", "<a@vip.example>", "<alice@example.com>", "", "continue"),
])
def test_who_is_greylisted(greylisting: Engine, client: str, sender: str, rcpt: str,
                           login: str, expected: str) -> None:
    """Unknown users and relaying are refused for good first; trusted clients (logged in,
    relay_networks), white entries (a plain permit, a recipient rule's skip=all) and the
    null sender to postmaster are never greylisted."""
    s = open_session(greylisting, client)
    assert entry(s.mail(sender, [], login, "")) == "continue"
    assert entry(s.rcpt(rcpt, [], "Q1")) == expected


def test_the_log_says_when_the_triplet_may_pass(greylisting: Engine,
                                                caplog: pytest.LogCaptureFixture) -> None:
    s = open_session(greylisting)
    with caplog.at_level(logging.INFO):
        s.mail("<a@sender.example>", [], "", "")
        s.rcpt("<postmaster@example.com>", [], "Q1")
    line = next(r.getMessage() for r in caplog.records if "check=greylist" in r.getMessage())
    assert "action=tempfail" in line and "entry=greylisted" in line
    assert "may pass from" in line and "policy.conf:" in line


def test_a_failing_store_gets_the_failure_action(make_rules: Callable[..., Path]) -> None:
    class Down(MemoryStore):
        def get(self, key: str) -> str | None:
            raise DependencyError("redis", "down")

    for action, expected in (("tempfail", "state_tempfail"), ("accept", "continue")):
        engine = Engine(load(make_rules(greylist="yes", failure_action=action)),
                        Services(state=Down()))
        s = open_session(engine)
        s.mail("<a@sender.example>", [], "", "")
        assert entry(s.rcpt("<postmaster@example.com>", [], "Q1")) == expected


def test_the_admin_command(make_rules: Callable[..., Path], tmp_path: Path) -> None:
    rules = make_rules(greylist="yes", state_file=str(tmp_path / "state.sqlite3"))
    assert cli("greylist", "--rules", str(rules), "list").stdout == "the greylist is empty\n"
    allowed = cli("greylist", "--rules", str(rules), "allow", "192.0.2.9")
    assert allowed.returncode == 0 and allowed.stdout == "allowed 192.0.2.0/24\n"
    listed = cli("greylist", "--rules", str(rules), "list").stdout
    assert listed.startswith("client 192.0.2.0/24 admin since ") and "until removed" in listed
    assert cli("greylist", "--rules", str(rules), "drop", "192.0.2.0/24").returncode == 0
    bad = cli("greylist", "--rules", str(rules), "allow", "nowhere")
    assert bad.returncode == 2 and "does not appear to be an IPv4 or IPv6" in bad.stderr
    memory = cli("greylist", "--rules", str(make_rules(greylist="yes")), "list")
    assert memory.returncode == 2 and "set state_file" in memory.stderr
