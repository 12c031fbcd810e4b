"""One envelope, resolved once: every form of a mailbox gets the mailbox's answers.

The fixture rules set ``recipient_delimiter = +``.  For every rule kind and limit in
them, a session whose addresses carry generated extensions and letter-case changes gets
exactly the decisions (action, catalogue entry and deciding rule, per step) that the
same session with the plain addresses gets.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policy_milter.addresses import Address, parse_path
from policy_milter.decision import Decision
from policy_milter.engine import Engine, Outcome
from policy_milter.envelope import Directory, Resolved, Role
from policy_milter.log import DecisionLog
from policy_milter.model import Connection, Transaction
from policy_milter.rules.policy import Policy
from policy_milter.services import Services
from policy_milter.stages import Stage


@dataclass(frozen=True)
class Envelope:
    """A session: who connects, who sends, who receives, what size is declared or sent."""

    sender: str
    rcpts: tuple[str, ...]
    addr: str = "192.0.2.10"
    login: str = ""
    listener: str = "smtpd"
    size: int | None = None  # declared SIZE=
    body: int = 10  # octets of body sent
    messages: int = 1  # transactions in the session


# Every rule kind and limit of tests/fixtures/rules, each in a session of its own.
ENVELOPES = {
    "deny rule on a recipient": Envelope("a@sender.example", ("former@example.com",)),
    "discard rule on a recipient": Envelope("a@sender.example",
                                            ("trap@example.com", "postmaster@example.com")),
    "discard rule, the only recipient": Envelope("a@sender.example", ("trap@example.com",)),
    "declared size over a mailbox limit": Envelope("a@sender.example", ("carol@example.com",),
                                                   size=2000),
    "counted size over a mailbox limit": Envelope("a@sender.example", ("carol@example.com",),
                                                  body=2000),
    "moved account": Envelope("a@sender.example", ("bob@example.com",)),
    "unknown local user": Envelope("a@sender.example", ("nobody@example.com",)),
    "alias": Envelope("a@sender.example", ("abuse@example.com",)),
    "catch-all alias": Envelope("a@sender.example", ("someone@catchall.example",)),
    "account in an IDN domain": Envelope("a@sender.example", ("info@bücher.example",)),
    "members-only list, a stranger": Envelope("a@sender.example", ("staff@lists.example.com",)),
    "members-only list, a member": Envelope("member@sender.example",
                                            ("staff@lists.example.com",)),
    "open list": Envelope("a@sender.example", ("announce@lists.example.com",)),
    "no such list": Envelope("a@sender.example", ("nosuch@lists.example.com",)),
    "list pattern": Envelope("a@sender.example", ("nosuch-list@example.com",)),
    "list matching the pattern": Envelope("a@sender.example", ("team-list@example.com",)),
    "relay recipient listed": Envelope("a@sender.example", ("info@backup.example.org",)),
    "relay recipient unknown": Envelope("a@sender.example", ("nobody@backup.example.org",)),
    "relay domain without a list": Envelope("a@sender.example",
                                            ("anyone@open-backup.example.net",)),
    "relay denied": Envelope("a@sender.example", ("x@elsewhere.example",)),
    "client and sender domain rule": Envelope("a@spam.example", ("postmaster@example.com",),
                                              addr="192.0.2.5"),
    "domain message rate": Envelope("dora@quota.example", ("postmaster@example.com",),
                                    login="dora", messages=3),
    "deny rule on a sender": Envelope("boss@deny.example", ("postmaster@example.com",)),
    "reject rule on a sender domain": Envelope("a@blocked.example", ("postmaster@example.com",)),
    "monitor rule": Envelope("a@trial.example", ("postmaster@example.com",)),
    "discard rule on a sender": Envelope("a@discard.example", ("postmaster@example.com",)),
    "quarantine rule": Envelope("a@quarantine.example", ("postmaster@example.com",)),
    "add_header rule": Envelope("a@tagged.example", ("postmaster@example.com",)),
    "tempfail rule": Envelope("a@tempfail.example", ("postmaster@example.com",)),
    "filter rule at MAIL": Envelope("a@filtered.example", ("postmaster@example.com",)),
    "filter rule at RCPT": Envelope("a@mixed.example", ("postmaster@example.com",)),
    "white entry at RCPT": Envelope("a@vip.example", ("postmaster@example.com",)),
    "sender domain requires AUTH": Envelope("x@partner.example", ("postmaster@example.com",)),
    "sender domain limits": Envelope("a@small.example",
                                     tuple(f"u{i}@catchall.example" for i in range(4)),
                                     size=1024**2 + 1),
    "local sender, untrusted client": Envelope("alice@example.com", ("postmaster@example.com",)),
    "sender account limit, trusted client": Envelope(
        "alice@example.com", tuple(f"u{i}@catchall.example" for i in range(3)), addr="10.1.0.5"),
    "logged-in account limit": Envelope("alice@example.com",
                                        tuple(f"u{i}@catchall.example" for i in range(3)),
                                        login="alice"),
    "local-only account": Envelope("intern@example.com", ("x@elsewhere.example",),
                                   login="intern"),
    "account rate": Envelope("rater@quota.example",
                             tuple(f"u{i}@catchall.example" for i in range(5)), login="rater"),
    "listener size": Envelope("alice@example.com", ("postmaster@example.com",),
                              login="alice", listener="submission", size=5 * 1024**2 + 1),
}

Step = tuple[str, ...]


class Recorded(DecisionLog):
    """Keeps every logged decision (monitored ones, white entries, recipient discards
    included) instead of writing it."""

    def __init__(self) -> None:
        super().__init__()
        self.steps: list[Step] = []

    def decision(self, stage: Stage, conn: Connection, txn: Transaction | None,
                 rcpt: Resolved | None, decision: Decision, started: float) -> None:
        self.steps.append(("logged", stage.value, *signature(decision)))


def signature(decision: Decision) -> Step:
    """What a client and the log see of a decision: action, entry and deciding rule."""
    entry = decision.entry.name if decision.entry else ""
    return decision.action.value, entry, decision.rule, str(decision.monitor)


def outcome(result: Outcome) -> Step:
    return (*signature(result.decision), str(len(result.delete_recipients)),
            repr(result.add_headers), result.quarantine)


def play(policy: Policy, e: Envelope) -> list[Step]:
    """Every step's answer and every logged decision, in a fresh engine (period limits
    count per engine); the transaction is played ``e.messages`` times."""
    log = Recorded()
    s = Engine(policy, Services(), log).session()
    s.connect(e.addr, "mx.sender.example", e.listener)
    steps = [signature(s.helo("mx.sender.example", False))]
    params = [f"SIZE={e.size}"] if e.size is not None else []
    for _ in range(e.messages):
        mail = s.mail(f"<{e.sender}>", params, e.login, "Q1")
        steps.append(signature(mail))
        if mail.stops:
            continue
        steps += [signature(s.rcpt(f"<{rcpt}>", [], "Q1")) for rcpt in e.rcpts]
        steps.append(signature(s.data("Q1")))
        s.header("Subject", b"test")
        s.body(b"x" * e.body)
        steps.append(outcome(s.eom("Q1")))
    return steps + log.steps


def variant(address: str, extension: str | None, upper: list[bool]) -> str:
    """``address`` with ``+extension`` after its local part and the case of its letters
    changed where ``upper`` says so."""
    local, _, domain = address.rpartition("@")
    if extension is not None:
        local = f"{local}+{extension}"
    text = f"{local}@{domain}"
    return "".join(c.upper() if flip else c
                   for c, flip in zip(text, upper + [False] * len(text)))


EXTENSIONS = st.none() | st.from_regex(r"[A-Za-z0-9_=-]{0,12}", fullmatch=True)
FLIPS = st.lists(st.booleans(), max_size=40)


@pytest.mark.parametrize("name", ENVELOPES)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_form_of_a_mailbox_gets_the_mailbox_answers(
        fixture_policy: Policy, name: str, data: st.DataObject) -> None:
    plain = ENVELOPES[name]
    tagged = dataclasses.replace(
        plain, sender=variant(plain.sender, data.draw(EXTENSIONS), data.draw(FLIPS)),
        rcpts=tuple(variant(r, data.draw(EXTENSIONS), data.draw(FLIPS)) for r in plain.rcpts))
    assert play(fixture_policy, tagged) == play(fixture_policy, plain), tagged


def test_the_envelopes_cover_every_rule_and_limit(fixture_policy: Policy) -> None:
    """Every access and filters rule, and every limit of the fixture rules, decides at
    least one of the sessions above (so the property covers them all)."""
    deciding = {field for e in ENVELOPES.values() for step in play(fixture_policy, e)
                for field in step}
    rules = {r.where for rl in fixture_policy.rule_lists for _, index in rl.stages()
             for r in index.rules}
    limited = {owner.where for owner in (*fixture_policy.tables.domain_list,
                                         *fixture_policy.tables.accounts.values())
               if any(v for v in vars(owner.limits).values())}
    limited |= {listener.where for listener in fixture_policy.tables.listeners.values()
                if listener.max_size}
    unused = (rules | limited) - deciding
    # Not the subject of this property: client, helo and listener conditions (no address).
    address_free = {r.where for rl in fixture_policy.rule_lists for _, index in rl.stages()
                    for r in index.rules
                    if not {"sender", "recipient"} & {c.field for c in r.conditions}}
    assert unused <= address_free, sorted(unused - address_free)


# --- the resolved address ------------------------------------------------------------------

def resolve(policy: Policy, text: str, recipient: bool = True) -> object:
    directory = Directory(policy.tables, policy.settings.recipient_delimiter)
    return directory.resolve(text, parse_path(text, null_ok=not recipient), {"NOTIFY": "NEVER"},
                             recipient=recipient)


def test_one_object_holds_every_fact(fixture_policy: Policy) -> None:
    r = resolve(fixture_policy, "<Carol+Tag@EXAMPLE.com.>")
    assert r.given == "<Carol+Tag@EXAMPLE.com.>"  # type: ignore[attr-defined]
    assert r.address == Address("Carol+Tag", "example.com", (), "Tag")  # type: ignore[attr-defined]
    assert (r.key, r.mailbox) == ("carol+tag@example.com", "carol@example.com")  # type: ignore[attr-defined]
    assert r.account.address == "carol@example.com"  # type: ignore[attr-defined]
    assert r.domain.name == "example.com" and r.role is Role.LOCAL  # type: ignore[attr-defined]
    assert r.params == {"NOTIFY": "NEVER"}  # type: ignore[attr-defined]
    assert r.not_ours() is None and r.not_local() is None  # type: ignore[attr-defined]


@pytest.mark.parametrize("text, foreign", [
    ("<x%elsewhere.example@example.com>", "elsewhere.example"),
    ("<elsewhere.example!x@example.com>", "elsewhere.example"),
    ("<x%@example.com>", "(empty)"),  # an empty routed-through host is never ours
    ("<x@[192.0.2.1]>", "[192.0.2.1]"),
    ("<x@partner.example>", "partner.example"),
    ("<postmaster>", None),
    ("<x%catchall.example@example.com>", None),
])
def test_routing_facts(fixture_policy: Policy, text: str, foreign: str | None) -> None:
    assert resolve(fixture_policy, text).not_ours() == foreign  # type: ignore[attr-defined]


@pytest.mark.parametrize("text, mailbox", [
    ("<user+tag@example.com>", "user@example.com"),
    ("<user+tag+more@example.com>", "user@example.com"),
    ("<user+@example.com>", "user@example.com"),
    ("<+tag@example.com>", "+tag@example.com"),  # nothing before the delimiter: no split
    ('<"user+tag"@example.com>', "user@example.com"),
    ("<postmaster@example.com>", "postmaster@example.com"),
])
def test_the_mailbox_is_split_as_postfix_does(fixture_policy: Policy, text: str,
                                              mailbox: str) -> None:
    assert resolve(fixture_policy, text).mailbox == mailbox  # type: ignore[attr-defined]


@pytest.mark.parametrize("local, delimiters, mailbox", [
    ("owner-list", "-", "owner-list"),  # Postfix's owner_request_special
    ("list-request", "-", "list-request"),
    ("list-x", "-+", "list"),
    ("user+x-y", "-+", "user"),  # the first of any delimiter
    ("mailer-daemon", "-", "mailer-daemon"),
    ("double-bounce", "-", "double-bounce"),
])
def test_split_keeps_reserved_names_whole(local: str, delimiters: str, mailbox: str) -> None:
    assert Address(local, "example.com").split(delimiters).mailbox_local == mailbox


def test_a_sender_gets_no_recipient_facts(fixture_policy: Policy) -> None:
    r = resolve(fixture_policy, "<abuse@example.com>", recipient=False)
    assert r.alias is None and r.account is None  # type: ignore[attr-defined]
    assert resolve(fixture_policy, "<abuse@example.com>").alias  # type: ignore[attr-defined]


def test_kept_facts_never_mix_senders_recipients_or_commands(fixture_policy: Policy) -> None:
    """The facts of an argument are kept per directory: asked again, each command still
    gets an object of its own with its own parameters, and an argument first seen as a
    sender still gets every recipient fact as a recipient (and the other way round)."""
    directory = Directory(fixture_policy.tables, fixture_policy.settings.recipient_delimiter)

    def ask(text: str, recipient: bool, params: dict[str, str | None]) -> Resolved:
        return directory.resolve(text, parse_path(text, null_ok=True), params,
                                 recipient=recipient)

    as_sender = ask("<abuse+x@example.com>", False, {})
    first = ask("<abuse+x@example.com>", True, {"NOTIFY": "NEVER"})
    again = ask("<abuse+x@example.com>", True, {})
    assert as_sender.alias is None and first.alias and again.alias == first.alias
    assert again is not first and (first.params, again.params) == ({"NOTIFY": "NEVER"}, {})
    assert ask("<abuse+x@example.com>", False, {}).alias is None
    assert again.mailbox == first.mailbox == "abuse@example.com"


def test_kept_facts_are_bounded(fixture_policy: Policy, monkeypatch: pytest.MonkeyPatch
                                ) -> None:
    monkeypatch.setattr("policy_milter.envelope.KNOWN_MAX", 8)
    directory = Directory(fixture_policy.tables, fixture_policy.settings.recipient_delimiter)
    kept = directory._kept.cache_info  # type: ignore[attr-defined]
    for n in range(50):
        text = f"<user{n}@example.com>"
        r = directory.resolve(text, parse_path(text, null_ok=False), {}, recipient=True)
        assert r.key == f"user{n}@example.com"
        assert 1 <= kept().currsize <= 8
    again = directory.resolve("<user49@example.com>", parse_path("<user49@example.com>",
                                                                 null_ok=False), {}, recipient=True)
    assert again.key == "user49@example.com" and kept().hits == 1


class _ChangingAccounts:
    """An accounts table from SQL whose answer the test changes between two commands."""

    def __init__(self) -> None:
        self.account: object = None
        self.asked = 0

    def first(self, keys: tuple[str, ...]) -> object:
        self.asked += 1
        return self.account


def test_facts_from_sql_are_asked_every_time(fixture_policy: Policy) -> None:
    """A table from SQL has its own cache with its own TTL: the directory keeps nothing
    of it, so a row added in the database counts as soon as that cache lets it."""
    accounts = _ChangingAccounts()
    directory = Directory(fixture_policy.tables, fixture_policy.settings.recipient_delimiter,
                          {"accounts": accounts})  # type: ignore[dict-item]
    text = "<new@example.com>"
    before = directory.resolve(text, parse_path(text, null_ok=False), {}, recipient=True)
    accounts.account = fixture_policy.tables.accounts["carol@example.com"]
    after = directory.resolve(text, parse_path(text, null_ok=False), {}, recipient=True)
    assert before.account is None and after.account is accounts.account
    assert accounts.asked == 2
