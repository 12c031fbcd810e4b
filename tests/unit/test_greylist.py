"""Greylisting: the triplet's life (first seen, too early, passed, remembered, expired),
networks, automatic allow lists, the admin's command, and who is never greylisted."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from ipaddress import ip_address
from pathlib import Path
from re import escape as re_escape

import pytest

from policy_milter.engine import Engine
from policy_milter.greylist import Greylist
from policy_milter.rules.policy import load
from policy_milter.services import DependencyError, Services
from policy_milter.services.state import MAX_PERIOD
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


# The admin's allow and drop key what check looks up: the client's network in the
# greylist's prefix, the address read as the milter reads a client.

@pytest.mark.parametrize("written", [
    "198.51.100.9",  # a plain address
    "::ffff:198.51.100.9",  # IPv4-mapped, as an IPv6 listener reports it
    "::FFFF:c633:6409",  # the same, in hex
    "[198.51.100.9]",  # an address literal
    "[IPv6:::ffff:198.51.100.9]",
    " 198.51.100.9 ",
    "198.51.100.0/24",  # the network in the greylist prefix
    "198.51.100.77/24",  # host bits set: the same network
    "::ffff:198.51.100.0/120",  # the network, IPv4-mapped
])
def test_allow_makes_check_pass_for_the_network(grey: Greylist, clock: list[float],
                                                written: str) -> None:
    client = ip_address("198.51.100.200")
    assert not grey.check(client, "a@x.example", "bob@example.com", clock[0]).passed
    assert grey.allow(written, clock[0]) == "198.51.100.0/24"
    verdict = grey.check(client, "b@x.example", "carol@example.com", clock[0])
    assert verdict.passed and verdict.detail == "client 198.51.100.0/24 allow-listed (admin)"
    assert grey.drop(written) == 2  # the allow entry and the triplet
    assert not grey.check(client, "b@x.example", "carol@example.com", clock[0]).passed


@pytest.mark.parametrize("written", ["2001:db8:1:2::25", "2001:DB8:1:2:ffff::1",
                                     "2001:db8:1:2::/64", "[IPv6:2001:db8:1:2::25]"])
def test_allow_an_ipv6_client(grey: Greylist, clock: list[float], written: str) -> None:
    assert grey.allow(written) == "2001:db8:1:2::/64"
    assert grey.check(ip_address("2001:db8:1:2::99"), "a@x.example", "bob@example.com",
                      clock[0]).passed
    assert not grey.check(ip_address("2001:db8:1:3::99"), "a@x.example", "bob@example.com",
                          clock[0]).passed


@pytest.mark.parametrize(("written", "message"), [
    ("192.0.2.0/28", "'192.0.2.0/28' is a /28, but the greylist groups IPv4 clients by /24"),
    ("10.0.0.0/16", "is a /16, but the greylist groups IPv4 clients by /24"),
    ("0.0.0.0/0", "is a /0, but the greylist groups IPv4 clients by /24"),
    ("192.0.2.7/32", "is a /32, but the greylist groups IPv4 clients by /24"),
    ("::ffff:198.51.100.0/112", "is a /16, but the greylist groups IPv4 clients by /24"),
    ("2001:db8::/48", "is a /48, but the greylist groups IPv6 clients by /64"),
    ("2001:db8::1/128", "is a /128, but the greylist groups IPv6 clients by /64"),
    ("not-an-address", "does not appear to be an IPv4 or IPv6 address"),
    ("198.51.100.300", "does not appear to be an IPv4 or IPv6 address"),
    ("198.51.100.0/33", "is not an IP address or CIDR block"),
    ("example.com/24", "is not an IP address or CIDR block"),
])
def test_a_network_check_would_never_match_is_refused(grey: Greylist, written: str,
                                                      message: str) -> None:
    for action in (grey.allow, grey.drop):
        with pytest.raises(ValueError, match=re_escape(message)):
            action(written)
    assert grey.lines() == []


def test_allow_in_another_prefix(make_rules: Callable[..., Path]) -> None:
    policy = load(make_rules(greylist="yes", greylist_ipv4_prefix="16",
                             greylist_ipv6_prefix="48"))
    grey = Greylist(MemoryStore(), policy.settings)
    assert grey.allow("10.1.0.0/16") == "10.1.0.0/16" and grey.allow("10.2.3.4") == "10.2.0.0/16"
    assert grey.allow("2001:db8:1::/48") == "2001:db8:1::/48"
    assert grey.check(ip_address("10.1.200.3"), "a@x.example", "bob@example.com").passed
    with pytest.raises(ValueError, match=r"groups IPv4 clients by /16 \(greylist_ipv4_prefix\)"):
        grey.allow("10.3.3.0/24")
    with pytest.raises(ValueError, match=r"groups IPv6 clients by /48 \(greylist_ipv6_prefix\)"):
        grey.allow("2001:db8:1:2::/64")


def engine_greylist(engine: Engine) -> Greylist:
    """The greylist the engine's check uses, on the engine's store."""
    return Greylist(engine.plan.live.state, engine.plan.policy.settings)


def rcpt_from(engine: Engine, client: str, sender: str, rcpt: str) -> str:
    s = open_session(engine, client)
    assert entry(s.mail(sender, [], "", "")) == "continue"
    return entry(s.rcpt(rcpt, [], "Q1"))


def test_an_allowed_network_passes_a_mapped_client_through_the_engine(
        greylisting: Engine) -> None:
    mapped = "::ffff:192.0.2.200"
    assert rcpt_from(greylisting, mapped, "<a@sender.example>", "<alice@example.com>") \
        == "greylisted"
    assert engine_greylist(greylisting).allow("::ffff:192.0.2.9") == "192.0.2.0/24"
    for client in (mapped, "192.0.2.10"):
        assert rcpt_from(greylisting, client, "<b@sender.example>", "<alice@example.com>") \
            == "continue"


def test_the_admin_command_refuses_a_network_of_another_prefix(
        make_rules: Callable[..., Path], tmp_path: Path) -> None:
    rules = make_rules(greylist="yes", state_file=str(tmp_path / "state.sqlite3"))
    bad = cli("greylist", "--rules", str(rules), "allow", "10.0.0.0/16")
    assert bad.returncode == 2 and "the greylist groups IPv4 clients by /24" in bad.stderr
    mapped = cli("greylist", "--rules", str(rules), "allow", "::ffff:198.51.100.7")
    assert mapped.returncode == 0 and mapped.stdout == "allowed 198.51.100.0/24\n"


# The sender half of the triplet is the sender's mailbox, as the recipient half is.

@pytest.mark.parametrize("sender", ["<a@sender.example>", "<a+x7Yq2@sender.example>",
                                    "<A@sender.example>", "<A+Bounce-42@Sender.EXAMPLE>"])
def test_sender_forms_share_one_triplet(greylisting: Engine, sender: str) -> None:
    """A VERP or tagged sender, or another case of it, is its mailbox's triplet: stored
    as the mailbox, and passed by a retry in any form."""
    grey = engine_greylist(greylisting)
    assert rcpt_from(greylisting, "192.0.2.10", sender, "<alice+news@example.com>") \
        == "greylisted"
    [line] = grey.lines()
    assert line.startswith("triplet 192.0.2.0/24 <a@sender.example> <alice@example.com> ")
    # The first attempt, greylist_delay ago, with another tag of the sender:
    grey.drop("192.0.2.0/24")
    grey.check(ip_address("192.0.2.10"), "a@sender.example", "alice@example.com",
               time.time() - grey.delay - 1)
    assert rcpt_from(greylisting, "192.0.2.11", sender, "<Alice@example.com>") == "continue"
    assert rcpt_from(greylisting, "192.0.2.11", "<a+other@sender.example>",
                     "<alice@example.com>") == "continue"
    assert rcpt_from(greylisting, "192.0.2.11", "<b+x7Yq2@sender.example>",
                     "<alice@example.com>") == "greylisted"


# One path passes a triplet; "first seen" is the attempt that stored it.

def test_the_details_of_each_case(grey: Greylist, clock: list[float]) -> None:
    first = grey.check(A, "a@x.example", "bob@example.com", clock[0])
    again = grey.check(A, "a@x.example", "bob@example.com", clock[0])  # the same instant
    assert "first seen;" in first.detail
    assert "first seen 1970-01-12T13:46:40Z;" in again.detail and not again.passed
    clock[0] += 300
    retried = grey.check(A, "a@x.example", "bob@example.com", clock[0])
    assert retried.passed and retried.detail.endswith("<bob@example.com> retried after 300 s")
    clock[0] += 86400
    before = grey.check(A, "a@x.example", "bob@example.com", clock[0])
    assert before.passed and before.detail.endswith("<bob@example.com> passed before")
    [line] = grey.lines()
    assert "passed 1970-01-13T13:51:40Z; kept until 1970-02-12T13:51:40Z" in line


# Passes are counted over greylist_expire, but no longer than the stores keep counts.

def test_auto_allow_counts_passes_of_seven_days_at_most(grey: Greylist,
                                                        clock: list[float]) -> None:
    assert grey.expire == 30 * 86400 and grey.auto_allow_window == MAX_PERIOD

    def pass_one(sender: str) -> None:
        grey.check(A, sender, "bob@example.com", clock[0])
        clock[0] += 300
        assert grey.check(A, sender, "bob@example.com", clock[0]).passed

    pass_one("s1@x.example")
    pass_one("s2@x.example")
    clock[0] += MAX_PERIOD  # those two are out of the count
    pass_one("s3@x.example")
    assert not any(line.startswith("client ") for line in grey.lines())
    clock[0] += 6 * 86400  # within seven days of the third
    pass_one("s4@x.example")
    pass_one("s5@x.example")
    assert any(line.startswith("client 192.0.2.0/24 auto") for line in grey.lines())


def test_auto_allow_counts_over_a_shorter_expire(make_rules: Callable[..., Path]) -> None:
    policy = load(make_rules(greylist="yes", greylist_expire="2d"))
    assert Greylist(MemoryStore(), policy.settings).auto_allow_window == 2 * 86400
