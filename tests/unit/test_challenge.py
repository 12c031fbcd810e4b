"""Challenge-response through the engine: held, challenged, answered, released, exempt.

A real store in a temporary directory; the mailer records what would go to the MTA.
The round trip through a real Postfix is in tests/e2e.
"""

from __future__ import annotations

import email
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import pytest

from policy_milter.decision import Action
from policy_milter.engine import Engine, Outcome
from policy_milter.rules.policy import load
from policy_milter.services import Services
from policy_milter.services.challenges import SqliteChallengeStore
from policy_milter.services.errors import DependencyError
from policy_milter.services.spamd import SpamResult
from tests.support.cli import cli

STRANGER = "<stranger@else.example>"


class RecordingMailer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, list[str], bytes]] = []
        self.fail = False

    def send(self, sender: str, recipients: list[str], message: bytes | BinaryIO) -> None:
        if self.fail:
            raise DependencyError("smtp", "connection refused")
        data = message if isinstance(message, bytes) else message.read()
        self.sent.append((sender, recipients, data))


class Spf:
    """An SPF stand-in: the result per sender domain ('pass' unless told), and who asked
    (the real pyspf against real DNS is in tests/e2e)."""

    def __init__(self, **results: str) -> None:
        self.results = results
        self.asked: list[tuple[str, str, str]] = []

    def check(self, client: str, sender: str, helo: str) -> str:
        self.asked.append((client, sender, helo))
        return self.results.get(sender.rpartition("@")[2].replace(".", "_"), "pass")


def challenge_engine(rules: Path, store: SqliteChallengeStore, mailer: RecordingMailer,
                     spf: Spf | None = None) -> Engine:
    return Engine(load(rules), Services(challenges=store, mailer=mailer, spf=spf or Spf(),
                                        run_later=lambda work: work()))


def protecting(make_rules: Callable[..., Path], tmp_path: Path, **settings: str) -> Path:
    return make_rules(challenge_store=str(tmp_path / "store"),
                      challenge_recipients="alice@example.com",
                      challenge_address="challenge@example.com", **settings)


@pytest.fixture
def setup(make_rules: Callable[..., Path], tmp_path: Path
          ) -> tuple[Engine, SqliteChallengeStore, RecordingMailer]:
    store = SqliteChallengeStore(tmp_path / "store")
    mailer = RecordingMailer()
    return challenge_engine(protecting(make_rules, tmp_path), store, mailer), store, mailer


def deliver(engine: Engine, sender: str, rcpts: list[str], headers: str = "",
            body: str = "hello\r\n") -> Outcome:
    s = engine.session()
    s.connect("192.0.2.10", "mx.else.example", "smtpd")
    s.helo("mx.else.example", False)
    assert s.mail(sender, [], "", "").action is Action.CONTINUE
    for rcpt in rcpts:
        decision = s.rcpt(rcpt, [], "")
        assert decision.action is Action.CONTINUE, decision
    s.data("")
    for line in ("Subject: test\r\n" + headers).splitlines():
        name, _, value = line.partition(":")
        s.header(name, value.strip().encode())
    s.body(body.encode())
    return s.eom("")


def token_of(mailer: RecordingMailer) -> str:
    challenge = email.message_from_bytes(mailer.sent[-1][2])
    match = re.search(r"challenge\+([0-9a-f]+)@example\.com", challenge["From"])
    assert match is not None
    return match.group(1)


def test_round_trip(setup: tuple[Engine, SqliteChallengeStore, RecordingMailer]) -> None:
    engine, store, mailer = setup
    first = deliver(engine, STRANGER, ["<alice@example.com>"], body="first\r\n")
    assert first.decision.action is Action.DISCARD
    assert first.decision.entry.name == "challenged_by_filter"
    (sender, rcpts, challenge), = mailer.sent
    assert (sender, rcpts) == ("", ["stranger@else.example"])  # from the null sender
    assert b"Auto-Submitted: auto-replied" in challenge

    second = deliver(engine, STRANGER, ["<alice@example.com>"], body="second\r\n")
    assert second.decision.action is Action.DISCARD
    assert len(mailer.sent) == 1  # one challenge per pair
    assert len(store.pending()) == 2

    answer = deliver(engine, STRANGER, [f"<challenge+{token_of(mailer)}@example.com>"])
    assert answer.decision.action is Action.DISCARD  # the answer itself is consumed
    released = mailer.sent[1:]
    assert [(s, r) for s, r, _ in released] == [("stranger@else.example",
                                                 ["alice@example.com"])] * 2
    assert [b"first" in d for _, _, d in released] == [True, False]
    assert store.pending() == [] and store.released() == []
    assert store.allowed("alice@example.com", "stranger@else.example")

    later = deliver(engine, STRANGER, ["<alice@example.com>"])
    assert later.decision.action is Action.CONTINUE and later.delete_recipients == []


def test_only_the_protected_copy_is_held(
        setup: tuple[Engine, SqliteChallengeStore, RecordingMailer]) -> None:
    engine, store, _ = setup
    outcome = deliver(engine, STRANGER, ["<alice@example.com>", "<postmaster@example.com>"])
    assert outcome.decision.action is Action.CONTINUE
    assert outcome.delete_recipients == ["<alice@example.com>"]
    assert [h.recipient for h in store.pending()] == ["alice@example.com"]


def test_a_tagged_recipient_is_its_mailbox(
        setup: tuple[Engine, SqliteChallengeStore, RecordingMailer]) -> None:
    engine, store, mailer = setup
    outcome = deliver(engine, STRANGER, ["<Alice+news@EXAMPLE.com>", "<postmaster@example.com>"])
    assert outcome.delete_recipients == ["<Alice+news@EXAMPLE.com>"]  # as the MTA knows it
    assert [h.recipient for h in store.pending()] == ["alice@example.com"]
    assert len(mailer.sent) == 1


def test_a_white_entry_at_rcpt_spares_only_its_recipient(
        make_rules: Callable[..., Path], tmp_path: Path) -> None:
    rules = make_rules(challenge_store=str(tmp_path / "store"),
                       challenge_recipients="alice@example.com, abuse@example.com",
                       challenge_address="challenge@example.com")
    with open(rules / "access", "a") as access:
        access.write("\nrecipient abuse@example.com permit skip=challenge\n")
    store = SqliteChallengeStore(tmp_path / "store")
    engine = challenge_engine(rules, store, RecordingMailer())
    outcome = deliver(engine, STRANGER, ["<abuse@example.com>", "<alice@example.com>"])
    assert outcome.delete_recipients == ["<alice@example.com>"]
    assert [h.recipient for h in store.pending()] == ["alice@example.com"]


@pytest.mark.parametrize("sender, headers", [
    ("<>", ""),
    (STRANGER, "List-Id: <news.else.example>"),
    (STRANGER, "Precedence: bulk"),
    (STRANGER, "Auto-Submitted: auto-replied"),
])
def test_never_challenged(setup: tuple[Engine, SqliteChallengeStore, RecordingMailer],
                          sender: str, headers: str) -> None:
    engine, store, mailer = setup
    outcome = deliver(engine, sender, ["<alice@example.com>"], headers)
    assert outcome.decision.action is Action.CONTINUE and outcome.delete_recipients == []
    assert mailer.sent == [] and store.pending() == []


# --- no backscatter ----------------------------------------------------------------------

@pytest.mark.parametrize("result", ["fail", "softfail", "neutral", "none", "permerror",
                                    "temperror"])
def test_a_sender_spf_does_not_vouch_for_is_never_challenged(
        make_rules: Callable[..., Path], tmp_path: Path, result: str) -> None:
    """Ten forged senders, ten held messages, not one challenge: the mail stays held,
    unchallenged, until released or expired."""
    store, mailer = SqliteChallengeStore(tmp_path / "store"), RecordingMailer()
    spf = Spf(**{f"forged{i}_example": result for i in range(10)})
    engine = challenge_engine(protecting(make_rules, tmp_path), store, mailer, spf)
    for i in range(10):
        outcome = deliver(engine, f"<victim{i}@forged{i}.example>", ["<alice@example.com>"])
        assert outcome.decision.entry.name == "challenged_by_filter"
    assert mailer.sent == [] and len(store.pending()) == 10
    assert spf.asked[0] == ("192.0.2.10", "victim0@forged0.example", "mx.else.example")


def test_a_genuine_message_of_the_pair_gets_the_challenge_later(
        make_rules: Callable[..., Path], tmp_path: Path) -> None:
    store, mailer = SqliteChallengeStore(tmp_path / "store"), RecordingMailer()
    spf = Spf(else_example="fail")
    engine = challenge_engine(protecting(make_rules, tmp_path), store, mailer, spf)
    deliver(engine, STRANGER, ["<alice@example.com>"])
    assert mailer.sent == []
    spf.results.clear()  # the sender's SPF now passes from this client
    deliver(engine, STRANGER, ["<alice@example.com>"])
    deliver(engine, STRANGER, ["<alice@example.com>"])
    assert len(mailer.sent) == 1 and len(store.pending()) == 3


@pytest.mark.parametrize("headers, rules", [
    ("X-Offer: buy now", ["header X-Offer=/buy\\snow/ add_header X-Suspect: yes"]),
    ("X-Offer: hold me", ["header X-Offer=/hold\\sme/ quarantine review"]),
    ("X-Offer: trial", ["header X-Offer=/trial/ monitor reject"]),
])
def test_marked_mail_is_never_challenged(make_rules: Callable[..., Path], tmp_path: Path,
                                         headers: str, rules: list[str]) -> None:
    rules_dir = protecting(make_rules, tmp_path)
    with open(rules_dir / "filters", "a") as filters:
        filters.write("".join(f"\n{r}\n" for r in rules))
    store, mailer = SqliteChallengeStore(tmp_path / "store"), RecordingMailer()
    engine = challenge_engine(rules_dir, store, mailer)
    deliver(engine, STRANGER, ["<alice@example.com>"], headers)
    assert mailer.sent == [] and len(store.pending()) == 1
    deliver(engine, STRANGER, ["<alice@example.com>"])  # unmarked: the challenge goes
    assert len(mailer.sent) == 1


def test_mail_spamd_tags_is_never_challenged(make_rules: Callable[..., Path],
                                              tmp_path: Path) -> None:
    class Scores:
        def __init__(self) -> None:
            self.score = 6.0  # over spam_tag_score (5.0), under spam_reject_score

        def check(self, message: BinaryIO, size: int) -> SpamResult:
            return SpamResult(self.score, 5.0, ("TEST",))

    store, mailer, scores = SqliteChallengeStore(tmp_path / "store"), RecordingMailer(), Scores()
    rules = protecting(make_rules, tmp_path, spamd="tcp:127.0.0.1:783")
    engine = Engine(load(rules), Services(challenges=store, mailer=mailer, spf=Spf(), spam=scores,
                                          run_later=lambda work: work()))
    deliver(engine, STRANGER, ["<alice@example.com>"])
    assert mailer.sent == [] and len(store.pending()) == 1
    scores.score = 1.0
    deliver(engine, STRANGER, ["<alice@example.com>"])
    assert len(mailer.sent) == 1


def test_challenges_per_client_and_domain_are_limited(make_rules: Callable[..., Path],
                                                      tmp_path: Path) -> None:
    store, mailer = SqliteChallengeStore(tmp_path / "store"), RecordingMailer()
    engine = challenge_engine(protecting(make_rules, tmp_path, challenge_limit="3/1h"),
                              store, mailer)
    for i in range(6):
        deliver(engine, f"<sender{i}@else.example>", ["<alice@example.com>"])
    assert len(mailer.sent) == 3 and len(store.pending()) == 6


def test_a_known_sender_needs_no_spf(make_rules: Callable[..., Path], tmp_path: Path) -> None:
    """A sender that answered a challenge before is genuine for another recipient too."""
    store, mailer = SqliteChallengeStore(tmp_path / "store"), RecordingMailer()
    store.allow("bob@example.com", "stranger@else.example")
    spf = Spf(else_example="fail")
    engine = challenge_engine(protecting(make_rules, tmp_path), store, mailer, spf)
    deliver(engine, STRANGER, ["<alice@example.com>"])
    assert len(mailer.sent) == 1 and spf.asked == []


def test_answer_from_someone_else_releases_nothing(
        setup: tuple[Engine, SqliteChallengeStore, RecordingMailer]) -> None:
    engine, store, mailer = setup
    deliver(engine, STRANGER, ["<alice@example.com>"])
    deliver(engine, "<forger@evil.example>", [f"<challenge+{token_of(mailer)}@example.com>"])
    assert len(mailer.sent) == 1 and len(store.pending()) == 1
    assert not store.allowed("alice@example.com", "forger@evil.example")


def test_failed_release_is_kept_for_redelivery(
        setup: tuple[Engine, SqliteChallengeStore, RecordingMailer]) -> None:
    engine, store, mailer = setup
    deliver(engine, STRANGER, ["<alice@example.com>"])
    token = token_of(mailer)
    mailer.fail = True
    deliver(engine, STRANGER, [f"<challenge+{token}@example.com>"])
    assert len(store.released()) == 1  # not lost: the next start hands it over again


def test_challenge_store_needs_an_address(make_rules: Callable[..., Path], tmp_path: Path
                                          ) -> None:
    from policy_milter.rules.source import RuleErrors
    rules = make_rules(challenge_store=str(tmp_path / "s"))
    with pytest.raises(RuleErrors) as info:
        load(rules)
    assert info.value.errors == [f"{rules / 'policy.conf'}:22: challenge_store needs "
                                 "challenge_address (where challenged senders answer)"]


def test_admin_commands(setup: tuple[Engine, SqliteChallengeStore, RecordingMailer],
                        make_rules: Callable[..., Path], tmp_path: Path) -> None:
    engine, store, _ = setup
    deliver(engine, STRANGER, ["<alice@example.com>"])
    deliver(engine, "<other@else.example>", ["<alice@example.com>"])
    rules = engine.plan.policy.source

    def challenges(*args: str) -> subprocess.CompletedProcess[str]:
        return cli("challenges", "--rules", rules, *args)

    listed = challenges("list")
    assert listed.returncode == 0 and len(listed.stdout.splitlines()) == 2
    assert "stranger@else.example -> alice@example.com" in listed.stdout
    first, second = (line.split()[0] for line in listed.stdout.splitlines())
    assert challenges("drop", first).returncode == 0
    assert challenges("drop", first).returncode == 3  # already gone
    released = challenges("release", second)  # no MTA listening on the configured port
    assert released.returncode == 3 and "dependency_failure" in released.stderr
    assert [h.id for h in store.released()] == [second]
    assert challenges("expire").stdout.strip() == "expired 0 held message(s)"
