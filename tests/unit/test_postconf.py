"""`policy-milter check --postfix`: reading main.cf and master.cf as Postfix does, telling
whether smtpd reaches the milter, and every finding with its edge forms (from files; the
real postconf runs in tests/e2e/test_postfix_check.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from policy_milter import cli, postconf
from policy_milter.postconf import milter_endpoint, postfix_endpoint
from policy_milter.rules.policy import Policy
from policy_milter.rules.policy import load as load_dir
from tests.conftest import FIXTURE_RULES, REPO, copy_rules
from tests.unit.test_contrib_kit import UNIT, directives, socket_of
from tests.unit.test_rules import SHIPPED_RULES

CONTRIB = REPO / "contrib" / "postfix"
RUN_SOCKET = "unix:/run/policy-milter/milter.sock"  # outside Postfix's chroot
SOCKET = "inet:8894@127.0.0.1"
MASTER = ["smtp inet n - n - - smtpd", "  -o milter_macro_daemon_name=smtpd",
          "submission inet n - n - - smtpd -o milter_macro_daemon_name=submission"]
# What contrib's main.cf sets so that nothing is flagged, with a TCP socket.
QUIET = ["smtpd_milters = inet:127.0.0.1:8894", "smtpd_reject_unlisted_recipient = no",
         "smtpd_relay_restrictions = check_client_access static:OK, reject_unauth_destination",
         "message_size_limit = 51200000"]


@pytest.fixture(scope="module")
def fixture_rules() -> Policy:
    return load_dir(FIXTURE_RULES)


def files(tmp_path: Path, main: list[str] | None, master: list[str] | None) -> list[str]:
    paths = []
    for name, lines in (("main.cf", main), ("master.cf", master)):
        if lines is not None:
            (tmp_path / name).write_text("".join(f"{line}\n" for line in lines))
            paths.append(str(tmp_path / name))
    return paths


def found(tmp_path: Path, policy: Policy, main: list[str] | None,
          master: list[str] | None = MASTER, socket: str = SOCKET) -> list[str]:
    """The findings as `check` prints them, the directory written as DIR."""
    return [f.line(strict=False).replace(f"{tmp_path}/", "DIR/")
            for f in postconf.check(policy, socket, files(tmp_path, main, master), None)]


# --- reading ------------------------------------------------------------------------------

def test_logical_lines_are_postfixs() -> None:
    text = ("# comment\nname = a,\n  b # not a comment\n   # an indented comment\n\n"
            "\tc\nother=1\n")
    assert [(line.number, line.text) for line in postconf.logical_lines(text, "f")] == [
        (2, "name = a, b # not a comment c"), (7, "other=1")]


@pytest.mark.parametrize("text, commas, expected", [
    ("smtpd -o {smtpd_milters={ inet:h:1, default_action=accept }} -o x=",
     False, ["smtpd", "-o", "{smtpd_milters={ inet:h:1, default_action=accept }}", "-o", "x="]),
    ("inet:a:1, { unix:/b, command_timeout=5s },inet:c:2", True,
     ["inet:a:1", "{ unix:/b, command_timeout=5s }", "inet:c:2"]),
    ("check_client_access static:OK, reject_unauth_destination", True,
     ["check_client_access", "static:OK", "reject_unauth_destination"]),
    ("", True, []),
])
def test_tokens(text: str, commas: bool, expected: list[str]) -> None:
    assert postconf.tokens(text, commas) == expected


def test_master_cf_options_in_every_form(tmp_path: Path) -> None:
    config = postconf.read_files(files(tmp_path, None, [
        "smtp inet n - y - - smtpd -o a=1", "  -o { b = two words }",
        "  -o {c={ x, y }} -o d=", "pickup unix n - - 60 1 pickup"]))
    smtp, pickup = config.services
    assert (smtp.name, smtp.chroot, smtp.command, pickup.command) == ("smtp", "y", "smtpd", "pickup")
    assert {n: v.text for n, v in smtp.options.items()} == {
        "a": "1", "b": "two words", "c": "{ x, y }", "d": ""}
    assert {v.where for v in smtp.options.values()} == {f"{tmp_path}/master.cf:1"}


def test_parameters_expand_and_the_last_one_counts(tmp_path: Path) -> None:
    config = postconf.read_files(files(tmp_path, [
        "mine = inet:127.0.0.1:8894", "smtpd_milters = unix:/old", "smtpd_milters = $mine, ${mine}",
        "loop = $loop", "unknown = $nothing_known"], None))
    assert config.get("smtpd_milters").text == "inet:127.0.0.1:8894, inet:127.0.0.1:8894"
    assert config.get("smtpd_milters").where == f"{tmp_path}/main.cf:3"
    assert config.get("loop").text == "$loop"  # a loop stops, unexpanded
    assert config.get("unknown").text == "$nothing_known"
    assert config.get("queue_directory") == postconf.Value("/var/spool/postfix",
                                                           f"{tmp_path}/main.cf", default=True)


@pytest.mark.parametrize("main, master, error", [
    (["a = 1", "this is not a parameter"], None, "main.cf:2: not a main.cf line (name = value)"),
    (None, ["smtp inet n - n - smtpd"], "master.cf:1: not a master.cf service line"),
])
def test_unreadable_files_say_where(tmp_path: Path, main: list[str] | None,
                                    master: list[str] | None, error: str) -> None:
    with pytest.raises(postconf.PostfixError) as info:
        postconf.read_files(files(tmp_path, main, master))
    assert str(info.value).startswith(f"{tmp_path}/{error}")


# --- sockets ------------------------------------------------------------------------------

@pytest.mark.parametrize("address, chroot, socket, reaches", [
    ("inet:127.0.0.1:8894", False, "inet:8894@127.0.0.1", True),
    ("inet:localhost:8894", False, "inet:8894@127.0.0.1", True),
    ("inet:LOCALHOST:8894", True, "inet6:8894@[::1]", True),
    ("inet:[::1]:8894", False, "inet6:8894@[::1]", True),
    ("inet:[::1]:8894", False, "inet6:8894@::1", True),
    ("inet:[::ffff:127.0.0.1]:8894", False, "inet:8894@127.0.0.1", True),
    ("inet:127.0.0.1:8894", False, "inet:8894@0.0.0.0", True),
    ("inet:127.0.0.1:8895", False, "inet:8894@127.0.0.1", False),
    ("inet:127.0.0.2:8894", False, "inet:8894@127.0.0.1", False),
    ("inet:[::1]:8894", False, "inet:8894@127.0.0.1", False),
    ("inet:mx.example:8894", False, "inet:8894@127.0.0.1", False),
    ("inet:127.0.0.1:8894", False, "unix:/run/policy-milter/milter.sock", False),
    ("unix:/run/policy-milter/milter.sock", False, "unix:/run/policy-milter/milter.sock", True),
    ("unix:/run//policy-milter/./milter.sock", False, "unix:/run/policy-milter/milter.sock", True),
    ("local:/run/policy-milter/milter.sock", False, "unix:/run/policy-milter/milter.sock", True),
    ("unix:/run/policy-milter/milter.sock", True, "unix:/run/policy-milter/milter.sock", False),
    ("unix:policy-milter/m.sock", False, "unix:/var/spool/postfix/policy-milter/m.sock", True),
    ("unix:policy-milter/m.sock", True, "unix:/var/spool/postfix/policy-milter/m.sock", True),
    ("unix:/policy-milter/m.sock", True, "unix:/var/spool/postfix/policy-milter/m.sock", True),
    ("unix:/policy-milter/m.sock", False, "unix:/var/spool/postfix/policy-milter/m.sock", False),
    ("unix:/var/spool/postfix/policy-milter/m.sock", True,
     "unix:/var/spool/postfix/policy-milter/m.sock", False),
])
def test_reaching_the_milter(address: str, chroot: bool, socket: str, reaches: bool) -> None:
    end = postfix_endpoint(address, "/var/spool/postfix", chroot)
    assert end is not None and end.reaches(milter_endpoint(socket)) is reaches


@pytest.mark.parametrize("address", ["inet:8894", "inet:host:port", "unix:", "tcp:1.2.3.4:5", ""])
def test_not_a_milter_address(address: str) -> None:
    assert postfix_endpoint(address, "/var/spool/postfix", False) is None


@pytest.mark.parametrize("socket, form", [
    ("inet:8894@127.0.0.1", "inet:127.0.0.1:8894"),
    ("inet:8894@0.0.0.0", "inet:127.0.0.1:8894"),
    ("inet6:8894@[::1]", "inet:[::1]:8894"),
    ("inet6:8894@[::]", "inet:[::1]:8894"),
    ("unix:/run/policy-milter/milter.sock", "unix:/run/policy-milter/milter.sock"),
    ("unix:/var/spool/postfix/policy-milter/milter.sock", "unix:policy-milter/milter.sock"),
])
def test_how_postfix_names_the_socket(socket: str, form: str) -> None:
    assert postconf.postfix_form(milter_endpoint(socket), "/var/spool/postfix") == form
    end = postfix_endpoint(form, "/var/spool/postfix", False)
    assert end is not None and end.reaches(milter_endpoint(socket))


# --- the shipped files ----------------------------------------------------------------------

@pytest.mark.parametrize("rules", [SHIPPED_RULES, FIXTURE_RULES])
def test_contrib_agrees_with_the_units_socket(rules: Path, capsys: pytest.CaptureFixture[str]
                                              ) -> None:
    socket = socket_of(directives(UNIT))
    assert socket == "unix:/var/spool/postfix/policy-milter/milter.sock"
    status = cli.main(["check", "--rules", str(rules), "--strict", "--postfix",
                       str(CONTRIB / "main.cf"), str(CONTRIB / "master.cf"),
                       "--socket", socket])
    out, err = capsys.readouterr()
    assert (status, err) == (0, "")
    assert out == "\n".join(load_dir(rules).summary()) + "\n"


def test_contrib_with_another_socket_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    status = cli.main(["check", "--rules", str(SHIPPED_RULES), "--postfix",
                       str(CONTRIB / "main.cf"), str(CONTRIB / "master.cf")])
    err = capsys.readouterr().err.splitlines()
    line = next(n for n, text in enumerate((CONTRIB / "main.cf").read_text().split("\n"), 1)
                if text.startswith("smtpd_milters"))
    assert status == 1
    assert err == [
        f"{CONTRIB}/main.cf:{line}: error: smtpd_milters = unix:policy-milter/milter.sock does "
        "not reach the milter's socket: every message gets milter_default_action (tempfailed, "
        "or passed unchecked under accept); write smtpd_milters = inet:127.0.0.1:8894 (the "
        "milter's --socket inet:8894@127.0.0.1)",
        "1 error(s), 0 warning(s)"]


def test_contrib_unchrooted_reaches_the_same_socket(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """smtpd_milters' relative path is in the queue directory whether smtpd is chrooted
    there or not: an admin may set the chroot column to n and change nothing else."""
    master = tmp_path / "master.cf"
    text, chrooted = re.subn(r"(?m)^(\S+\s+inet\s+\S+\s+\S+\s+)y\b", r"\1n",
                             (CONTRIB / "master.cf").read_text())
    assert chrooted == 2  # smtp and submission
    master.write_text(text)
    assert cli.main(["check", "--rules", str(SHIPPED_RULES), "--strict", "--postfix",
                     str(CONTRIB / "main.cf"), str(master),
                     "--socket", socket_of(directives(UNIT))]) == 0
    assert capsys.readouterr().err == ""


# --- smtpd_milters --------------------------------------------------------------------------

def unreached(where: str, said: str, label: str = "", write: str = "inet:127.0.0.1:8894",
              socket: str = SOCKET) -> str:
    return (f"{where}: error: {label}{said} does not reach the milter's socket: every message "
            "gets milter_default_action (tempfailed, or passed unchecked under accept); write "
            f"smtpd_milters = {write} (the milter's --socket {socket})")


@pytest.mark.parametrize("milters", [
    "inet:127.0.0.1:8894", "inet:localhost:8894", "inet:[::ffff:127.0.0.1]:8894",
    "inet:127.0.0.1:9999, inet:127.0.0.1:8894",
    "{ inet:127.0.0.1:9999, default_action=accept }, { inet:localhost:8894 }",
    "{inet:127.0.0.1:8894,connect_timeout=10s}",
])
def test_smtpd_milters_reaching_the_milter(tmp_path: Path, fixture_rules: Policy,
                                           milters: str) -> None:
    main = [f"smtpd_milters = {milters}", *QUIET[1:]]
    assert found(tmp_path, fixture_rules, main) == []


def test_smtpd_milters_elsewhere_is_one_error_for_every_service(tmp_path: Path,
                                                                fixture_rules: Policy) -> None:
    main = [*QUIET[1:], "smtpd_milters = inet:127.0.0.1:8895, { unix:/run/other.sock }"]
    assert found(tmp_path, fixture_rules, main) == [
        unreached("DIR/main.cf:4", "smtpd_milters = inet:127.0.0.1:8895, { unix:/run/other.sock }")]


def test_no_smtpd_milters_at_all(tmp_path: Path, fixture_rules: Policy) -> None:
    write = "write smtpd_milters = inet:127.0.0.1:8894 (the milter's --socket inet:8894@127.0.0.1)"
    assert found(tmp_path, fixture_rules, QUIET[1:]) == [
        f"DIR/main.cf: error: smtpd_milters is empty (Postfix default): every message passes "
        f"unchecked; {write}"]
    assert found(tmp_path, fixture_rules, ["smtpd_milters =", *QUIET[1:]]) == [
        f"DIR/main.cf:1: error: smtpd_milters is empty: every message passes unchecked; {write}"]


def test_overrides_in_master_cf(tmp_path: Path, fixture_rules: Policy) -> None:
    master = ["smtp inet n - n - - smtpd -o { smtpd_milters = inet:10.0.0.1:8894 }",
              "submission inet n - n - - smtpd -o smtpd_milters=inet:localhost:8894",
              "127.0.0.1:10025 inet n - n - - smtpd -o smtpd_milters= -o content_filter=",
              "pickup unix n - n 60 1 pickup"]
    assert found(tmp_path, fixture_rules, QUIET[1:], master) == [
        unreached("DIR/master.cf:1", "smtpd_milters = inet:10.0.0.1:8894", "service smtp: "),
        "DIR/master.cf:3: warning: service 127.0.0.1:10025: -o smtpd_milters= turns the milter "
        "off: mail this service receives passes unchecked; remove the override, unless the "
        "service only takes mail back from a content filter",
    ]


@pytest.mark.parametrize("milters, socket", [
    ("inet:mail.example.net:8894", SOCKET),
    ("inet:192.0.2.25:8894", "inet:8894@0.0.0.0"),
])
def test_hosts_check_cannot_place(tmp_path: Path, fixture_rules: Policy, milters: str,
                                  socket: str) -> None:
    assert found(tmp_path, fixture_rules, [f"smtpd_milters = {milters}", *QUIET[1:]],
                 socket=socket) == [
        f"DIR/main.cf:1: warning: smtpd_milters = {milters}: check cannot tell whether "
        f"{milters} reaches the milter; write smtpd_milters = inet:127.0.0.1:8894 (the "
        f"milter's --socket {socket})"]


@pytest.mark.parametrize("chroot, expected", [("y", True), ("-", False), ("n", False)])
def test_a_chrooted_smtpd_and_a_socket_outside_it(tmp_path: Path, fixture_rules: Policy,
                                                  chroot: str, expected: bool) -> None:
    main = [f"smtpd_milters = {RUN_SOCKET}", *QUIET[1:]]
    master = [f"smtp inet n - {chroot} - - smtpd"]
    assert found(tmp_path, fixture_rules, main, master, socket=RUN_SOCKET) == ([
        "DIR/master.cf:1: error: service smtp runs chrooted in /var/spool/postfix (master.cf "
        f"chroot column), where {RUN_SOCKET} is "
        "/var/spool/postfix/run/policy-milter/milter.sock, not the milter's socket: every "
        "message it receives fails or passes unchecked; set its chroot column to n, or run the "
        "milter with a socket in the queue directory (--socket "
        "unix:/var/spool/postfix/policy-milter/milter.sock, smtpd_milters = "
        "unix:policy-milter/milter.sock)"] if expected else [])


def test_a_chrooted_smtpd_and_a_socket_inside_it(tmp_path: Path, fixture_rules: Policy) -> None:
    for milters in ("unix:policy-milter/milter.sock", "unix:/policy-milter/milter.sock"):
        main = [f"smtpd_milters = {milters}", "queue_directory = /var/spool/postfix", *QUIET[1:]]
        assert found(tmp_path, fixture_rules, main, ["smtp inet n - y - - smtpd"],
                     socket="unix:/var/spool/postfix/policy-milter/milter.sock") == []


def test_without_master_cf_main_cf_is_judged(tmp_path: Path, fixture_rules: Policy) -> None:
    assert found(tmp_path, fixture_rules, QUIET, None) == []
    assert [f.split(": ")[1] for f in found(tmp_path, fixture_rules, QUIET[1:], None)] == ["error"]


# --- when the milter is away or slow ----------------------------------------------------------

@pytest.mark.parametrize("main, master, expected", [
    (["milter_default_action = accept"], MASTER,
     "DIR/main.cf:5: warning: milter_default_action = accept: while the milter is away or slow, "
     "mail passes unchecked; write tempfail (Postfix's default): clients retry"),
    (["milter_default_action = tempfail"], ["smtp inet n - n - - smtpd -o "
                                            "milter_default_action=accept"],
     "DIR/master.cf:1: warning: service smtp: milter_default_action = accept: while the milter "
     "is away or slow, mail passes unchecked; write tempfail (Postfix's default): clients retry"),
    (["smtpd_milters = { inet:127.0.0.1:8894, default_action=accept }"], MASTER,
     "DIR/main.cf:5: warning: default_action=accept in smtpd_milters: while the milter is away "
     "or slow, mail passes unchecked; write tempfail (Postfix's default): clients retry"),
])
def test_milter_default_action_accept(tmp_path: Path, fixture_rules: Policy, main: list[str],
                                      master: list[str], expected: str) -> None:
    assert found(tmp_path, fixture_rules, [*QUIET, *main], master) == [expected]


def timed_out(where: str, said: str, budget: str, at: str) -> str:
    return (f"{where}: warning: {said} is not above the rules' dns_budget = {budget} s ({at}): "
            "Postfix gives up on the milter while it waits for DNS, and milter_default_action "
            "answers; write 30s (Postfix's default)")


@pytest.mark.parametrize("timeout, budget, flagged", [
    ("10", "8", False),  # no unit: seconds
    ("8", "8", True),
    ("8s", "8", True),
    ("5s", "8", True),
    ("1m", "8", False),
    ("1M", "25", False),
    ("20s", "20", True),
    ("21s", "20", False),
    ("1h", "25", False),
])
def test_milter_command_timeout(tmp_path: Path, timeout: str, budget: str, flagged: bool) -> None:
    rules = load_dir(copy_rules(tmp_path / "rules", dns_budget=budget))
    got = found(tmp_path, rules, [*QUIET, f"milter_command_timeout = {timeout}"])
    assert got == ([timed_out("DIR/main.cf:5", f"milter_command_timeout = {timeout}", budget,
                              "DIR/rules/policy.conf:22")] if flagged else [])


def test_milter_command_timeout_of_the_milter_itself(tmp_path: Path, fixture_rules: Policy) -> None:
    main = ["smtpd_milters = { inet:127.0.0.1:8894, command_timeout=5s }, "
            "{ inet:127.0.0.1:9999, command_timeout=1s }", "milter_command_timeout = 60s",
            *QUIET[1:]]
    assert found(tmp_path, fixture_rules, main) == [
        timed_out("DIR/main.cf:1", "command_timeout=5s in smtpd_milters", "8", "the default")]
    assert found(tmp_path, fixture_rules, [*QUIET, "milter_command_timeout = soon"]) == [
        "DIR/main.cf:5: warning: milter_command_timeout = soon is not a Postfix time (like 30s)"]


# --- limits ---------------------------------------------------------------------------------

def under(where: str, name: str, value: str, what: str, reply: str, largest: int) -> str:
    return (f"{where}: warning: {name} = {value} is not above the rules' {what}: Postfix "
            f"answers first ({reply}), and the milter's reply never reaches the client; write a "
            f"{name} above {largest}")


SIZE_REPLY = '"552 5.3.4 Message size exceeds fixed limit"'


def test_message_size_limit_under_the_rules(tmp_path: Path, fixture_rules: Policy) -> None:
    policy_conf = f"{FIXTURE_RULES}/policy.conf:10"
    assert found(tmp_path, fixture_rules, QUIET[:-1]) == [
        under("DIR/main.cf", "message_size_limit", "10240000 (Postfix default)",
              f"max_message_size = 10M ({policy_conf})", SIZE_REPLY, 10485760)]
    assert found(tmp_path, fixture_rules, [*QUIET[:-1], "message_size_limit = 10485760"]) == [
        under("DIR/main.cf:4", "message_size_limit", "10485760",
              f"max_message_size = 10M ({policy_conf})", SIZE_REPLY, 10485760)]
    assert found(tmp_path, fixture_rules, [*QUIET[:-1], "message_size_limit = 10485761"]) == []
    assert found(tmp_path, fixture_rules, [*QUIET[:-1], "message_size_limit = 0"]) == []


def test_size_limits_of_domains_and_of_this_services_listener(tmp_path: Path) -> None:
    rules = copy_rules(tmp_path / "rules", max_message_size="0")
    (rules / "listeners").write_text("submission max_size=40M\n")
    with (rules / "domains").open("a") as domains:
        domains.write("big.example remote max_size=30M\n")
    policy = load_dir(rules)
    main = [*QUIET[:-1], "message_size_limit = 35000000"]
    smtp = ["smtp inet n - n - - smtpd -o milter_macro_daemon_name=smtpd"]
    assert found(tmp_path, policy, main, smtp) == []
    submission = ["submission inet n - n - - smtpd -o milter_macro_daemon_name=submission"]
    assert found(tmp_path, policy, main, submission) == [
        under("DIR/main.cf:4", "message_size_limit", "35000000",
              "max_size=40M (DIR/rules/listeners:1)", SIZE_REPLY, 41943040)]
    assert found(tmp_path, policy, [*QUIET[:-1], "message_size_limit = 30000000"], smtp) == [
        under("DIR/main.cf:4", "message_size_limit", "30000000",
              "max_size=30M (DIR/rules/domains:10)", SIZE_REPLY, 31457280)]


def test_limits_above_the_servers_are_not_the_ceiling(tmp_path: Path) -> None:
    """A domain's limit above the server's never applies (lint says so): Postfix's limit
    need only be above the server's, not above the domain's."""
    rules = copy_rules(tmp_path / "rules", max_message_size="10M", max_recipients="5")
    with (rules / "domains").open("a") as domains:
        domains.write("big.example remote max_size=30M max_recipients=50\n")
    policy = load_dir(rules)
    main = [*QUIET[:-1], "message_size_limit = 20000000", "smtpd_recipient_limit = 6"]
    assert found(tmp_path, policy, main) == []


def test_smtpd_recipient_limit_under_the_rules(tmp_path: Path, fixture_rules: Policy) -> None:
    assert found(tmp_path, fixture_rules, [*QUIET, "smtpd_recipient_limit = 6"]) == []
    assert found(tmp_path, fixture_rules, [*QUIET, "smtpd_recipient_limit = 5"]) == [
        under("DIR/main.cf:5", "smtpd_recipient_limit", "5",
              f"max_recipients = 5 ({FIXTURE_RULES}/policy.conf:9)",
              '"452 4.5.3 Error: too many recipients"', 5)]


# --- what Postfix answers before the milter ---------------------------------------------------

def pre_empts(where: str, said: str, why: str) -> str:
    return f"{where}: warning: {said} answers before the milter and pre-empts {why}"


RELAY_WHY = ("the milter's relay check (relay_denied): put check_client_access static:OK "
             "before it, as contrib/postfix/main.cf does (safe with milter_default_action = "
             "tempfail)")


def test_postfixs_default_relay_restrictions(tmp_path: Path, fixture_rules: Policy) -> None:
    main = [q for q in QUIET if not q.startswith("smtpd_relay")]
    assert found(tmp_path, fixture_rules, main) == [pre_empts(
        "DIR/main.cf", "smtpd_relay_restrictions: defer_unauth_destination (Postfix default)",
        RELAY_WHY)]


@pytest.mark.parametrize("relay, flagged", [
    ("check_client_access static:OK, reject_unauth_destination", []),
    ("check_client_access STATIC:ok reject_unauth_destination", []),
    ("permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination",
     ["reject_unauth_destination"]),
    ("check_sender_access static:OK, reject_unauth_destination", ["reject_unauth_destination"]),
    ("check_client_access hash:/etc/postfix/clients, defer_unauth_destination",
     ["check_client_access hash:/etc/postfix/clients", "defer_unauth_destination"]),
])
def test_relay_restrictions(tmp_path: Path, fixture_rules: Policy, relay: str,
                            flagged: list[str]) -> None:
    got = found(tmp_path, fixture_rules, [*QUIET[:2], f"smtpd_relay_restrictions = {relay}",
                                          *QUIET[3:]])
    assert [line.split("smtpd_relay_restrictions: ")[1].split(" answers")[0] for line in got] \
        == flagged
    assert all(line.startswith("DIR/main.cf:3: warning: ") for line in got)


def test_recipient_restrictions_up_to_an_unconditional_permit(tmp_path: Path,
                                                              fixture_rules: Policy) -> None:
    main = [*QUIET, "smtpd_recipient_restrictions = permit_mynetworks, reject_unlisted_recipient,"
            " check_sender_access hash:/etc/postfix/senders, check_recipient_access static:OK,",
            "  reject_rbl_client zen.spamhaus.org=127.0.0.[2..11], reject_non_fqdn_recipient,",
            "  reject_unknown_client_hostname, reject_unknown_recipient_domain, permit,",
            "  reject_unauth_destination, reject_rbl_client bl.spamcop.net"]
    said = "DIR/main.cf:5", "smtpd_recipient_restrictions: "
    assert found(tmp_path, fixture_rules, main) == [
        pre_empts(said[0], f"{said[1]}reject_unlisted_recipient", "the milter's recipients "
                  "check (unknown_user_local, unknown_user_relay): remove it"),
        pre_empts(said[0], f"{said[1]}check_sender_access hash:/etc/postfix/senders",
                  "the milter's access rules, and no white entry of the rules can change its "
                  "answer: write its entries as access rules"),
        pre_empts(said[0], f"{said[1]}reject_rbl_client zen.spamhaus.org=127.0.0.[2..11]",
                  "the milter's dnsbl check, and no white entry, monitor zone or allow zone of "
                  "the rules can change its answer: remove it and list the zone in the dnsbl "
                  "table"),
        pre_empts(said[0], f"{said[1]}reject_non_fqdn_recipient", "the milter's answer to a "
                  "recipient without a domain (domain_required): remove it"),
        pre_empts(said[0], f"{said[1]}reject_unknown_client_hostname", "the milter's rdns "
                  "check, and no white entry of the rules can let a client past it: remove it "
                  "and set rdns in policy.conf"),
        pre_empts(said[0], f"{said[1]}reject_unknown_recipient_domain", "the milter's relay "
                  "and recipients checks (relay_denied, unknown_user_local): remove it"),
    ]


def test_restrictions_of_one_service(tmp_path: Path, fixture_rules: Policy) -> None:
    master = ["smtp inet n - n - - smtpd", "submission inet n - n - - smtpd",
              "  -o smtpd_client_restrictions=permit_sasl_authenticated,reject",
              "  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject_unauth_destination"]
    assert found(tmp_path, fixture_rules, QUIET, master) == [pre_empts(
        "DIR/master.cf:2", "service submission: smtpd_relay_restrictions: "
        "reject_unauth_destination", RELAY_WHY)]


@pytest.mark.parametrize("setting, require_helo, flagged", [
    ("smtpd_helo_required = yes", "yes", True),
    ("smtpd_helo_required = yes", "no", False),
    ("smtpd_helo_required = no", "yes", False),
])
def test_smtpd_helo_required(tmp_path: Path, setting: str, require_helo: str,
                             flagged: bool) -> None:
    rules = load_dir(copy_rules(tmp_path / "rules", require_helo=require_helo))
    assert found(tmp_path, rules, [*QUIET, setting]) == ([
        "DIR/main.cf:5: warning: smtpd_helo_required = yes: Postfix answers MAIL FROM without a "
        "greeting itself, before the milter's helo_required (require_helo = yes); write "
        "smtpd_helo_required = no"] if flagged else [])


def test_smtpd_reject_unlisted_recipient(tmp_path: Path, fixture_rules: Policy) -> None:
    said = ("Postfix refuses the recipients its own maps do not list, before the milter's "
            "recipients check (unknown_user_local, unknown_user_relay); write "
            "smtpd_reject_unlisted_recipient = no")
    main = [q for q in QUIET if "unlisted" not in q]
    assert found(tmp_path, fixture_rules, main) == [
        f"DIR/main.cf: warning: smtpd_reject_unlisted_recipient = yes (Postfix default): {said}"]
    assert found(tmp_path, fixture_rules, [*main, "smtpd_reject_unlisted_recipient = YES"]) == [
        f"DIR/main.cf:4: warning: smtpd_reject_unlisted_recipient = yes: {said}"]


# --- the command line -------------------------------------------------------------------------

def test_warnings_exit_0_unless_strict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = files(tmp_path, [*QUIET, "milter_default_action = accept"], MASTER)
    args = ["check", "--rules", str(FIXTURE_RULES), "--postfix", *paths]
    assert cli.main(args) == 0
    warning = capsys.readouterr().err.splitlines()
    assert cli.main([*args, "--strict"]) == 1
    error = capsys.readouterr().err.splitlines()
    assert warning == [f"{tmp_path}/main.cf:5: warning: milter_default_action = accept: while "
                       "the milter is away or slow, mail passes unchecked; write tempfail "
                       "(Postfix's default): clients retry", "0 error(s), 1 warning(s)"]
    assert error == [warning[0].replace(": warning: ", ": error: "), "1 error(s), 0 warning(s)"]


@pytest.mark.parametrize("args, error", [
    (["--postfix", "/nonexistent/main.cf"], "policy-milter: /nonexistent/main.cf: cannot read"),
    (["--postfix", "{main}", "--postfix-config", "/etc/postfix"],
     "policy-milter: --postfix-config DIR is for postconf: give it no FILE"),
])
def test_unreadable_postfix_configuration_is_exit_2(tmp_path: Path, args: list[str], error: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    main = files(tmp_path, QUIET, None)[0]
    status = cli.main(["check", "--rules", str(FIXTURE_RULES),
                       *(a.format(main=main) for a in args)])
    assert status == 2
    assert capsys.readouterr().err.startswith(error)
