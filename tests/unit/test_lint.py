"""`policy-milter check`'s findings about rules that load: each warning, its line, and its
edge forms; and, where a finding says what the milter would do, the engine doing it."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest

from policy_milter import cli, listen
from policy_milter.engine import Engine
from policy_milter.rules import lint
from policy_milter.rules.policy import Policy
from policy_milter.rules.policy import load as load_dir
from policy_milter.services import Services
from tests.conftest import FIXTURE_RULES
from tests.unit.test_engine import entry, open_session
from tests.unit.test_rules import SHIPPED_RULES, load, values, write


def found(root: Path, conf: Iterable[str] = (), **files: Iterable[str]) -> list[str]:
    """The findings, each as `check` prints it (without --strict)."""
    return [f.line(strict=False) for f in lint.check(load(root, conf, **files))]


def messages(root: Path, conf: Iterable[str] = (), **files: Iterable[str]) -> list[str]:
    """The findings' `file:line: text`, with the rules directory written as DIR."""
    return [line.replace(f"{root}/", "DIR/") for line in found(root, conf, **files)]


@pytest.mark.parametrize("rules", [SHIPPED_RULES, FIXTURE_RULES])
def test_shipped_and_fixture_rules_have_no_findings(rules: Path) -> None:
    assert lint.check(load_dir(rules)) == []


def test_strict_makes_a_warning_an_error() -> None:
    finding = lint.Finding("DIR/domains:3", "something")
    assert finding.line(strict=False) == "DIR/domains:3: warning: something"
    assert finding.line(strict=True) == "DIR/domains:3: error: something"
    assert lint.Finding("main.cf:1", "x", fatal=True).line(strict=False) == "main.cf:1: error: x"


def test_findings_sort_by_file_then_line_number(tmp_path: Path) -> None:
    lines = [f"client 192.0.{n}.1/24 reject" for n in range(1, 12)]
    got = messages(tmp_path, ["dnsbl_threshold = 0"], access=lines)
    assert [line.split(": ")[0] for line in got] == [
        *(f"DIR/access:{n}" for n in range(1, 12)), "DIR/policy.conf:1"]


# --- domains without mailboxes ----------------------------------------------------------

NO_MAILBOX = ("local domain 'example.org' has no mailbox: no account, alias or list is in it, "
              "so every recipient there is refused (unknown_user_local); list its addresses in "
              "accounts or aliases ('@example.org TARGET' in aliases takes them all), or make "
              "it relay if another server holds its mailboxes")


@pytest.mark.parametrize("conf, files, expected", [
    ([], {"domains": ["example.com local", "example.org local"],
          "accounts": ["a@example.com"]}, ["DIR/domains:2"]),
    ([], {"domains": ["example.org local"]}, ["DIR/domains:1"]),  # no accounts file at all
    ([], {"domains": ["example.org local"], "accounts": ["a@example.org moved"]},
     ["DIR/domains:1"]),  # a moved account refuses too (user_not_local)
    ([], {"domains": ["example.org local"], "aliases": ["sales@example.org a@example.com"]}, []),
    ([], {"domains": ["example.org local"], "aliases": ["@example.org a@example.com"]}, []),
    ([], {"domains": ["example.org local"], "lists": ["staff@example.org open"]}, []),
    ([], {"domains": ["example.org local"], "accounts": ["A@Example.ORG."]}, []),
    ([], {"domains": ["example.org relay", "example.net remote"]}, []),
    # an account in a subdomain is in '.example.org', not in 'example.org'
    ([], {"domains": ["example.org local", ".example.org local"],
          "accounts": ["a@mx.example.org"]}, ["DIR/domains:1"]),
    (["challenge_store = /var/lib/pm", "challenge_address = challenge@example.org"],
     {"domains": ["example.org local"]}, []),
    (["challenge_address = challenge@example.org"],  # challenge-response off
     {"domains": ["example.org local"]}, ["DIR/domains:1"]),
])
def test_local_domain_without_mailboxes(tmp_path: Path, conf: list[str],
                                        files: dict[str, list[str]], expected: list[str]) -> None:
    assert messages(tmp_path, conf, **files) == [f"{at}: warning: {NO_MAILBOX}" for at in expected]


def test_the_flagged_local_domain_refuses_every_recipient(tmp_path: Path) -> None:
    policy = load(tmp_path, domains=["example.com local", "example.org local"],
                  accounts=["a@example.com"])
    assert messages(tmp_path, domains=["example.com local", "example.org local"],
                    accounts=["a@example.com"]) == [f"DIR/domains:2: warning: {NO_MAILBOX}"]
    engine = Engine(policy, Services())
    for rcpt in ("<postmaster@example.org>", "<a@example.org>", "<A+x@EXAMPLE.org.>"):
        s = open_session(engine, "127.0.0.1")
        assert entry(s.mail("<x@sender.example>", [], "", "")) == "continue"
        assert entry(s.rcpt(rcpt, [], "")) == "unknown_user_local"


def test_a_domain_pattern_without_mailboxes(tmp_path: Path) -> None:
    """'.example.net' is every subdomain: one '@domain' alias cannot take them all."""
    assert messages(tmp_path, domains=[".example.net local"]) == [
        "DIR/domains:1: warning: local domain '.example.net' has no mailbox: no account, alias "
        "or list is in it, so every recipient there is refused (unknown_user_local); list its "
        "addresses in accounts or aliases, or make it relay if another server holds its "
        "mailboxes"]


def test_list_domain_without_lists(tmp_path: Path) -> None:
    assert messages(tmp_path, domains=["lists.example local", "lists.example.org list"],
                    accounts=["a@lists.example", "b@lists.example.org"]) == [
        "DIR/domains:2: warning: list domain 'lists.example.org' has no list in lists, so every "
        "recipient there is refused (no_such_list); add its lists to lists, or make it local"]


# --- limits -------------------------------------------------------------------------------

@pytest.mark.parametrize("conf, files, expected", [
    (["max_recipients = 50"], {"domains": ["example.com local max_recipients=80"],
                               "accounts": ["a@example.com"]},
     ["DIR/domains:1: warning: max_recipients=80 is above the server's max_recipients = 50 "
      "(DIR/policy.conf:1), which refuses first: this limit never applies; lower it, or raise "
      "max_recipients"]),
    ([], {"accounts": ["a@example.com max_recipients=101"]},
     ["DIR/accounts:1: warning: max_recipients=101 is above the server's max_recipients = 100 "
      "(the default), which refuses first: this limit never applies; lower it, or raise "
      "max_recipients"]),
    (["max_message_size = 10M"], {"accounts": ["a@example.com max_size=20M max_receive_size=11M"]},
     ["DIR/accounts:1: warning: max_size=20M is above the server's max_message_size = 10M "
      "(DIR/policy.conf:1), which refuses first: this limit never applies; lower it, or raise "
      "max_message_size",
      "DIR/accounts:1: warning: max_receive_size=11M is above the server's max_message_size = "
      "10M (DIR/policy.conf:1), which refuses first: this limit never applies; lower it, or "
      "raise max_message_size"]),
    (["max_message_size = 10M"], {"listeners": ["submission max_size=10241K"]},
     ["DIR/listeners:1: warning: max_size=10241K is above the server's max_message_size = 10M "
      "(DIR/policy.conf:1): every listener refuses what is bigger than that, this one too; "
      "lower it, or raise max_message_size"]),
    # equal, below, or no server limit: nothing to say
    (["max_message_size = 10M", "max_recipients = 5"],
     {"domains": ["example.com remote max_size=10M max_recipients=5"],
      "listeners": ["submission max_size=1M"]}, []),
    (["max_message_size = 0", "max_recipients = 0"],
     {"domains": ["example.com remote max_size=1G max_recipients=1000"]}, []),
])
def test_limits_above_the_servers(tmp_path: Path, conf: list[str], files: dict[str, list[str]],
                                  expected: list[str]) -> None:
    assert messages(tmp_path, conf, **files) == expected


# --- settings -----------------------------------------------------------------------------

TAGGED = ("spam_tag_score = {tag} is above spam_reject_score = {reject}: mail that scores so "
          "high is refused, so none is ever tagged; make spam_tag_score the lower one")


@pytest.mark.parametrize("conf, expected", [
    (["spam_tag_score = 12", "spam_reject_score = 10"],
     [f"DIR/policy.conf:1: warning: {TAGGED.format(tag=12, reject=10)}"]),
    (["spam_reject_score = 3"],  # the tag score is the default: the line is the other's
     [f"DIR/policy.conf:1: warning: {TAGGED.format(tag=5, reject=3)}"]),
    (["spam_tag_score = 10.5"], [f"DIR/policy.conf:1: warning: {TAGGED.format(tag=10.5, reject=10)}"]),
    (["spam_tag_score = 10"], []),
    (["spam_tag_score = -1", "spam_reject_score = 0"], []),
])
def test_spam_scores(tmp_path: Path, conf: list[str], expected: list[str]) -> None:
    assert messages(tmp_path, conf) == expected


def test_dnsbl_threshold_zero(tmp_path: Path) -> None:
    assert messages(tmp_path, ["# lists", "dnsbl_threshold = 0"]) == [
        "DIR/policy.conf:2: warning: dnsbl_threshold = 0: a score of 0 reaches it, so a listing "
        "in any zone refuses, monitor zones and weight=0 ones too; write 1 (one listing "
        "refuses) or more"]
    assert messages(tmp_path / "one", ["dnsbl_threshold = 1"]) == []


@pytest.mark.parametrize("store, expected", [
    ("spool", True), ("./var/challenges", True), ("../challenges", True),
    ("/var/lib/policy-milter", False),
])
def test_relative_challenge_store(tmp_path: Path, store: str, expected: bool) -> None:
    got = messages(tmp_path, [f"challenge_store = {store}",
                              "challenge_address = challenge@example.com"])
    assert got == ([f"DIR/policy.conf:1: warning: challenge_store '{store}' is a relative path: "
                    "it is taken from the milter's working directory (/ under systemd), not from "
                    "the rules directory; write an absolute path (/var/lib/policy-milter is "
                    "contrib/systemd's StateDirectory)"] if expected else [])


# --- CIDR blocks with host bits set -------------------------------------------------------

def host_bits(where: str, what: str, text: str, net: str, one: str) -> str:
    return (f"{where}: warning: {what}: '{text}' has host bits set, so it means {net}; write "
            f"{net}, or {one} for the one address")


def test_host_bits_in_relay_networks(tmp_path: Path) -> None:
    assert messages(tmp_path, ["relay_networks = 127.0.0.0/8, 192.0.2.1/24, 2001:db8::1/64, "
                               "::ffff:198.51.100.9/120, 10.0.0.0/8, ::1/128"]) == [
        host_bits("DIR/policy.conf:1", "relay_networks", "192.0.2.1/24", "192.0.2.0/24",
                  "192.0.2.1"),
        host_bits("DIR/policy.conf:1", "relay_networks", "2001:db8::1/64", "2001:db8::/64",
                  "2001:db8::1"),
        host_bits("DIR/policy.conf:1", "relay_networks", "::ffff:198.51.100.9/120",
                  "198.51.100.0/24", "::ffff:198.51.100.9"),
    ]


def test_host_bits_in_client_conditions(tmp_path: Path) -> None:
    write(tmp_path / "blocked", ["203.0.113.7/25", "203.0.113.128/25"])
    assert messages(tmp_path, access=["client 192.0.2.1/24 reject",
                                      "client 198.51.100.0/24 reject",
                                      "recipient a@example.com client 10.9.8.7/8 reject",
                                      "client file:blocked reject"]) == [
        host_bits("DIR/access:1", "client", "192.0.2.1/24", "192.0.2.0/24", "192.0.2.1"),
        host_bits("DIR/access:3", "client", "10.9.8.7/8", "10.0.0.0/8", "10.9.8.7"),
        host_bits("DIR/access:4", "client", "203.0.113.7/25", "203.0.113.0/25", "203.0.113.7"),
    ]


def test_host_bits_in_dnsbl_codes(tmp_path: Path) -> None:
    policy = load(tmp_path, ["dns_nameservers = 127.0.0.1"],
                  dnsbl=["bl.example client codes=127.0.0.2,127.0.0.17/28,127.0.0.32/28"])
    (zone,) = policy.tables.zones
    assert zone.codes.ranges == ((0x7F000002, 0x7F000002), (0x7F000010, 0x7F00001F),
                                 (0x7F000020, 0x7F00002F))  # read as before: the whole block
    assert [f.line(False).replace(f"{tmp_path}/", "DIR/") for f in lint.check(policy)] == [
        host_bits("DIR/dnsbl:1", "codes", "127.0.0.17/28", "127.0.0.16/28", "127.0.0.17")]


# --- public DNS lists ---------------------------------------------------------------------

ZONES = ["zen.spamhaus.org client", "dbl.spamhaus.org sender", "bl.spamcop.net client monitor",
         "key.zen.dq.spamhaus.net client", "bl.example.net client",
         "b.barracudacentral.org client", "dnsbl-1.uceprotect.net client"]


def public_list(where: str, zone: str, through: str) -> str:
    return (f"{where}: warning: {zone} is a public DNS list asked through {through}: public "
            "lists refuse queries from shared resolvers, or answer them with codes that list "
            "everyone; set dns_nameservers to a resolver of your own (an unbound on 127.0.0.1, "
            "say)")


@pytest.mark.parametrize("servers, through", [
    ("", "the system resolver (dns_nameservers is empty), often a shared one"),
    ("8.8.8.8", "the public resolver 8.8.8.8 (dns_nameservers)"),
    ("127.0.0.1, 2606:4700:4700:0:0:0:0:1111",
     "the public resolver 2606:4700:4700:0:0:0:0:1111 (dns_nameservers)"),
    ("208.67.222.222 9.9.9.9", "the public resolver 208.67.222.222, 9.9.9.9 (dns_nameservers)"),
])
def test_public_lists_through_shared_resolvers(tmp_path: Path, servers: str, through: str) -> None:
    assert messages(tmp_path, [f"dns_nameservers = {servers}"], dnsbl=ZONES) == [
        public_list(f"DIR/dnsbl:{n}", zone.split()[0], through) for n, zone in
        enumerate(ZONES, 1) if n in (1, 2, 3, 6, 7)]


@pytest.mark.parametrize("servers", ["127.0.0.1", "192.0.2.53, ::1", "8.8.8.9"])
def test_public_lists_through_a_resolver_of_ones_own(tmp_path: Path, servers: str) -> None:
    assert messages(tmp_path, [f"dns_nameservers = {servers}"], dnsbl=ZONES) == []


# --- rules that never decide --------------------------------------------------------------

def never_decides(later: int, first: int) -> str:
    return (f"DIR/access:{later}: warning: this rule never decides: the rule at DIR/access:{first}"
            " matches all it matches and comes first (the first match ends the walk, whatever "
            "its action); move this rule above that one, or remove it")


@pytest.mark.parametrize("first, later, shadowed", [
    ("sender @example.com reject", "sender a@example.com permit", True),
    ("sender a@example.com permit", "sender @example.com reject", False),
    ("sender @example.com reject", "sender A@Example.COM. client 192.0.2.1 permit", True),
    ("sender @example.com client 10.0.0.0/8 reject", "sender a@example.com permit", False),
    ("client 10.0.0.0/8 monitor reject", "client 10.1.0.0/16 sender b@x.example permit", True),
    ("client 10.0.0.0/8 add_header X-Seen: yes", "client 10.1.2.3 reject", True),
    ("client 10.0.0.0/8, 192.0.2.0/24 reject", "client 192.0.2.7 permit", True),
    ("client 10.0.0.0/9, 10.128.0.0/9 reject", "client 10.0.0.0/8 permit", False),  # halves
    ("sender *@example.com reject", "sender a@example.com permit", True),
    ("sender abuse@ permit", "sender abuse@example.com reject", True),
    ("sender <> reject", "sender <> permit", True),
    ("sender @.example.com reject", "sender a@example.com permit", False),
    ("helo .example.com reject", "helo mx.example.com client 192.0.2.1 permit", True),
    ("listener smtpd reject", "listener SMTPD authenticated no reject", True),
    ("authenticated yes permit", "authenticated yes sender a@example.com reject", True),
    ("authenticated yes permit", "authenticated no sender a@example.com reject", False),
    ("recipient @.example.com discard", "recipient a@b.example.com reject", True),
    # MAIL against RCPT: two walks, whatever the conditions
    ("sender @example.com reject", "recipient a@example.com sender a@example.com permit", False),
    ("header Subject=/x/i reject", "header Subject=/x/i body /y/ reject", True),
    ("header Subject=/x/i reject", "header Subject=/X/i reject", False),  # only the same text
    ("attachment *.exe,*.scr reject", "attachment *.scr reject", True),
    ("attachment *.exe reject", "attachment virus.exe reject", False),  # not provable
])
def test_shadowed_rules(tmp_path: Path, first: str, later: str, shadowed: bool) -> None:
    assert messages(tmp_path, access=[first, "# between", later]) == (
        [never_decides(3, 1)] if shadowed else [])


def test_the_shadowed_rule_is_never_reached(tmp_path: Path) -> None:
    """What the finding claims, the rule walk does: the first rule answers."""
    policy = load(tmp_path, access=["client 10.0.0.0/8 monitor reject",
                                    "client 10.1.0.0/16 sender b@x.example permit"])
    assert messages(tmp_path, access=["client 10.0.0.0/8 monitor reject",
                                      "client 10.1.0.0/16 sender b@x.example permit"]) == [
        never_decides(2, 1)]
    first = policy.rule_lists[0].mail.first(values(client="10.1.2.3", sender="b@x.example"))
    assert first is not None and first.where.endswith("access:1")


def test_the_first_shadowing_rule_is_named_once(tmp_path: Path) -> None:
    assert messages(tmp_path, access=["client 192.0.2.0/24 permit", "client 192.0.2.0/25 reject",
                                      "client 192.0.2.7 reject", "client 192.0.2.7 reject"]) == [
        never_decides(2, 1), never_decides(3, 1), never_decides(4, 1)]


def test_shadowing_in_file_lists(tmp_path: Path) -> None:
    write(tmp_path / "nets", ["10.0.0.0/8", "172.16.0.0/12"])
    assert messages(tmp_path, access=["client file:nets reject", "client 172.16.5.0/24 permit"]) \
        == [never_decides(2, 1)]


def test_filters_are_walked_on_their_own(tmp_path: Path) -> None:
    assert messages(tmp_path, access=["sender @example.com reject"],
                    filters=["sender a@example.com permit"]) == []


def test_a_large_list_is_checked_quickly(tmp_path: Path) -> None:
    import time
    rules = [f"client 198.18.{i // 250}.{i % 250} reject" for i in range(5000)]
    rules += [f"sender user{i}@bulk{i % 50}.example reject" for i in range(5000)]
    rules += ["client 198.18.0.0/16 permit", "client 198.18.3.4 permit"]
    started = time.perf_counter()
    got = messages(tmp_path, access=rules)
    assert time.perf_counter() - started < 10
    assert got == [never_decides(10002, 755)]  # 198.18.3.4: 3 * 250 + 4, the 755th line


# --- rules that never match ---------------------------------------------------------------

CONTRADICTION = ("warning: this rule never matches: its {field} conditions exclude each other, "
                 "and all of a rule's conditions must hold; keep one of them, or write two rules")


@pytest.mark.parametrize("rule, field", [
    ("authenticated yes authenticated no reject", "authenticated"),
    ("client 10.0.0.0/8 client 192.168.0.0/16 reject", "client"),
    ("sender <> sender @example.com reject", "sender"),
    ("sender a@x.example sender b@y.example reject", "sender"),
    ("helo mx.example helo smtp.example reject", "helo"),
    ("listener smtpd listener submission reject", "listener"),
    ("client 10.0.0.0/8 client 10.1.0.0/16 reject", ""),
    ("sender a@x.example sender b@x.example reject", ""),  # one domain: not proven
    ("sender a@x.example sender a@ reject", ""),
    ("helo .example helo mx.example reject", ""),
    ("header Subject=/a/ header Subject=/b/ reject", ""),
])
def test_contradictory_conditions(tmp_path: Path, rule: str, field: str) -> None:
    assert messages(tmp_path, access=[rule]) == (
        [f"DIR/access:1: {CONTRADICTION.format(field=field)}"] if field else [])


def test_a_rule_that_never_matches_shadows_nothing(tmp_path: Path) -> None:
    got = messages(tmp_path, access=["sender <> sender @example.com reject",
                                     "sender a@example.com permit"])
    assert got == [f"DIR/access:1: {CONTRADICTION.format(field='sender')}"]


RELAY_FIRST = ("DIR/access:{n}: warning: this rule never matches: its recipients are in {domains}, "
               "not a domain of ours, and its clients neither authenticated nor in "
               "relay_networks: the relay check refuses them first (relay_denied); add the "
               "domain to domains, or remove the rule")
DOMAINS = ["example.com local", "partner.example remote"]
ACCOUNTS = ["a@example.com"]


@pytest.mark.parametrize("conf, rule, domains", [
    ([], "recipient @elsewhere.example authenticated no client 198.51.100.0/24 reject",
     "elsewhere.example"),
    ([], "recipient a@partner.example, @other.example authenticated no client 192.0.2.7 reject",
     "other.example, partner.example"),
    (["relay_networks ="], "recipient @elsewhere.example authenticated no reject",
     "elsewhere.example"),
    # a client in relay_networks may relay; so may an authenticated one
    ([], "recipient @elsewhere.example authenticated no client 127.0.0.1 reject", ""),
    ([], "recipient @elsewhere.example authenticated no client 0.0.0.0/0 reject", ""),
    ([], "recipient @elsewhere.example authenticated no reject", ""),
    ([], "recipient @elsewhere.example client 198.51.100.0/24 reject", ""),
    # one of ours, or any subdomain (unknown domains): not provable
    ([], "recipient @example.com authenticated no client 198.51.100.0/24 reject", ""),
    ([], "recipient @.elsewhere.example authenticated no client 198.51.100.0/24 reject", ""),
    # monitor mode: relay only logs, and the rule is reached
    (["monitor = yes"],
     "recipient @elsewhere.example authenticated no client 198.51.100.0/24 reject", ""),
])
def test_recipient_rules_behind_the_relay_check(tmp_path: Path, conf: list[str], rule: str,
                                                domains: str) -> None:
    got = messages(tmp_path, conf, domains=DOMAINS, accounts=ACCOUNTS, access=[rule])
    assert got == ([RELAY_FIRST.format(n=1, domains=domains)] if domains else [])


def test_the_relay_check_answers_before_such_a_rule(tmp_path: Path) -> None:
    rule = "recipient @elsewhere.example authenticated no client 198.51.100.0/24 discard"
    policy: Policy = load(tmp_path, domains=DOMAINS, accounts=ACCOUNTS, access=[rule])
    s = open_session(Engine(policy, Services()), "198.51.100.7")
    assert entry(s.mail("<x@sender.example>", [], "", "")) == "continue"
    decision = s.rcpt("<someone@elsewhere.example>", [], "")
    assert (entry(decision), decision.check) == ("relay_denied", "relay")


# --- the command line ---------------------------------------------------------------------

@pytest.mark.parametrize("strict, status, kind, count", [
    (False, 0, "warning", "0 error(s), 1 warning(s)"),
    (True, 1, "error", "1 error(s), 0 warning(s)"),
])
def test_check_prints_findings_and_exits(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         strict: bool, status: int, kind: str, count: str) -> None:
    rules = tmp_path / "rules"
    load(rules, ["dnsbl_threshold = 0"])
    assert cli.main(["check", "--rules", str(rules), *(["--strict"] if strict else [])]) == status
    out, err = capsys.readouterr()
    assert out == "\n".join(load_dir(rules).summary()) + "\n"
    assert err.splitlines() == [
        f"{rules}/policy.conf:1: {kind}: dnsbl_threshold = 0: a score of 0 reaches it, so a "
        "listing in any zone refuses, monitor zones and weight=0 ones too; write 1 (one listing "
        "refuses) or more", count]


def test_check_without_findings_prints_the_summary_alone(capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    assert cli.main(["check", "--rules", str(FIXTURE_RULES), "--strict"]) == 0
    out, err = capsys.readouterr()
    assert (out, err) == ("\n".join(load_dir(FIXTURE_RULES).summary()) + "\n", "")


@pytest.mark.parametrize("address, warned", [
    ("inet:9187", False), ("inet:9187@127.0.0.1", False), ("inet6:9187", False),
    ("inet:9187@localhost", False), ("inet:9187@0.0.0.0", True),
    ("inet6:9187@[2001:db8::1]", True),
])
def test_metrics_off_loopback(tmp_path: Path, address: str, warned: bool) -> None:
    expected = [f"DIR/policy.conf:1: warning: metrics = {listen.parse(address).spec} answers every "
                "host that reaches it, with counts of your mail by rule and reply; serve them "
                "on loopback (inet:PORT) unless a firewall keeps others out"]
    assert messages(tmp_path, [f"metrics = {address}"]) == (expected if warned else [])


def test_metrics_without_prometheus_client_is_an_error(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    real = lint.importlib.util.find_spec
    monkeypatch.setattr(lint.importlib.util, "find_spec",
                        lambda name: None if name == "prometheus_client" else real(name))
    [finding] = lint.check(load(tmp_path, ["metrics = inet:9187"]))
    assert finding.fatal and finding.where == f"{tmp_path}/policy.conf:1"
    assert "metrics need the Python package prometheus_client" in finding.message


@pytest.mark.parametrize("conf, line", [
    (["greylist = yes", "greylist_delay = 1h", "greylist_retry_window = 1h"], 3),
    (["greylist = yes", "greylist_delay = 3d"], 2),  # the window is the default, 2d
])
def test_a_greylist_window_no_retry_can_pass(tmp_path: Path, conf: list[str], line: int) -> None:
    [finding] = lint.check(load(tmp_path, conf))
    assert finding.fatal and finding.where == f"{tmp_path}/policy.conf:{line}"
    assert "no greylisted sender ever passes" in finding.message


def test_a_greylist_window_after_the_delay_is_fine(tmp_path: Path) -> None:
    assert lint.check(load(tmp_path, ["greylist = yes", "greylist_delay = 1h",
                                      "greylist_retry_window = 2h"])) == []
