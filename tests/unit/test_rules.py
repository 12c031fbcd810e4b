"""Loading rule directories: the shipped one, every error with its place, and what loads."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

from policy_milter import catalogue
from policy_milter.addresses import Address, client_ip, parse_path
from policy_milter.decision import Action, Decision
from policy_milter.patterns import contains
from policy_milter.rules import policy
from policy_milter.rules.policy import RULE_FILES, SKIPPABLE, TABLE_FILES, Policy
from policy_milter.rules.rulelist import Rule, RuleList
from policy_milter.rules.settings import NAMES as SETTING_NAMES
from policy_milter.rules.source import RuleErrors
from policy_milter.rules.tables import DomainKind, Limits
from policy_milter.stages import Stage

SHIPPED_RULES = Path(__file__).parents[2] / "rules"


# --- helpers -------------------------------------------------------------------------

def write(path: Path, lines: Iterable[str] | bytes) -> Path:
    """A rule file; ``lines`` are written one a line (bytes: exactly as given)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(lines, bytes):
        path.write_bytes(lines)
    else:
        path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return path


def rules_dir(root: Path, conf: Iterable[str] = (), **files: Iterable[str] | bytes) -> Path:
    """``root/policy.conf`` holds ``conf``, then ``NAME = NAME`` for each file given."""
    write(root / "policy.conf", [*conf, *(f"{name} = {name}" for name in files)])
    for name, lines in files.items():
        write(root / name, lines)
    return root


def load(root: Path, conf: Iterable[str] = (), **files: Iterable[str] | bytes) -> Policy:
    return policy.load(rules_dir(root, conf, **files))


def errors(root: Path, conf: Iterable[str] = (), **files: Iterable[str] | bytes) -> list[str]:
    with pytest.raises(RuleErrors) as info:
        load(root, conf, **files)
    assert str(info.value) == "\n".join(info.value.errors)
    return info.value.errors


def rule_list(p: Policy, name: str) -> RuleList:
    (found,) = [rl for rl in p.rule_lists if rl.name == name]
    return found


def addr(text: str) -> Address:
    return parse_path(text, null_ok=True)


def values(client: str | None = None, client_name: str | None = None, helo: str | None = None,
           sender: str | None = None, recipient: str | None = None,
           listener: str | None = None, authenticated: bool = False) -> dict[str, object]:
    """What the engine's Context.rule_values() passes to a rule list."""
    return {"client": client_ip(client), "client_name": client_name, "helo": helo,
            "sender": addr(sender) if sender is not None else None,
            "recipient": addr(recipient) if recipient is not None else None,
            "listener": listener, "authenticated": authenticated}


def line_of(rule: Rule | None) -> int | None:
    return None if rule is None else int(rule.where.rpartition(":")[2])


def decision(tmp_path: Path, rule: str, file: str = "access") -> Decision:
    p = load(tmp_path, **{file: [rule]})
    rl = rule_list(p, file)
    (only,) = rl.mail.rules + rl.rcpt.rules + rl.eom.rules
    return only.decision


# --- the shipped rules ---------------------------------------------------------------

def test_shipped_rules_load() -> None:
    p = policy.load(SHIPPED_RULES)
    for name in (*TABLE_FILES, *RULE_FILES):
        assert str(SHIPPED_RULES / name) in p.files, f"policy.conf does not name {name}"
    assert [rl.name for rl in p.rule_lists] == list(RULE_FILES)
    assert p.settings.monitor is False


# --- errors: policy.conf -------------------------------------------------------------

@pytest.mark.parametrize("setting, message", [
    ("monitr = yes", "unknown setting 'monitr'; did you mean 'monitor'?"),
    ("access_list = access", "unknown setting 'access_list'; did you mean 'access'?"),
    ("colour = blue", "unknown setting 'colour'"),
    ("monitor", "expected 'name = value' or 'include FILE'"),
    ("max-recipients = 5", "expected 'name = value' or 'include FILE'"),
    ("= 5", "expected 'name = value' or 'include FILE'"),
    ("include", "include takes one file name or pattern"),
    # bool
    ("monitor = maybe", "monitor: 'maybe' is not yes or no"),
    ("require_helo = 2", "require_helo: '2' is not yes or no"),
    ("check_helo_syntax =", "check_helo_syntax: '' is not yes or no"),
    # size
    ("max_message_size = 10X", "max_message_size: '10X' is not a size "
                               "(a number with an optional K, M or G)"),
    ("max_message_size = 1.5M", "max_message_size: '1.5M' is not a size "
                                "(a number with an optional K, M or G)"),
    ("max_message_size = 25MB", "max_message_size: '25MB' is not a size "
                                "(a number with an optional K, M or G)"),
    # count
    ("max_recipients = -1", "max_recipients: '-1' is not a whole number"),
    ("max_recipients = ten", "max_recipients: 'ten' is not a whole number"),
    # network list
    ("relay_networks = 127.0.0.0/8, 10.0.0.0/33",
     "relay_networks: '10.0.0.0/33' is not an IP address or CIDR block"),
    ("relay_networks = localhost",
     "relay_networks: 'localhost' is not an IP address or CIDR block"),
    # choice
    ("failure_action = bounce", "failure_action: 'bounce' is not one of: tempfail, accept"),
    # the others
    ("recipient_delimiter = +x", "recipient_delimiter: '+x' is not a set of punctuation "
                                 "characters (like + or +-)"),
    ("recipient_delimiter = @", "recipient_delimiter: '@' is not a set of punctuation "
                                "characters (like + or +-)"),
    ("unscannable_action = tempfail", "unscannable_action: 'tempfail' is not 'accept', 'reject' "
                                      "or 'reject ENTRY'"),
    ("unscannable_action = reject content_rejectd", "unscannable_action: unknown catalogue "
                                                   "entry 'content_rejectd'; did you mean "
                                                   "'content_rejected'?"),
    ("unscannable_action = reject scanner_tempfail",
     "unscannable_action: 'scanner_tempfail' is not a 5xx reply the milter can send at end "
     "of message (a message too big to scan stays too big: never a 4xx)"),
    ("unscannable_action = reject relay_denied",
     "unscannable_action: 'relay_denied' is not a 5xx reply the milter can send at end "
     "of message (a message too big to scan stays too big: never a 4xx)"),
    ("spam_failure_action = maybe",
     "spam_failure_action: 'maybe' is not one of: (empty), tempfail, accept"),
    ("list_patterns = lists.example.com", "list_patterns: 'lists.example.com' is not an address "
                                          "pattern (use user@domain, @domain, user@ or <>)"),
])
def test_setting_errors(tmp_path: Path, setting: str, message: str) -> None:
    conf = tmp_path / "policy.conf"
    assert errors(tmp_path, ["# settings", "", setting]) == [f"{conf}:3: {message}"]


def test_duplicate_setting_names_the_first_place(tmp_path: Path) -> None:
    conf = tmp_path / "policy.conf"
    write(tmp_path / "conf.d" / "limits.conf", ["# limits", "max_recipients = 50"])
    assert errors(tmp_path, ["monitor = no", "max_recipients = 10", "", "monitor = yes",
                             "include conf.d/*.conf"]) == [
        f"{conf}:4: 'monitor' is already set at {conf}:1",
        f"{tmp_path / 'conf.d' / 'limits.conf'}:2: 'max_recipients' is already set at {conf}:2",
    ]


def test_include_of_a_missing_file(tmp_path: Path) -> None:
    conf = tmp_path / "policy.conf"
    assert errors(tmp_path, ["monitor = no", "include conf.d/extra.conf"]) == [
        f"{conf}:2: include: no such file {tmp_path / 'conf.d' / 'extra.conf'}"]


def test_include_loop(tmp_path: Path) -> None:
    conf = tmp_path / "policy.conf"
    other = write(tmp_path / "other.conf", ["# more", "include policy.conf", "include other.conf",
                                            "monitor = yes"])
    assert errors(tmp_path, ["include other.conf"]) == [
        f"{other}:2: include loop: {conf}",
        f"{other}:3: include loop: {other}",
    ]


def test_missing_policy_conf(tmp_path: Path) -> None:
    with pytest.raises(RuleErrors) as info:
        policy.load(tmp_path)
    assert info.value.errors == [f"{tmp_path / 'policy.conf'}: no such file"]


def test_missing_table_file(tmp_path: Path) -> None:
    write(tmp_path / "policy.conf", ["domains = domians"])
    with pytest.raises(RuleErrors) as info:
        policy.load(tmp_path)
    assert info.value.errors == [
        f"{tmp_path / 'policy.conf'}:1: cannot read {tmp_path / 'domians'}: "
        "No such file or directory"]


# --- errors: lexical -----------------------------------------------------------------

def test_not_utf8_names_the_line_of_the_bad_byte(tmp_path: Path) -> None:
    access = tmp_path / "access"
    assert errors(tmp_path, access=b"# ok\nclient 192.0.2.1 reject\n# caf\xe9\nbad\n") == [
        f"{access}:3: not valid UTF-8"]


def test_not_utf8_policy_conf(tmp_path: Path) -> None:
    write(tmp_path / "policy.conf", b"monitor = no\n\n\xff = 1\n")
    with pytest.raises(RuleErrors) as info:
        policy.load(tmp_path)
    assert info.value.errors == [f"{tmp_path / 'policy.conf'}:3: not valid UTF-8"]


@pytest.mark.parametrize("file", ["access", "domains", "lists"])
def test_continuation_at_start_of_file(tmp_path: Path, file: str) -> None:
    assert errors(tmp_path, **{file: ["# a comment is not a line", "", "    alice@example.com"]}) \
        == [f"{tmp_path / file}:3: continuation line with nothing to continue"]


def test_continuation_at_start_of_policy_conf(tmp_path: Path) -> None:
    write(tmp_path / "policy.conf", ["\tmonitor = yes"])
    with pytest.raises(RuleErrors) as info:
        policy.load(tmp_path)
    assert info.value.errors == [
        f"{tmp_path / 'policy.conf'}:1: continuation line with nothing to continue"]


def test_line_numbers_count_only_line_feeds(tmp_path: Path) -> None:
    """Form feeds and Unicode separators neither end a line nor a comment."""
    access = tmp_path / "access"
    text = ("# page one\r\n\x0c\r\n# note\x0cclient 192.0.2.9 reject\n# sep\u2028x\n"
            "client 192.0.2.1 bogus\r\n")
    assert errors(tmp_path, access=text.encode()) == [
        f"{access}:5: unknown action 'bogus' (expected permit, reject, tempfail, deny, "
        "discard, quarantine or add_header)"]


def test_crlf_files_load(tmp_path: Path) -> None:
    p = load(tmp_path, access=b"# crlf\r\nclient 192.0.2.1 reject # why\r\n\r\n"
                              b"sender @example.com\r\n  reject\r\n")
    assert [(r.where, r.decision.entry) for r in rule_list(p, "access").mail.rules] == [
        (f"{tmp_path / 'access'}:2", catalogue.get("access_denied")),
        (f"{tmp_path / 'access'}:4", catalogue.get("access_denied")),
    ]


# --- errors: tables ------------------------------------------------------------------

KIND_LIST = "local, relay, list, remote"
LIMIT_WORDS = "limit_messages=, limit_recipients=, max_receive_size=, max_recipients=, max_size="

TABLE_ERRORS = [
    ("domains", ["example.com local", "example.org locl"],
     [(2, f"unknown domain kind 'locl' (expected one of: {KIND_LIST}); did you mean 'local'?")]),
    ("domains", ["example.org backup"],
     [(1, f"unknown domain kind 'backup' (expected one of: {KIND_LIST})")]),
    ("domains", ["example.com local", "example.org"],
     [(2, f"'example.org' needs a kind: {KIND_LIST}")]),
    ("domains", ["example.com local requireauth"],
     [(1, f"unknown word 'requireauth' (expected one of: {LIMIT_WORDS}, require_auth); "
          "did you mean 'require_auth'?")]),
    ("domains", ["example.com local max_sise=10M"],
     [(1, "unknown attribute 'max_sise'; did you mean 'max_size'?")]),
    ("domains", ["example.com local max_size"],
     [(1, f"unknown word 'max_size' (expected one of: {LIMIT_WORDS}, require_auth); "
          "did you mean 'max_size='?")]),
    ("domains", ["example.com local max_size=1T"],
     [(1, "max_size: '1T' is not a size (a number with an optional K, M or G)")]),
    ("domains", ["example.com local max_recipients=many"],
     [(1, "max_recipients: 'many' is not a whole number")]),
    ("domains", ["example.com local limit_messages=100"],
     [(1, "limit_messages: '100' is not a rate (like 100/1h: a count per s, m, h or d)")]),
    ("domains", ["example.com local limit_recipients=100/1w"],
     [(1, "limit_recipients: '100/1w' is not a rate (like 100/1h: a count per s, m, h or d)")]),
    ("domains", ["example.com local", "exa_mple..com local"],
     [(2, "invalid domain 'exa_mple..com': empty label")]),
    ("domains", ["-example.com relay"],
     [(1, "invalid domain '-example.com': label '-example' must be letters, digits, '-', '_' "
          "and must not start or end with '-'")]),
    ("domains", [".exa..mple.com relay"], [(1, "invalid domain 'exa..mple.com': empty label")]),
    ("accounts", ["alice@example.com", "bob@@example.com"],
     [(2, "'bob@@example.com': more than one '@' in 'bob@@example.com'")]),
    ("accounts", ["postmaster"], [(1, "'postmaster': an address needs a domain")]),
    ("accounts", ["bob"], [(1, "'bob': address 'bob' has no domain")]),
    ("accounts", ["alice@exa..mple"],
     [(1, "'alice@exa..mple': invalid domain 'exa..mple': empty label")]),
    ("accounts", ["alice@example.com flag"],
     [(1, "unknown word 'flag' (expected one of: limit_messages=, limit_recipients=, "
          "local-only, login=, max_receive_size=, max_recipients=, max_size=, moved)")]),
    ("accounts", ["alice@example.com Login=alice max_size=big"],
     [(1, "max_size: 'big' is not a size (a number with an optional K, M or G)")]),
    ("accounts", ["alice@example.com owner=bob"], [(1, "unknown attribute 'owner'")]),
    ("accounts", ["Alice@Example.com", "# again", "alice@EXAMPLE.com local-only",
                  "<alice@example.com>"],
     [(3, "account 'alice@EXAMPLE.com' is already defined at {dir}/accounts:1"),
      (4, "account '<alice@example.com>' is already defined at {dir}/accounts:1")]),
    ("aliases", ["abuse@example.com postmaster@example.com", "sales@example.com"],
     [(2, "alias 'sales@example.com' has no target")]),
    ("aliases", ["@example.com"], [(1, "alias '@example.com' has no target")]),
    ("aliases", ["@exa..mple postmaster@example.com"],
     [(1, "invalid domain 'exa..mple': empty label")]),
    ("aliases", ["sales postmaster@example.com"], [(1, "'sales': address 'sales' has no domain")]),
    ("lists", ["staff@example.com"], [(1, "list 'staff@example.com' needs a mode: "
                                          "open or members-only")]),
    ("lists", ["staff@example.com closed alice@example.com"],
     [(1, "list 'staff@example.com' needs a mode: open or members-only")]),
    ("lists", ["staff@example.com open", "  alice@example.com, bob"],
     [(1, "'bob': address 'bob' has no domain")]),
    ("relay_recipients", ["info@backup.example OK", "sales@backup.example REJECT"],
     [(2, "a relay recipient line is an address or @domain, optionally followed by OK")]),
    ("relay_recipients", ["@backup.example OK extra"],
     [(1, "a relay recipient line is an address or @domain, optionally followed by OK")]),
    ("relay_recipients", ["info"], [(1, "'info': address 'info' has no domain")]),
    ("relay_recipients", ["@backup..example"],
     [(1, "invalid domain 'backup..example': empty label")]),
    ("listeners", ["smtpd", "submission requireauth"],
     [(2, "unknown word 'requireauth' (expected one of: max_size=, require_auth); "
          "did you mean 'require_auth'?")]),
    ("listeners", ["submission max_size=ten"],
     [(1, "max_size: 'ten' is not a size (a number with an optional K, M or G)")]),
    ("listeners", ["submission max_recipients=5"], [(1, "unknown attribute 'max_recipients'")]),
    ("dnsbl", ["bl.example client reply=acces_denied"],
     [(1, "reply: unknown catalogue entry 'acces_denied'; did you mean 'access_denied'?")]),
]


@pytest.mark.parametrize("table, lines, expected", TABLE_ERRORS,
                         ids=[f"{t}-{i}" for i, (t, _, _) in enumerate(TABLE_ERRORS)])
def test_table_errors(tmp_path: Path, table: str, lines: list[str],
                      expected: list[tuple[int, str]]) -> None:
    assert errors(tmp_path, **{table: lines}) == [
        f"{tmp_path / table}:{n}: {message.format(dir=tmp_path)}" for n, message in expected]


# --- errors: rule lists --------------------------------------------------------------

ACTIONS = "permit, reject, tempfail, deny, discard, quarantine or add_header"
FIELD_NAMES = ("client, client_name, helo, sender, recipient, listener, header, body, attachment, "
               "mime_type, archive, authenticated")

RULE_ERRORS = [
    ("from @spammer.example reject",
     f"a rule starts with a condition ({FIELD_NAMES}); got 'from'"),
    ("Client 192.0.2.1 reject", f"a rule starts with a condition ({FIELD_NAMES}); got 'Client'; "
                                "did you mean 'client'?"),
    ("sendr @spam.example reject", f"a rule starts with a condition ({FIELD_NAMES}); "
                                   "got 'sendr'; did you mean 'sender'?"),
    ("reject", f"a rule starts with a condition ({FIELD_NAMES}); got 'reject'"),
    ("client 192.0.2.1", "the rule has no action"),
    ("client 192.0.2.1 monitor", "the rule has no action"),
    ("client 192.0.2.1 bounce", f"unknown action 'bounce' (expected {ACTIONS})"),
    ("client 192.0.2.1 deny now", f"unknown action 'deny now' (expected {ACTIONS})"),
    ("client 192.0.2.1 discard all", f"unknown action 'discard all' (expected {ACTIONS})"),
    ("client 192.0.2.1 rejct", f"unknown action 'rejct' (expected {ACTIONS}); "
                               "did you mean 'reject'?"),
    ("client 192.0.2.1 monitr reject", f"unknown action 'monitr reject' (expected {ACTIONS}); "
                                       "did you mean 'monitor'?"),
    ("client 192.0.2.1 sendr @x.example reject",
     f"unknown action 'sendr @x.example reject' (expected {ACTIONS}); did you mean 'sender'?"),
    ("client 192.0.2.1 reject bounced", "unknown catalogue entry 'bounced'"),
    ("client 192.0.2.1 reject Access_Denied",
     "unknown catalogue entry 'Access_Denied'; did you mean 'access_denied'?"),
    ("client 192.0.2.1 reject acess_denied",
     "unknown catalogue entry 'acess_denied'; did you mean 'access_denied'?"),
    ("client 192.0.2.1 reject access_denied now",
     "reject takes at most one catalogue entry name"),
    ("client 192.0.2.1 reject dns_tempfail", "reject needs a 5xx entry; 'dns_tempfail' is 451"),
    ("client 192.0.2.1 tempfail access_denied",
     "tempfail needs a 4xx entry; 'access_denied' is 550"),
    ("client 192.0.2.1 reject deleted_by_filter",
     "'deleted_by_filter' is not a reply the milter can send"),
    ("client 192.0.2.1 reject auth_failed", "'auth_failed' is not a reply the milter can send"),
    ("recipient x@y.example reject helo_required",
     "'helo_required' cannot be sent at RCPT (where this rule is decided)"),
    ("sender @example.com reject unknown_user_local",
     "'unknown_user_local' cannot be sent at MAIL (where this rule is decided)"),
    ("client 192.0.2.1 reject virus_found",
     "'virus_found' cannot be sent at MAIL (where this rule is decided)"),
    ("client 192.0.2.1 tempfail scanner_tempfail",
     "'scanner_tempfail' cannot be sent at MAIL (where this rule is decided)"),
    ("client 192.0.2.1 permit skip=relay",
     "permit cannot skip relay (skippable: all, access, challenge, dnsbl, filters, "
     "greylist, local_sender, rdns, spam, virus)"),
    ("client 192.0.2.1 permit skip=access,recipients",
     "permit cannot skip recipients (skippable: all, access, challenge, dnsbl, filters, "
     "greylist, local_sender, rdns, spam, virus)"),
    ("client 192.0.2.1 permit filters", "permit takes skip=CHECK,...; got 'filters'"),
    ("client 192.0.2.1 permit skip", "permit takes skip=CHECK,...; got 'skip'"),
    ("client 192.0.2.0/33 reject", "client: '192.0.2.0/33' is not an IP address or CIDR block"),
    ("client 192.0.2.1, 192.0.2.300 reject",
     "client: '192.0.2.300' is not an IP address or CIDR block"),
    ("client mx.example.net reject", "client: 'mx.example.net' is not an IP address or CIDR block"),
    ("helo exa..mple reject", "helo: invalid domain 'exa..mple': empty label"),
    ("client_name .exa..mple reject", "client_name: invalid domain 'exa..mple': empty label"),
    ("sender spammer.example reject", "sender: 'spammer.example' is not an address pattern "
                                      "(use user@domain, @domain, user@ or <>)"),
    ("recipient @ reject", "recipient: '@' is not an address pattern "
                           "(use user@domain, @domain, user@ or <>)"),
    ("authenticated maybe reject", "authenticated: 'maybe' is not yes or no"),
    ("client 192.0.2.1 add_header X-Flag", "add_header takes 'Name: value'"),
    ("client 192.0.2.1 add_header X-Flag:", "add_header takes 'Name: value'"),
    ("client 192.0.2.1 add_header", "add_header takes 'Name: value'"),
    ("client 192.0.2.1 add_header X Flag: yes", "add_header takes 'Name: value'"),
    ("client 192.0.2.1 add_header : yes", "add_header takes 'Name: value'"),
]


@pytest.mark.parametrize("file", list(RULE_FILES))
@pytest.mark.parametrize("rule, message", RULE_ERRORS)
def test_rule_errors(tmp_path: Path, file: str, rule: str, message: str) -> None:
    path = tmp_path / file
    assert errors(tmp_path, **{file: ["client 192.0.2.99 reject", "# the bad one:", rule]}) \
        == [f"{path}:3: {message}"]


def test_bad_pattern_in_a_named_file_points_into_that_file(tmp_path: Path) -> None:
    blocked = write(tmp_path / "lists" / "blocked", ["# blocked clients", "192.0.2.1", "",
                                                     "198.51.100.0/24 192.0.2.999",
                                                     "2001:db8::/129"])
    senders = write(tmp_path / "lists" / "senders", ["@ok.example", "nobody"])
    write(tmp_path / "lists" / "access", ["client file:blocked reject",
                                          "sender file:senders reject"])
    write(tmp_path / "policy.conf", ["access = lists/access"])
    with pytest.raises(RuleErrors) as info:
        policy.load(tmp_path)
    hidden = "is not a {} pattern (not shown: file: lists are never echoed)"
    assert info.value.errors == [
        f"{blocked}:4: client: this line {hidden.format('client')}",
        f"{blocked}:5: client: this line {hidden.format('client')}",
        f"{senders}:2: sender: this line {hidden.format('sender')}",
    ]


def test_a_file_list_is_never_echoed(tmp_path: Path) -> None:
    """A file: list may name any file (a password file, say): its lines stay out of the
    errors, whatever they hold."""
    secret = "root:$6$salt$HASHED:19000:0:99999:7:::"
    write(tmp_path / "shadow", [secret, "daemon:*:19000:0:99999:7:::"])
    for field in ("client", "sender", "helo", "attachment", "listener"):
        write(tmp_path / "access", [f"{field} file:shadow reject"])
        write(tmp_path / "policy.conf", ["access = access"])
        try:
            policy.load(tmp_path)
        except RuleErrors as err:
            assert err.errors and not any("HASHED" in e or "daemon:" in e for e in err.errors)


def test_every_error_in_every_file_at_once(tmp_path: Path) -> None:
    conf = tmp_path / "policy.conf"
    extra = write(tmp_path / "conf.d" / "extra.conf", ["max_recipients = 5", "monitor = yes"])
    blocked = write(tmp_path / "blocked", ["192.0.2.1", "192.0.2.x"])
    rules_dir(tmp_path,
              ["monitor = perhaps", "colour = blue", "include conf.d/*.conf",
               "max_recipients = 7", "failure_action = shrug"],
              domains=["example.com local", "example.org locl"],
              accounts=["alice@example.com", "ALICE@example.com"],
              lists=["staff@example.com"],
              listeners=["smtpd speedy"],
              access=["client file:blocked reject", "client 192.0.2.1 bounce",
                      "recipient @example.com reject helo_required"],
              filters=["sender @x.example reject dns_tempfail"])
    expected = [
        f"{conf}:2: unknown setting 'colour'",
        f"{extra}:2: 'monitor' is already set at {conf}:1",
        f"{conf}:4: 'max_recipients' is already set at {extra}:1",
        f"{conf}:1: monitor: 'perhaps' is not yes or no",
        f"{conf}:5: failure_action: 'shrug' is not one of: tempfail, accept",
        f"{tmp_path / 'domains'}:2: unknown domain kind 'locl' (expected one of: {KIND_LIST}); "
        "did you mean 'local'?",
        f"{tmp_path / 'accounts'}:2: account 'ALICE@example.com' is already defined at "
        f"{tmp_path / 'accounts'}:1",
        f"{tmp_path / 'lists'}:1: list 'staff@example.com' needs a mode: open or members-only",
        f"{tmp_path / 'listeners'}:1: unknown word 'speedy' (expected one of: max_size=, "
        "require_auth)",
        f"{blocked}:2: client: this line is not a client pattern (not shown: file: lists are "
        "never echoed)",
        f"{tmp_path / 'access'}:2: unknown action 'bounce' (expected {ACTIONS})",
        f"{tmp_path / 'access'}:3: 'helo_required' cannot be sent at RCPT "
        "(where this rule is decided)",
        f"{tmp_path / 'filters'}:1: reject needs a 5xx entry; 'dns_tempfail' is 451",
    ]
    for _ in range(2):  # the same list, in the same order, every time
        with pytest.raises(RuleErrors) as info:
            policy.load(tmp_path)
        assert info.value.errors == expected


# --- settings ------------------------------------------------------------------------

def test_settings_defaults(tmp_path: Path) -> None:
    p = load(tmp_path, ["# nothing set"])
    s = {name: getattr(p.settings, name) for name in SETTING_NAMES}
    relay_networks, list_patterns = s.pop("relay_networks"), s.pop("list_patterns")
    generic = s.pop("rdns_generic_names")
    assert not s.pop("challenge_recipients")
    assert s == {
        "monitor": False, "failure_action": "tempfail", "require_helo": False,
        "reject_repeated_helo": False, "check_helo_syntax": True,
        "disallowed_commands": frozenset(), "max_recipients": 100, "max_message_size": 0,
        "local_sender_requires_auth": False, "recipient_delimiter": "",
        "dns_nameservers": (), "dns_port": 53, "dns_timeout": 3.0, "dns_budget": 8.0,
        "dns_min_ttl": 5, "dns_max_ttl": 86400, "dns_negative_ttl": 300, "rdns": "off",
        "dns_failure_action": "", "dnsbl_threshold": 1, "content_max_size": 10 * 1024**2,
        "mime_max_depth": 100, "archive_max_depth": 4, "archive_max_entries": 10000,
        "archive_max_size": 50 * 1024**2, "content_timeout": 20.0,
        "unscannable_action": None,
        "clamd": "", "clamd_timeout": 30.0, "clamd_max_size": 25 * 1024**2,
        "virus_action": "reject", "virus_failure_action": "",
        "spamd": "", "spamd_timeout": 60.0, "spamd_user": "", "spam_max_size": 2 * 1024**2,
        "spam_tag_score": 5.0, "spam_reject_score": 10.0, "spam_subject_tag": "",
        "spam_failure_action": "", "challenge_store": "", "challenge_address": "",
        "challenge_smtp": ("127.0.0.1", 25), "challenge_expire": 7 * 86400,
        "challenge_limit": (10, 3600), "workers": 1, "metrics": None,
        "sql_timeout": 2.0, "sql_cache_ttl": 60, "sql_cache_size": 10000,
        "state": "embedded", "state_file": "", "state_timeout": 1.0,
        "state_prefix": "policy-milter:", "state_password_file": "",
        "greylist": False, "greylist_delay": 300, "greylist_retry_window": 2 * 86400,
        "greylist_expire": 35 * 86400, "greylist_auto_allow": 5, "greylist_ipv4_prefix": 24,
        "greylist_ipv6_prefix": 64,
    }
    assert not generic
    assert [contains(relay_networks, ip) for ip in
            ("127.0.0.1", "127.255.0.9", "::1", "192.0.2.1", "::2")] == \
        [True, True, True, False, False]
    assert not list_patterns
    assert p.where == {name: "default" for name in SETTING_NAMES}
    assert p.settings.failure("spam_failure_action") == "tempfail"
    assert p.rule_lists == ()
    assert not p.tables.domain_list and not p.tables.accounts and not p.tables.listeners
    assert p.tables.domain("example.com") is None


@pytest.mark.parametrize("text, octets", [
    ("0", 0), ("512", 512), ("512K", 512 * 1024), ("512k", 512 * 1024),
    ("25M", 25 * 1024**2), ("25m", 25 * 1024**2), ("1G", 1024**3), ("2g", 2 * 1024**3),
])
def test_sizes(tmp_path: Path, text: str, octets: int) -> None:
    p = load(tmp_path, ["# sizes", f"max_message_size = {text}"],
             domains=[f"example.com local max_size={text} max_receive_size={text}"],
             listeners=[f"submission max_size={text}"])
    assert p.settings.max_message_size == octets
    assert p.where["max_message_size"] == f"{tmp_path / 'policy.conf'}:2"
    domain = p.tables.domain("example.com")
    assert domain is not None
    assert (domain.limits.max_size, domain.limits.max_receive_size) == (octets, octets)
    assert p.tables.listeners["submission"].max_size == octets


@pytest.mark.parametrize("text, value", [
    ("yes", True), ("YES", True), ("true", True), ("on", True), ("1", True),
    ("no", False), ("No", False), ("false", False), ("off", False), ("0", False),
])
def test_bool_spellings(tmp_path: Path, text: str, value: bool) -> None:
    assert load(tmp_path, [f"monitor = {text}"]).settings.monitor is value


def test_setting_values(tmp_path: Path) -> None:
    write(tmp_path / "conf.d" / "20-b.conf", ["max_recipients = 20"])
    write(tmp_path / "conf.d" / "10-a.conf", ["recipient_delimiter = -"])
    p = load(tmp_path, ["disallowed_commands = TURN, atrn  ETRN",
                        "relay_networks = 192.0.2.0/24,2001:db8::/32",
                        "   , [198.51.100.7]",
                        "failure_action = ACCEPT",
                        "list_patterns = *-list@example.com, @lists.example.com",
                        "include conf.d/*.conf", "include nothing-here/*.conf"])
    assert p.settings.disallowed_commands == frozenset({"TURN", "ATRN", "ETRN"})
    assert [contains(p.settings.relay_networks, ip)
            for ip in ("192.0.2.9", "2001:db8::9", "198.51.100.7", "198.51.100.8")] == \
        [True, True, True, False]
    assert p.settings.failure_action == "accept"
    assert [contains(p.settings.list_patterns, addr(a)) for a in
            ("staff-list@example.com", "x@lists.example.com", "staff@example.com")] == \
        [True, True, False]
    assert (p.settings.recipient_delimiter, p.settings.max_recipients) == ("-", 20)
    assert p.where["recipient_delimiter"] == f"{tmp_path / 'conf.d' / '10-a.conf'}:1"
    assert p.where["max_recipients"] == f"{tmp_path / 'conf.d' / '20-b.conf'}:1"
    assert p.where["relay_networks"] == f"{tmp_path / 'policy.conf'}:2"
    assert p.files[:3] == (str(tmp_path / "policy.conf"),
                           str(tmp_path / "conf.d" / "10-a.conf"),
                           str(tmp_path / "conf.d" / "20-b.conf"))


# --- tables --------------------------------------------------------------------------

def test_domains_kinds_flags_and_limits(tmp_path: Path) -> None:
    p = load(tmp_path, domains=[
        "Example.COM local", "lists.example.com LIST", "backup.example.org relay",
        "partner.example remote require_auth max_recipients=5 max_size=10M",
        "    max_receive_size=1K limit_messages=100/1h limit_recipients=500/d",
    ])
    t = p.tables
    assert [(d.name, d.kind) for d in t.domain_list] == [
        ("example.com", DomainKind.LOCAL), ("lists.example.com", DomainKind.LIST),
        ("backup.example.org", DomainKind.RELAY), ("partner.example", DomainKind.REMOTE)]
    assert [d.local for d in t.domain_list] == [True, True, False, False]
    partner = t.domain("PARTNER.example.")
    assert partner is not None
    assert partner.require_auth and partner.where == f"{tmp_path / 'domains'}:4"
    assert partner.limits == Limits(max_recipients=5, max_size=10 * 1024**2,
                                    max_receive_size=1024, limit_messages=(100, 3600),
                                    limit_recipients=(500, 86400))
    assert t.domain("example.com").limits == Limits()  # type: ignore[union-attr]
    assert not t.domain("example.com").require_auth  # type: ignore[union-attr]
    assert t.domain("") is None and t.domain("example.net") is None
    assert p.where["domains"] == f"{tmp_path / 'policy.conf'}:1"


@pytest.mark.parametrize("written, lookups", [
    ("bücher.example", ["xn--bcher-kva.example", "bücher.example", "BÜCHER.Example."]),
    ("xn--bcher-kva.example", ["bücher.example", "XN--BCHER-KVA.example"]),
    ("CAFÉ.example", ["xn--caf-dma.example", "café.example"]),
])
def test_idn_domains_are_found_either_way(tmp_path: Path, written: str,
                                          lookups: list[str]) -> None:
    t = load(tmp_path, domains=[f"{written} local"]).tables
    for name in lookups:
        found = t.domain(name)
        assert found is not None and found.kind is DomainKind.LOCAL, name
    assert t.domain("bucher.example") is None


@pytest.mark.parametrize("written", [".example.com", "*.example.com"])
def test_subdomain_entries_do_not_cover_the_domain(tmp_path: Path, written: str) -> None:
    t = load(tmp_path, domains=[f"{written} relay"]).tables
    for name in ("mail.example.com", "a.b.example.com"):
        assert t.domain(name).kind is DomainKind.RELAY  # type: ignore[union-attr]
    assert t.domain("example.com") is None
    assert t.domain("badexample.com") is None


def test_domain_entry_is_more_specific_than_subdomain_entry(tmp_path: Path) -> None:
    t = load(tmp_path, domains=[".example.com relay", "example.com local",
                                "lists.example.com list"]).tables
    assert t.domain("example.com").kind is DomainKind.LOCAL  # type: ignore[union-attr]
    assert t.domain("lists.example.com").kind is DomainKind.LIST  # type: ignore[union-attr]
    assert t.domain("mx.example.com").kind is DomainKind.RELAY  # type: ignore[union-attr]


def test_accounts(tmp_path: Path) -> None:
    accounts = tmp_path / "accounts"
    t = load(tmp_path, accounts=[
        "alice@example.com  login=Alice  limit_messages=200/1h max_recipients=20",
        "intern@example.com local-only",
        "bob@example.com    MOVED",
        "Carol@Example.COM  max_size=1M max_receive_size=2M limit_recipients=50/30m",
        "<dave@bücher.example>",
    ]).tables
    assert list(t.accounts) == ["alice@example.com", "intern@example.com", "bob@example.com",
                                "carol@example.com", "dave@xn--bcher-kva.example"]
    alice = t.accounts["alice@example.com"]
    assert (alice.login, alice.where) == ("alice", f"{accounts}:1")
    assert alice.limits == Limits(max_recipients=20, limit_messages=(200, 3600))
    assert [(a.local_only, a.moved) for a in t.accounts.values()] == [
        (False, False), (True, False), (False, True), (False, False), (False, False)]
    assert t.accounts["carol@example.com"].limits == Limits(
        max_size=1024**2, max_receive_size=2 * 1024**2, limit_recipients=(50, 1800))
    # login= maps the SASL name; without it the login is the address itself
    assert t.account_for_login("alice") is alice
    assert t.account_for_login("ALICE") is alice
    assert t.account_for_login("carol@example.com") is t.accounts["carol@example.com"]
    assert t.account_for_login("Intern@Example.com") is t.accounts["intern@example.com"]
    assert t.account_for_login("carol") is None
    assert t.account_for_login("nobody") is None


def test_aliases_and_catch_all(tmp_path: Path) -> None:
    t = load(tmp_path, aliases=[
        "abuse@example.com      postmaster@example.com",
        "Sales@Example.com      alice@example.com, bob@example.com",
        "@catchall.example      postmaster@example.com",
        "@Bücher.Example.       postmaster@example.com",
    ]).tables
    assert set(t.aliases) == {"abuse@example.com", "sales@example.com"}
    assert t.catchall == {"catchall.example", "xn--bcher-kva.example"}
    assert "example.com" not in t.catchall


def test_lists_with_members_on_continuation_lines(tmp_path: Path) -> None:
    lists = tmp_path / "lists"
    t = load(tmp_path, lists=[
        "staff@lists.example.com  Members-Only",
        "    alice@example.com",
        "# a comment between members does not end the list",
        "\tBob@Example.com, carol@example.com",
        "",
        "    dave@example.com ,erin@example.com",
        "announce@example.com     open",
        "team@example.com open frank@example.com",
    ]).tables
    staff = t.lists["staff@lists.example.com"]
    assert staff.members_only and staff.where == f"{lists}:1"
    assert staff.members == frozenset({"alice@example.com", "bob@example.com",
                                       "carol@example.com", "dave@example.com",
                                       "erin@example.com"})
    announce = t.lists["announce@example.com"]
    assert (announce.members_only, announce.members, announce.where) == (
        False, frozenset(), f"{lists}:7")
    assert t.lists["team@example.com"].members == frozenset({"frank@example.com"})


def test_relay_recipients(tmp_path: Path) -> None:
    t = load(tmp_path, relay_recipients=[
        "info@backup.example.org OK",
        "Sales@Backup.Example.org",
        "@other.example.org",
        "@Bücher.example OK",
    ]).tables
    assert t.relay_recipients == {"info@backup.example.org", "sales@backup.example.org"}
    assert t.relay_catchall == {"other.example.org", "xn--bcher-kva.example"}
    assert t.relay_domains_listed == {"backup.example.org", "other.example.org",
                                      "xn--bcher-kva.example"}


def test_listeners(tmp_path: Path) -> None:
    t = load(tmp_path, listeners=["Submission require_auth max_size=50M", "smtpd"]).tables
    sub = t.listeners["submission"]
    assert (sub.name, sub.require_auth, sub.max_size) == ("submission", True, 50 * 1024**2)
    assert sub.where == f"{tmp_path / 'listeners'}:1"
    smtpd = t.listeners["smtpd"]
    assert (smtpd.require_auth, smtpd.max_size) == (False, 0)


# --- rule lists ----------------------------------------------------------------------

def test_rules_split_into_mail_and_rcpt(tmp_path: Path) -> None:
    p = load(tmp_path, access=[
        "client 192.0.2.0/24                        reject",
        "recipient former@example.com               deny",
        "sender @spammer.example recipient @example.com   reject",
        "helo *.dynamic.example                     monitor reject",
        "authenticated no  listener submission      reject auth_required",
        "recipient abuse@ permit",
    ])
    rl = rule_list(p, "access")
    assert [line_of(r) for r in rl.mail.rules] == [1, 4, 5]
    assert [line_of(r) for r in rl.rcpt.rules] == [2, 3, 6]
    assert {r.stage for r in rl.mail.rules} == {Stage.MAIL}
    assert {r.stage for r in rl.rcpt.rules} == {Stage.RCPT}
    assert [rl.name for rl in p.rule_lists] == ["access"]
    assert p.summary()[2] == "access: 3 rules at MAIL, 3 at RCPT, 0 at end of message"


def test_empty_rule_stage_is_false(tmp_path: Path) -> None:
    rl = rule_list(load(tmp_path, filters=["sender @x.example discard"]), "filters")
    assert rl.mail and not rl.rcpt
    assert rl.rcpt.first(values(sender="a@x.example", recipient="b@example.com")) is None


@pytest.mark.parametrize("vals, line", [
    # line 1 (scanned: a glob) before line 2 (indexed), and the reverse for 3 and 4
    (values(helo="mx.example.net", client="192.0.2.1"), 1),
    (values(helo="other.test", client="192.0.2.1"), 2),
    (values(helo="mx1.dynamic.test", client="198.51.100.7"), 3),
    (values(helo="mx1.dynamic.test", client="203.0.113.5"), 4),
    # both indexed, under different fields: file order still decides
    (values(client="203.0.113.6", sender="a@example.com"), 5),
    (values(client="203.0.113.6", sender="a@example.org"), 6),
    # the indexed condition matches, another condition of the rule does not
    (values(client="203.0.113.70", sender="a@other.example"), 8),
    (values(client="203.0.113.70", sender="a@partner.example"), 7),
    (values(client="203.0.113.70", sender="a@partner.example", authenticated=True), 7),
    # only 'authenticated' and a glob: scanned
    (values(client="203.0.113.200", authenticated=True), 9),
    (values(client="203.0.113.200", sender="x@news.example"), 10),
    (values(client="203.0.113.200", sender="x@example.net"), None),
])
def test_first_match_wins_in_file_order(tmp_path: Path, vals: dict[str, object],
                                        line: int | None) -> None:
    rl = rule_list(load(tmp_path, access=[
        "helo mx*.example.net                       reject",
        "client 192.0.2.1                           permit",
        "client 198.51.100.7                        permit",
        "helo *dynamic*                             reject",
        "sender @example.com                        reject",
        "client 203.0.113.0/28                      permit",
        "client 203.0.113.64/26 sender @partner.example  permit",
        "client 203.0.113.64/26                     reject",
        "authenticated yes                          permit",
        "sender *@news*.example                     discard",
    ]), "access")
    scanned = [line_of(r) for r in rl.mail.rules
               if not any(c.patterns and c.patterns.hashable() for c in r.conditions)]
    assert scanned == [1, 4, 9, 10]
    assert line_of(rl.mail.first(vals)) == line


RULES_FOR_GRID = [
    "client 192.0.2.0/24 helo *.dynamic.example reject",
    "helo mx.example.net client 192.0.2.7 permit",
    "sender @partner.example, @.partner.example permit skip=all",
    "client_name .example.net sender <> reject",
    "client 192.0.2.0/25 authenticated no reject",
    "listener sub* sender news*@example.com discard",
    "helo .example.net listener smtpd tempfail",
    "sender postmaster@ client 2001:db8::/32 permit",
    "authenticated yes permit skip=filters",
    "client_name mail*.example.org reject",
    "client ::ffff:198.51.100.0/120 reject",
    "sender @example.com helo mx.example.com permit",
    "recipient @example.com client 192.0.2.0/24 deny",
    "recipient abuse@ permit",
    "recipient @.example.com sender <> discard",
    "recipient *@example.org listener submission reject",
]
GRID = {
    "client": ["192.0.2.7", "192.0.2.200", "198.51.100.3", "2001:db8::25", None],
    "client_name": ["mx.example.net", "mail3.example.org", None],
    "helo": ["mx.example.net", "h1.dynamic.example", "mx.example.com"],
    "sender": ["<>", "a@partner.example", "news1@example.com", "postmaster@example.com"],
    "recipient": ["abuse@example.com", "a@sub.example.com", "b@example.org"],
    "listener": ["smtpd", "submission"],
    "authenticated": [False, True],
}


def test_index_agrees_with_a_linear_walk(tmp_path: Path) -> None:
    """For every combination of facts, the index finds what walking every rule finds."""
    rl = rule_list(load(tmp_path, access=RULES_FOR_GRID), "access")
    assert len(rl.mail.rules) + len(rl.rcpt.rules) == len(RULES_FOR_GRID)
    seen: set[int | None] = set()
    for combo in itertools.product(*GRID.values()):
        facts = dict(zip(GRID, combo))
        vals = values(**facts)  # type: ignore[arg-type]
        for index in (rl.mail, rl.rcpt):
            expected = next((r for r in index.rules if r.matches(vals)), None)
            assert index.first(vals) is expected, facts
            seen.add(line_of(expected))
    assert seen == {None, *range(1, len(RULES_FOR_GRID) + 1)}  # every rule won somewhere


def test_conditions(tmp_path: Path) -> None:
    write(tmp_path / "rules" / "blocked", ["# one per line", "192.0.2.1", "198.51.100.0/24",
                                           "2001:db8::/32 203.0.113.5"])
    write(tmp_path / "rules" / "access", [
        "client file:blocked                        reject",
        "client_name .example.net                   reject",
        "helo mail*.example.org                     reject",
        "listener Submission authenticated no       reject auth_required",
        "sender <>  client 203.0.113.0/24           reject",
        "client 203.0.113.20, 203.0.113.21          permit",
    ])
    write(tmp_path / "policy.conf", ["access = rules/access"])
    rl = rule_list(policy.load(tmp_path), "access")
    cases = [
        (values(client="192.0.2.1"), 1), (values(client="198.51.100.99"), 1),
        (values(client="2001:db8::1"), 1), (values(client="203.0.113.5"), 1),
        (values(client="::ffff:192.0.2.1"), 1), (values(client="192.0.2.2"), None),
        (values(client_name="a.example.net"), 2), (values(client_name="example.net"), None),
        (values(helo="MAIL1.example.org"), 3), (values(helo="smtp.example.org"), None),
        (values(listener="submission"), 4),
        (values(listener="submission", authenticated=True), None),
        (values(listener="smtpd"), None),
        (values(client="203.0.113.9", sender="<>"), 5),
        (values(client="203.0.113.9", sender="a@example.com"), None),
        (values(client="203.0.113.21", sender="a@example.com"), 6),
        (values(), None),
    ]
    assert [line_of(rl.mail.first(v)) for v, _ in cases] == [line for _, line in cases]


def test_ten_thousand_rules(tmp_path: Path) -> None:
    rl = rule_list(load(tmp_path, access=[f"sender user{i}@example.com reject"
                                          for i in range(10_000)]), "access")
    assert len(rl.mail.rules) == 10_000 and not rl.rcpt
    for sender, line in [("user0@example.com", 1), ("User5000@Example.COM", 5001),
                         ("user9999@example.com", 10_000), ("user10000@example.com", None),
                         ("user1@example.org", None), ("<>", None)]:
        assert line_of(rl.mail.first(values(sender=sender))) == line, sender


# --- actions -------------------------------------------------------------------------

@pytest.mark.parametrize("file, rule, action, entry", [
    ("access", "client 192.0.2.1 reject", Action.REJECT, "access_denied"),
    ("access", "recipient x@example.com reject", Action.REJECT, "access_denied"),
    ("filters", "client 192.0.2.1 reject", Action.REJECT, "filter_rejected"),
    ("filters", "recipient x@example.com reject", Action.REJECT, "filter_rejected"),
    ("access", "client 192.0.2.1 reject not_allowed_to_send", Action.REJECT,
     "not_allowed_to_send"),
    ("access", "recipient x@example.com reject unknown_user_local", Action.REJECT,
     "unknown_user_local"),
    ("access", "client 192.0.2.1 deny", Action.REJECT, "permission_denied"),
    ("filters", "recipient x@example.com deny", Action.REJECT, "permission_denied"),
    ("access", "client 192.0.2.1 discard", Action.DISCARD, "deleted_by_filter"),
    ("filters", "recipient x@example.com DISCARD", Action.DISCARD, "deleted_by_filter"),
    ("access", "client 192.0.2.1 tempfail", Action.TEMPFAIL, "state_tempfail"),
    ("filters", "client 192.0.2.1 tempfail dns_tempfail", Action.TEMPFAIL, "dns_tempfail"),
])
def test_reject_actions(tmp_path: Path, file: str, rule: str, action: Action,
                        entry: str) -> None:
    d = decision(tmp_path, rule, file)
    assert (d.action, d.entry, d.check, d.rule, d.monitor) == (
        action, catalogue.get(entry), file, f"{tmp_path / file}:1", False)


@pytest.mark.parametrize("file", list(RULE_FILES))
def test_monitor(tmp_path: Path, file: str) -> None:
    rl = rule_list(load(tmp_path, **{file: ["client 192.0.2.1 monitor reject",
                                            "client 192.0.2.2 reject",
                                            "client 192.0.2.3 monitor add_header X-Seen: yes"]}),
                   file)
    assert [r.decision.monitor for r in rl.mail.rules] == [True, False, True]
    assert rl.mail.rules[0].decision.entry == catalogue.get(RULE_FILES[file])


@pytest.mark.parametrize("args, skip", [
    ("", {"access", "dnsbl", "greylist"}),
    ("skip=local_sender", {"local_sender"}),
    ("skip=filters,local_sender", {"filters", "local_sender"}),
    ("skip=access, filters", {"access", "filters"}),
    ("skip=all", set(SKIPPABLE)),
    ("skip=all,access", set(SKIPPABLE)),
])
def test_permit_skip(tmp_path: Path, args: str, skip: set[str]) -> None:
    d = decision(tmp_path, f"sender newsletter@partner.example permit {args}")
    assert (d.action, d.entry, d.skip) == (Action.PERMIT, None, frozenset(skip))
    assert SKIPPABLE == frozenset({"access", "filters", "local_sender", "rdns", "dnsbl", "virus",
                                   "spam", "challenge", "greylist"})


@pytest.mark.parametrize("rule, skip", [
    ("recipient vip@example.com permit", {"access", "greylist"}),  # black lists, greylist
    ("recipient vip@example.com permit skip=all",
     {"access", "filters", "greylist", "virus", "spam", "challenge"}),
    ("recipient vip@example.com permit skip=virus,challenge", {"virus", "challenge"}),
    ("header Subject=/x/ permit", set()),
    ("header Subject=/x/ permit skip=all", {"filters", "virus", "spam", "challenge"}),
])
def test_permit_skips_only_what_is_still_ahead(tmp_path: Path, rule: str,
                                               skip: set[str]) -> None:
    assert decision(tmp_path, rule).skip == frozenset(skip)


@pytest.mark.parametrize("rule, behind, stage, ahead", [
    ("recipient vip@example.com permit skip=dnsbl,rdns", "dnsbl, rdns", "RCPT TO",
     "access, challenge, filters, greylist, spam, virus"),
    ("recipient vip@example.com permit skip=local_sender", "local_sender", "RCPT TO",
     "access, challenge, filters, greylist, spam, virus"),
    ("body /x/ permit skip=dnsbl", "dnsbl", "the end of the message",
     "challenge, filters, spam, virus"),
])
def test_permit_cannot_skip_what_already_ran(tmp_path: Path, rule: str, behind: str,
                                             stage: str, ahead: str) -> None:
    (error,) = errors(tmp_path, access=[rule])
    assert error.startswith(f"{tmp_path / 'access'}:1: this permit is decided at {stage}, "
                            f"after {behind} already ran; it can still skip: all, {ahead} (")
    assert "put the permit in a rule without" in error


@pytest.mark.parametrize("rule", [
    "recipient @example.com body /viagra/ reject",
    "header Subject=/x/ recipient abuse@example.com discard",
    "attachment *.exe mime_type application/* recipient @example.com reject",
])
def test_a_content_rule_cannot_have_a_recipient(tmp_path: Path, rule: str) -> None:
    (error,) = errors(tmp_path, filters=[rule])
    assert error.startswith(f"{tmp_path / 'filters'}:1: a recipient condition cannot be "
                            "combined with ")
    assert "give the recipient a rule of its own (decided at RCPT TO)" in error


def test_quarantine_and_add_header(tmp_path: Path) -> None:
    filters = tmp_path / "filters"
    rl = rule_list(load(tmp_path, filters=[
        "sender @vendor.example  quarantine held for review",
        "sender @other.example   quarantine",
        "sender @x.example       add_header X-Vendor: yes",
        "sender @y.example       add_header X-Note:a: b",
        "recipient @example.com  add_header   X-Rcpt:   local  ",
    ]), "filters")
    got = [(r.decision.action, r.decision.reason, r.decision.headers)
           for r in rl.mail.rules + rl.rcpt.rules]
    assert got == [
        (Action.QUARANTINE, "held for review", ()),
        (Action.QUARANTINE, f"{filters}:2", ()),
        (Action.ADD_HEADER, "", (("X-Vendor", "yes"),)),
        (Action.ADD_HEADER, "", (("X-Note", "a: b"),)),
        (Action.ADD_HEADER, "", (("X-Rcpt", "local"),)),
    ]


def test_absent_facts_do_not_match(tmp_path: Path) -> None:
    """first() takes any mapping; a fact it lacks matches no pattern (and is not 'yes')."""
    rl = rule_list(load(tmp_path, access=["client 192.0.2.1 reject", "authenticated no permit"]),
                   "access")
    facts: Mapping[str, object] = {"client": client_ip("192.0.2.1")}
    assert line_of(rl.mail.first(facts)) == 1
    assert line_of(rl.mail.first({})) == 2


# --- duplicates, raw action text, glob parents, file: errors --------------------------

@pytest.mark.parametrize("table, lines, message", [
    ("domains", ["a.example local", "A.example. relay"],
     "domain 'A.example.' is already defined at {path}:1"),
    ("accounts", ["a@x.example login=al", "b@x.example login=AL"],
     "login 'al' is already used at {path}:1"),
    ("listeners", ["submission", "Submission require_auth"],
     "listener 'Submission' is already defined at {path}:1"),
    ("lists", ["l@x.example open", "L@x.example members-only"],
     "list 'L@x.example' is already defined at {path}:1"),
    ("aliases", ["a@x.example b@x.example", "a@x.example c@x.example"],
     "alias 'a@x.example' is already defined"),
])
def test_duplicate_entries_are_errors(tmp_path: Path, table: str, lines: list[str],
                                      message: str) -> None:
    path = tmp_path / table
    assert errors(tmp_path, **{table: lines}) == [f"{path}:2: " + message.format(path=path)]


def test_relay_recipients_ok_in_any_case(tmp_path: Path) -> None:
    p = load(tmp_path, relay_recipients=["a@backup.example ok", "@b.example Ok"])
    assert "a@backup.example" in p.tables.relay_recipients and "b.example" in p.tables.relay_catchall


def test_action_text_is_kept_as_written(tmp_path: Path) -> None:
    p = load(tmp_path, access=["sender @a.example add_header X-Note: a, b,  c",
                               "sender @b.example quarantine held, see ticket 42"])
    first, second = rule_list(p, "access").mail.rules
    assert first.decision.headers == (("X-Note", "a, b,  c"),)
    assert second.decision.reason == "held, see ticket 42"


def test_star_dot_with_more_globs_is_a_glob(tmp_path: Path) -> None:
    p = load(tmp_path, access=["client_name *.dynamic.* reject"])
    (rule,) = rule_list(p, "access").mail.rules
    assert rule.matches({"client_name": "host-1.dynamic.isp.example"})
    assert not rule.matches({"client_name": "mx.isp.example"})


def test_missing_pattern_file_is_reported_where_it_is_named(tmp_path: Path) -> None:
    assert errors(tmp_path, access=["client 192.0.2.1 permit", "client file:nope reject"]) == [
        f"{tmp_path / 'access'}:2: cannot read {tmp_path / 'nope'}: No such file or directory"]


def test_rate_periods_are_bounded(tmp_path: Path) -> None:
    assert errors(tmp_path, accounts=["a@x.example limit_messages=10/8d"]) == [
        f"{tmp_path / 'accounts'}:1: limit_messages: '10/8d': the period must be between "
        "1s and 7d"]
