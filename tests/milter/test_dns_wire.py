"""Rows 8 and 19a over the milter protocol, against real DNS servers on loopback.

dnsmasq holds the A and PTR records and passes the list zones on to rbldnsd, as a
site's own resolver would; the milter asks only dnsmasq.  Faults real servers will
not produce on demand (SERVFAIL, silence) come from the project's own FakeDns.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import copy_rules
from tests.milter.conftest import MilterProcess, start_milter
from tests.support.cli import cli_json
from tests.support.dnsservers import Dnsmasq, FakeDns, Rbldnsd
from tests.support.session import assert_reply, mail_from

LISTS = ["bl.test client codes=127.0.0.2-127.0.0.11 txt", "dbl.test sender,helo"]
DNS_SETTINGS = dict(rdns="forward-confirmed", dns_timeout="1", dns_budget="2")


def dns_rules(dest: Path, port: int, **settings: str) -> Path:
    rules = copy_rules(dest, dns_nameservers="127.0.0.1", dns_port=str(port), dnsbl="dnsbl",
                       **{**DNS_SETTINGS, **settings})
    (rules / "dnsbl").write_text("".join(f"{z}\n" for z in LISTS))
    return rules


@pytest.fixture(scope="module")
def dns_milter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MilterProcess]:
    work = tmp_path_factory.mktemp("dns")
    zones = {"bl.test": ("ip4set", ":127.0.0.2:Listed $\n192.0.2.77\n"
                                   ":127.255.255.254:refused\n192.0.2.78\n"),
             "dbl.test": ("dnset", ":127.0.1.2:Domain $ listed\nspam.example\n")}
    with Rbldnsd(work / "rbl", zones) as rbl, Dnsmasq(
            work / "dnsmasq",
            host_records=[("mx.good.test", "192.0.2.20"), ("listed.test", "192.0.2.77"),
                          ("refused.test", "192.0.2.78"), ("mx6.good.test", "2001:db8::20")],
            ptr_records=[("192.0.2.21", "forged.test")],
            forward={"bl.test": rbl.port, "dbl.test": rbl.port}) as resolver:
        process = start_milter(dns_rules(work / "rules", resolver.port), work)
        yield process
        assert process.stop() == 0


CASES = {
    "PTR that resolves back": ("192.0.2.20", "<a@sender.example>", None),
    "IPv6 PTR that resolves back": ("2001:db8::20", "<a@sender.example>", None),
    "8 no PTR": ("192.0.2.22", "<a@sender.example>", "not_allowed_to_send"),
    "8 PTR not confirmed": ("192.0.2.21", "<a@sender.example>", "not_allowed_to_send"),
    "19a client listed": ("192.0.2.77", "<a@sender.example>", "access_denied"),
    "19a sender domain listed": ("192.0.2.20", "<a@spam.example>", "access_denied"),
    "refusal code is not a listing": ("192.0.2.78", "<a@sender.example>", None),
    "trusted client is not looked up": ("10.1.0.5", "<a@sender.example>", None),
}


@pytest.mark.parametrize("addr, sender, expected", CASES.values(), ids=CASES.keys())
def test_dns_decisions(dns_milter: MilterProcess, addr: str, sender: str,
                       expected: str | None) -> None:
    with dns_milter.client() as client:
        reply = mail_from(client, sender, addr)
    if expected is None:
        assert reply.passed, reply
    else:
        assert_reply(reply, expected)


def test_listing_is_logged_with_its_txt(dns_milter: MilterProcess) -> None:
    with dns_milter.client() as client:
        mail_from(client, addr="192.0.2.77")
    line = dns_milter.wait_for_log("client=192.0.2.77", event="decision")
    assert "check=dnsbl" in line and "Listed 192.0.2.77" in line


def test_refusal_code_is_logged_as_zone_error(dns_milter: MilterProcess) -> None:
    with dns_milter.client() as client:
        mail_from(client, addr="192.0.2.78")
    assert "127.255.255.254" in dns_milter.wait_for_log("event=dnsbl_zone_error")


# --- failures -----------------------------------------------------------------------

@pytest.fixture
def faulty_dns() -> Iterator[FakeDns]:
    with FakeDns() as fake:
        fake.add("30.2.0.192.in-addr.arpa", "PTR", "mx.good.test.")
        fake.add("mx.good.test", "A", "192.0.2.30")
        yield fake


def faulty_milter(tmp_path: Path, fake: FakeDns, fresh: Callable[..., MilterProcess],
                  **settings: str) -> MilterProcess:
    return fresh(dns_rules(tmp_path / "rules", fake.port, **settings))


@pytest.mark.parametrize("fault", ["servfail", "drop"])
def test_dns_failure_tempfails_within_the_budget(tmp_path: Path, faulty_dns: FakeDns,
                                                 fresh_milter: Callable[..., MilterProcess],
                                                 fault: str) -> None:
    getattr(faulty_dns, fault)("30.2.0.192.bl.test")
    process = faulty_milter(tmp_path, faulty_dns, fresh_milter)
    with process.client() as client:
        started = time.monotonic()
        reply = mail_from(client, addr="192.0.2.30")
        elapsed = time.monotonic() - started
    assert_reply(reply, "dns_tempfail")
    assert elapsed < 2 + 1  # dns_budget plus slack: never the MTA's 30 s
    line = process.wait_for_log("check=dnsbl action=tempfail")
    assert "dns failed" in line and "30.2.0.192.bl.test" in line


def test_dns_failure_can_be_set_to_accept(tmp_path: Path, faulty_dns: FakeDns,
                                          fresh_milter: Callable[..., MilterProcess]) -> None:
    faulty_dns.servfail("30.2.0.192.in-addr.arpa")
    process = faulty_milter(tmp_path, faulty_dns, fresh_milter, failure_action="accept")
    with process.client() as client:
        assert mail_from(client, addr="192.0.2.30").passed
    assert "check=rdns" in process.wait_for_log("event=dependency_failure")


def test_repeat_sessions_are_answered_from_the_cache(tmp_path: Path, faulty_dns: FakeDns,
                                                     fresh_milter: Callable[..., MilterProcess]
                                                     ) -> None:
    process = faulty_milter(tmp_path, faulty_dns, fresh_milter)
    for _ in range(3):
        with process.client() as client:
            assert mail_from(client, addr="192.0.2.30").passed
    assert faulty_dns.count("30.2.0.192.in-addr.arpa") == 1
    assert faulty_dns.count("30.2.0.192.bl.test") == 1


@pytest.mark.parametrize("addr, sender, expected", CASES.values(), ids=CASES.keys())
def test_policy_milter_test_with_live_dns_answers_as_the_milter(
        dns_milter: MilterProcess, addr: str, sender: str, expected: str | None) -> None:
    """``policy-milter test --dns live`` asks the same resolver the milter does and gets
    the milter's answer, with the check that decided."""
    played = cli_json("test", "--rules", str(dns_milter.rules), "--dns", "live",
                      "--client", addr, "--client-name", "mx.sender.example",
                      "--helo", "mx.sender.example", "--sender", sender,
                      "--rcpt", "postmaster@example.com", "--json")
    [mail] = [s for s in played["stages"] if s["stage"] == "mail"]
    assert (mail["entry"] or None) == expected
    if expected is not None:
        assert mail["check"] in ("rdns", "dnsbl") and mail["answer"] == "reject"
