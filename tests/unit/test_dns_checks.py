"""Reverse DNS (row 8) and DNS lists (row 19a) decided from a resolver stand-in.

The real resolver against real servers is tested in tests/milter/test_dns_wire.py
and tests/unit/test_dns_resolver.py; here a table of answers shows the decisions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

import pytest

from policy_milter.decision import Action, Decision
from policy_milter.engine import Engine, Session
from policy_milter.rules.policy import load
from policy_milter.services import Services
from policy_milter.services.dns import Answer, DnsError, key, list_query, reverse_name


class TableResolver:
    """Answers from a dict; a name that is absent does not exist; an exception fails."""

    def __init__(self, answers: dict[tuple[str, str], tuple[str, ...] | Exception]) -> None:
        self.answers = {key(*k): v for k, v in answers.items()}
        self.asked: list[tuple[str, str]] = []

    def submit(self, name: str, rdtype: str) -> Future[Answer]:
        self.asked.append(key(name, rdtype))
        future: Future[Answer] = Future()
        found = self.answers.get(key(name, rdtype), ())
        if isinstance(found, Exception):
            future.set_exception(found)
        else:
            future.set_result(Answer(name, rdtype, found, 60))
        return future


def entry(d: Decision) -> str:
    return d.entry.name if d.action in (Action.REJECT, Action.TEMPFAIL) and d.entry else \
        d.action.value


ADDR = "192.0.2.20"
PTR = (reverse_name(ADDR), "PTR")


@pytest.fixture
def dns_rules(make_rules: Callable[..., Path]) -> Callable[..., Path]:
    def make(zones: list[str] = (), **settings: str) -> Path:  # type: ignore[assignment]
        rules = make_rules(dnsbl="dnsbl", **settings)
        (rules / "dnsbl").write_text("".join(f"{z}\n" for z in zones))
        return rules
    return make


def mail(rules: Path, answers: dict, addr: str | None = ADDR, login: str = "",  # type: ignore[type-arg]
         sender: str = "<a@sender.example>", helo: str = "mx.sender.example",
         client_name: str = "mx.sender.example") -> str:
    engine = Engine(load(rules), Services(dns=TableResolver(answers)))
    s: Session = engine.session()
    s.connect(addr, client_name, "smtpd")
    s.helo(helo, False)
    return entry(s.mail(sender, [], login, ""))


# --- reverse DNS -----------------------------------------------------------------

def test_no_ptr_is_refused(dns_rules: Callable[..., Path]) -> None:
    assert mail(dns_rules(rdns="required"), {}) == "not_allowed_to_send"


def test_ptr_present_passes(dns_rules: Callable[..., Path]) -> None:
    assert mail(dns_rules(rdns="required"), {PTR: ("mx.sender.example",)}) == "continue"


@pytest.mark.parametrize("addr, login", [("10.1.0.9", ""), (ADDR, "alice")])
def test_trusted_clients_need_no_ptr(dns_rules: Callable[..., Path], addr: str,
                                     login: str) -> None:
    assert mail(dns_rules(rdns="required"), {}, addr=addr, login=login,
                sender="<alice@example.com>") == "continue"


def test_client_without_address_is_not_looked_up(dns_rules: Callable[..., Path]) -> None:
    assert mail(dns_rules(rdns="forward-confirmed"), {}, addr=None) == "continue"


def test_generic_names_count_as_none(dns_rules: Callable[..., Path]) -> None:
    rules = dns_rules(rdns="required", rdns_generic_names="*.dynamic.*, *.pool.example")
    assert mail(rules, {PTR: ("host-20.dynamic.isp.example",)}) == "not_allowed_to_send"
    assert mail(rules, {PTR: ("mx.isp.example",)}) == "continue"


@pytest.mark.parametrize("forward, expected", [
    ((ADDR,), "continue"),
    (("192.0.2.99",), "not_allowed_to_send"),
    ((), "not_allowed_to_send"),
    (DnsError("timed out"), "dns_tempfail"),
])
def test_forward_confirmed(dns_rules: Callable[..., Path], forward: object, expected: str) -> None:
    answers = {PTR: ("mx.sender.example",), ("mx.sender.example", "A"): forward}
    assert mail(dns_rules(rdns="forward-confirmed"), answers) == expected


def test_one_confirming_name_is_enough(dns_rules: Callable[..., Path]) -> None:
    answers = {PTR: ("a.example", "b.example"), ("a.example", "A"): DnsError("x"),
               ("b.example", "A"): (ADDR,)}
    assert mail(dns_rules(rdns="forward-confirmed"), answers) == "continue"


def test_ipv6_client_uses_nibbles_and_aaaa(dns_rules: Callable[..., Path]) -> None:
    v6 = "2001:db8::20"
    answers = {(reverse_name(v6), "PTR"): ("mx6.sender.example",),
               ("mx6.sender.example", "AAAA"): ("2001:db8:0:0::20",)}
    assert reverse_name(v6).endswith(".ip6.arpa") and reverse_name(v6).startswith("0.2.0.0.")
    assert mail(dns_rules(rdns="forward-confirmed"), answers, addr=v6) == "continue"


def test_ipv4_mapped_client_is_ipv4(dns_rules: Callable[..., Path]) -> None:
    assert mail(dns_rules(rdns="required"), {PTR: ("mx.sender.example",)},
                addr=f"::ffff:{ADDR}") == "continue"


def test_ptr_failure_tempfails_or_accepts(dns_rules: Callable[..., Path],
                                          caplog: pytest.LogCaptureFixture) -> None:
    failing = {PTR: DnsError("SERVFAIL")}
    assert mail(dns_rules(rdns="required"), failing) == "dns_tempfail"
    with caplog.at_level(logging.INFO):
        assert mail(dns_rules(rdns="required", failure_action="accept"), failing) == "continue"
    assert any("event=dependency_failure" in r.getMessage() and "dns" in r.getMessage()
               for r in caplog.records)


# --- DNS lists ----------------------------------------------------------------------

BL = (list_query(ADDR, "bl.test"), "A")


@pytest.mark.parametrize("zone, answer, expected", [
    ("bl.test client", ("127.0.0.2",), "access_denied"),
    ("bl.test client", (), "continue"),
    ("bl.test client codes=127.0.0.4-127.0.0.7", ("127.0.0.2",), "continue"),
    ("bl.test client codes=127.0.0.4-127.0.0.7", ("127.0.0.2", "127.0.0.5"), "access_denied"),
    ("bl.test client codes=127.0.0.0/30", ("127.0.0.3",), "access_denied"),
    ("bl.test client", ("127.255.255.254",), "continue"),
    ("bl.test client", ("10.0.0.2",), "continue"),
    ("bl.test client reply=permission_denied", ("127.0.0.2",), "permission_denied"),
    ("bl.test client monitor", ("127.0.0.2",), "continue"),
])
def test_client_lists(dns_rules: Callable[..., Path], zone: str, answer: tuple[str, ...],
                      expected: str) -> None:
    assert mail(dns_rules([zone]), {BL: answer}) == expected


def test_zone_errors_are_logged(dns_rules: Callable[..., Path],
                                caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        mail(dns_rules(["bl.test client"]), {BL: ("127.255.255.254",)})
    assert any("event=dnsbl_zone_error" in r.getMessage() and "127.255.255.254" in r.getMessage()
               for r in caplog.records)


def test_monitor_zone_is_logged_as_would_reject(dns_rules: Callable[..., Path],
                                                caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        assert mail(dns_rules(["bl.test client monitor"]), {BL: ("127.0.0.2",)}) == "continue"
    assert any("check=dnsbl action=reject" in r.getMessage() and "monitor=yes" in r.getMessage()
               for r in caplog.records)


@pytest.mark.parametrize("listed, expected", [
    ((), "continue"), (("a",), "continue"), (("a", "b"), "access_denied"),
    (("c",), "access_denied"),
])
def test_weights_add_up_to_the_threshold(dns_rules: Callable[..., Path], listed: tuple[str, ...],
                                         expected: str) -> None:
    zones = ["a.test client", "b.test client", "c.test client weight=2"]
    answers = {(list_query(ADDR, f"{z}.test"), "A"): ("127.0.0.2",) for z in listed}
    assert mail(dns_rules(zones, dnsbl_threshold="2"), answers) == expected


@pytest.mark.parametrize("target, query", [
    ("sender", "spam.example.dbl.test"),
    ("helo", "mx.spam.example.dbl.test"),
    ("ptr", "ptr.spam.example.dbl.test"),
])
def test_domain_lists(dns_rules: Callable[..., Path], target: str, query: str) -> None:
    answers = {(query, "A"): ("127.0.1.2",)}
    assert mail(dns_rules([f"dbl.test {target}"]), answers, sender="<a@spam.example>",
                helo="mx.spam.example", client_name="ptr.spam.example") == "access_denied"


def test_white_list_zone_skips_black_lists(dns_rules: Callable[..., Path]) -> None:
    zones = ["wl.test client allow", "bl.test client"]
    answers = {BL: ("127.0.0.2",), (list_query(ADDR, "wl.test"), "A"): ("127.0.10.1",)}
    assert mail(dns_rules(zones), answers) == "continue"


def test_local_white_entry_skips_dns_lists(dns_rules: Callable[..., Path]) -> None:
    rules = dns_rules(["bl.test client"])
    (rules / "access").write_text(f"client {ADDR} permit\n")
    assert mail(rules, {BL: ("127.0.0.2",)}) == "continue"


def test_trusted_clients_are_not_looked_up(dns_rules: Callable[..., Path]) -> None:
    resolver = TableResolver({})
    engine = Engine(load(dns_rules(["bl.test client"])), Services(dns=resolver))
    s = engine.session()
    s.connect("10.1.0.9", "", "smtpd")
    s.helo("mx.sender.example", False)
    assert entry(s.mail("<a@sender.example>", [], "", "")) == "continue"
    assert resolver.asked == []


@pytest.mark.parametrize("other, expected", [
    ((), "dns_tempfail"),  # the failed zone might have listed it
    (("127.0.0.2",), "access_denied"),  # the answers that came decide
])
def test_a_failing_zone(dns_rules: Callable[..., Path], other: tuple[str, ...],
                        expected: str) -> None:
    zones = ["dead.test client", "bl.test client"]
    answers = {(list_query(ADDR, "dead.test"), "A"): DnsError("timed out"), BL: other}
    assert mail(dns_rules(zones), answers) == expected


def test_lookups_start_at_connect(dns_rules: Callable[..., Path]) -> None:
    resolver = TableResolver({PTR: ("mx.sender.example",)})
    engine = Engine(load(dns_rules(["bl.test client"], rdns="forward-confirmed")),
                    Services(dns=resolver))
    s = engine.session()
    s.connect(ADDR, "", "smtpd")
    assert set(resolver.asked) == {key(*PTR), key(*BL), key("mx.sender.example", "A")}


def test_txt_goes_to_the_log_only(dns_rules: Callable[..., Path],
                                  caplog: pytest.LogCaptureFixture) -> None:
    answers = {BL: ("127.0.0.2",), (BL[0], "TXT"): ("Listed\x07 see https://bl.test/",)}
    with caplog.at_level(logging.INFO):
        assert mail(dns_rules(["bl.test client txt"]), answers) == "access_denied"
    line = next(r.getMessage() for r in caplog.records if "check=dnsbl" in r.getMessage())
    assert "Listed? see https://bl.test/" in line
