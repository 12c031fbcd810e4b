"""Rows 8 and 19a (DNS), 27-30 (content, viruses, spam) and 31 (challenge-response) through a
real Postfix, as an SMTP client sees them and as the Maildir receives them.

The module's site: rbldnsd serving the lists bl.test and dbl.test behind dnsmasq, which also
holds the A and PTR records and is the milter's only resolver (dns_nameservers = 127.0.0.1);
the real clamd and spamd; a policy-milter on a copy of tests/fixtures/rules with the DNS and
scanner settings of tests/milter/test_dns_wire.py and test_content_wire.py, content rules in
``filters``, and challenge-response for an account of its own (PROTECTED); and a Postfix wired
to it whose port 25 listener is the milter's ``challenge_smtp``.  A second, faulty site has a
resolver that fails (the project's FakeDns) and a clamd that never answers (FakeScanner), for
the tempfail paths.

Everything listens on 127.0.0.1 or a unix socket, and nothing asks the outside world: the milter
asks dnsmasq or FakeDns only, Postfix does no DNS, and Postfix delivers every message it accepts,
whatever the recipient's domain, into its one Maildir (tests/support/postfix.py), which is how a
challenge sent to a stranger's remote address is read back here.  Clients look remote through
XCLIENT.  Replies come from the catalogue, never from this file.

What a client cannot see through Postfix: rows 30 and 31 are outcomes, not replies (the client
gets Postfix's own "250 2.0.0 Ok: queued as ..." and the catalogue text goes to the milter's
log, which is checked instead).  The milter expires held mail from the mail flow at most every
600 s, which a test cannot wait for, so expiry is driven with ``policy-milter challenges
expire``.
"""

from __future__ import annotations

import re
import signal
import smtplib
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

from policy_milter import catalogue
from policy_milter.services.challenges import SqliteChallengeStore
from tests.conftest import copy_rules
from tests.e2e.conftest import (
    LOCAL_DOMAINS,
    MAILBOXES,
    RELAY_DOMAINS,
    RELAY_RECIPIENTS,
    USERS,
    milter_dir,
)
from tests.e2e.test_postfix_envelope import (
    Response,
    command,
    expect,
    marker,
    message,
    remote,
    send,
)
from tests.milter.conftest import MilterProcess, start_milter
from tests.support.cli import cli
from tests.support.dnsservers import Dnsmasq, FakeDns, Rbldnsd
from tests.support.hostile import after_many_fields, nested_zips, with_attachment
from tests.support.postfix import Delivered, PostfixInstance, reply
from tests.support.scanners import (
    ClamdServer,
    FakeScanner,
    SpamdServer,
    clean_message,
    eicar_attachment,
    eicar_inline,
    eicar_nested,
    gtube_message,
)

T = TypeVar("T")

# The lists and DNS settings of tests/milter/test_dns_wire.py.
LISTS = ["bl.test client codes=127.0.0.2-127.0.0.11 txt", "dbl.test sender,helo"]
ZONES = {"bl.test": ("ip4set", ":127.0.0.2:Listed $\n192.0.2.77\n"),
         "dbl.test": ("dnset", ":127.0.1.2:Domain $ listed\nspam.example\n")}
DNS_SETTINGS = {"dnsbl": "dnsbl", "rdns": "forward-confirmed", "dns_timeout": "1",
                "dns_budget": "2"}
# The content rules of tests/milter/test_content_wire.py, after the fixture's own filters.
CONTENT_RULES = ["attachment *.exe,*.scr reject", "header Subject=/lottery/i discard"]

PROTECTED = "guarded@example.com"  # an account of this module's own: other mail is unaffected
CHALLENGE_ADDRESS = "challenge@example.com"
RCPT = "postmaster@example.com"

GOOD = ("192.0.2.20", "mx.good.test")  # its PTR resolves back to it; listed nowhere
STRANGER = ("192.0.2.40", "mx.else.test")  # the challenged senders' mail server, also clean
HOST_RECORDS = [GOOD[::-1], STRANGER[::-1], ("listed.test", "192.0.2.77")]
PTR_RECORDS = [("192.0.2.21", "forged.test")]  # forged.test has no A record
# SPF: the challenged senders' domain sends from STRANGER only; forged.example from nowhere.
SPF_RECORDS = [("else.example", f"v=spf1 ip4:{STRANGER[0]} -all"),
               ("forged.example", "v=spf1 -all")]


def dns_rules(dest: Path, port: int, **settings: str) -> Path:
    rules = copy_rules(dest, dns_nameservers="127.0.0.1", dns_port=str(port),
                       **{**DNS_SETTINGS, **settings})
    (rules / "dnsbl").write_text("".join(f"{z}\n" for z in LISTS))
    return rules


# --- the sites ---------------------------------------------------------------------------------

@dataclass
class Site:
    """A milter, the Postfix wired to it, and the rules the milter runs on."""

    milter: MilterProcess
    postfix: PostfixInstance
    rules: Path

    def log_after(self, before: int) -> list[str]:
        return self.milter.log_lines()[before:]


def _stop_milter(milter: MilterProcess) -> None:
    assert milter.stop() == 0, "the milter did not stop cleanly"


def start_site(stack: ExitStack, work: Path, rules: Path,
               mailboxes: Sequence[str] = MAILBOXES) -> Site:
    """The milter first (Postfix warns at start when its milter socket is missing), then
    Postfix; ``stack`` stops both, Postfix first."""
    postfix = PostfixInstance(work / "postfix", users=USERS, local_domains=LOCAL_DOMAINS,
                              mailboxes=mailboxes, relay_domains=RELAY_DOMAINS,
                              relay_recipients=RELAY_RECIPIENTS)
    milter = start_milter(rules, milter_dir(postfix.milter_directory))
    stack.callback(_stop_milter, milter)
    stack.callback(postfix.stop)
    postfix.start()
    return Site(milter, postfix, rules)


def workdir(root: Path, name: str) -> Path:
    """Short (unix socket paths) and enterable by user postfix (smtpd, virtual)."""
    work = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=root))
    work.chmod(0o711)
    return work


def reload_milter(site: Site) -> None:
    """SIGHUP, and wait until the milter says the new rules are in force."""
    before = len(site.milter.log_lines())
    site.milter.proc.send_signal(signal.SIGHUP)
    line = eventually(lambda: next((x for x in site.log_after(before) if "event=reload " in x),
                                   None), what="the milter to reload")
    assert "status=ok" in line, line


@pytest.fixture(scope="module")
def site(e2e_root: Path) -> Iterator[Site]:
    with ExitStack() as stack:
        work = workdir(e2e_root, "content")
        rbl = stack.enter_context(Rbldnsd(work / "rbl", ZONES))
        resolver = stack.enter_context(Dnsmasq(
            work / "dnsmasq", host_records=HOST_RECORDS, ptr_records=PTR_RECORDS,
            txt_records=SPF_RECORDS, forward={"bl.test": rbl.port, "dbl.test": rbl.port}))
        clamd = stack.enter_context(ClamdServer(work / "clamd"))
        spamd = stack.enter_context(SpamdServer(work / "spamd"))
        # challenge_smtp is Postfix's port 25 listener, known once Postfix runs (it picks free
        # ports at start), and Postfix wants the milter up first: start with a placeholder,
        # never used (no mail flows before the reload), then set it and reload (SIGHUP).
        rules = dns_rules(work / "rules", resolver.port, clamd=clamd.tcp_address,
                          spamd=spamd.address, spam_tag_score="5.0", spam_reject_score="10",
                          challenge_store=str(work / "store"), challenge_recipients=PROTECTED,
                          challenge_address=CHALLENGE_ADDRESS, challenge_smtp="127.0.0.1:9")
        with open(rules / "filters", "a") as filters:
            filters.write("".join(f"{r}\n" for r in CONTENT_RULES))
        with open(rules / "accounts", "a") as accounts:
            accounts.write(f"{PROTECTED}\n")
        running = start_site(stack, work, rules, mailboxes=(*MAILBOXES, PROTECTED))
        conf = rules / "policy.conf"
        text, found = re.subn(r"(?m)^challenge_smtp = .*$",
                              f"challenge_smtp = 127.0.0.1:{running.postfix.smtp_port}",
                              conf.read_text())
        assert found == 1
        conf.write_text(text)
        reload_milter(running)
        yield running


FAULTY_CLEAN = ("192.0.2.30", "mx30.good.test")  # resolves both ways, listed nowhere
FAULTY_LIST_FAILS = ("192.0.2.31", "mx31.good.test")  # its bl.test lookup: SERVFAIL
FAULTY_PTR_FAILS = ("192.0.2.32", "[UNAVAILABLE]")  # its PTR lookup: SERVFAIL


@pytest.fixture(scope="module")
def faulty(e2e_root: Path) -> Iterator[Site]:
    """A site whose resolver fails for some names and whose clamd never answers."""
    with ExitStack() as stack:
        work = workdir(e2e_root, "faulty")
        fake = stack.enter_context(FakeDns())
        for addr, name in (FAULTY_CLEAN, FAULTY_LIST_FAILS):
            fake.add(f"{addr.split('.')[3]}.2.0.192.in-addr.arpa", "PTR", f"{name}.")
            fake.add(name, "A", addr)
        fake.servfail("31.2.0.192.bl.test")
        fake.servfail("32.2.0.192.in-addr.arpa")
        scanner = stack.enter_context(FakeScanner("hang"))
        rules = dns_rules(work / "rules", fake.port, clamd=scanner.address, clamd_timeout="2")
        yield start_site(stack, work, rules)


# --- helpers -----------------------------------------------------------------------------------

def eventually(probe: Callable[[], T | None], timeout: float = 20,
               what: str = "a condition") -> T:
    """``probe()``'s first true answer, polled until ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def client(postfix: PostfixInstance, host: tuple[str, str] = GOOD) -> smtplib.SMTP:
    """A session from ``host`` (address, name), which greets with its name."""
    addr, name = host
    greeting = name if not name.startswith("[") else "mx.sender.example"
    return remote(postfix, addr=addr, name=name, greeting=greeting)


def accepted(response: Response) -> None:
    """Postfix's own 250 after DATA: the client cannot tell a discarded message from any other."""
    code, enhanced, text = reply(response)
    assert (code, enhanced) == (250, "2.0.0") and text.startswith("Ok: queued as "), response


def tagged(raw: bytes, tag: str) -> bytes:
    """``raw`` with ``tag`` at the start of its (outer) Subject."""
    head, sep, rest = raw.partition(b"\r\nSubject: ")
    assert sep, raw[:200]
    return head + sep + tag.encode() + b" " + rest


def attachment(tag: str, name: str) -> bytes:
    return (f"From: <a@sender.example>\r\nTo: <{RCPT}>\r\nSubject: {tag} files\r\n"
            "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
            "Content-Type: text/plain\r\n\r\nsee attached\r\n--b\r\n"
            "Content-Type: application/octet-stream\r\n"
            f"Content-Disposition: attachment; filename={name}\r\n"
            "Content-Transfer-Encoding: base64\r\n\r\nTVqQ\r\n--b--\r\n").encode()


def arrivals(postfix: PostfixInstance, recipient: str) -> list[Delivered]:
    """What has arrived for ``recipient`` so far (without waiting for the queue)."""
    return [d for d in postfix.delivered(wait=False) if d.recipient == recipient]


def nothing_left(postfix: PostfixInstance) -> None:
    """No queue file at all: a refused or deferred message left no trace in Postfix."""
    assert postfix.queue_files() == [], postfix.queue_files()


def decision_line(site: Site, before: int, *texts: str) -> str:
    """The milter's newest decision line (after line ``before``) with all of ``texts``."""
    def find() -> str | None:
        lines = [x for x in site.log_after(before)
                 if "event=decision" in x and all(t in x for t in texts)]
        return lines[-1] if lines else None
    return eventually(find, timeout=10, what=f"a decision line with {texts}")


def challenges_cli(rules: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return cli("challenges", "--rules", str(rules), *args)


# --- rows 8 and 19a: DNS, decided at MAIL FROM ---------------------------------------------------

DNS_CASES = {
    "PTR that resolves back": (GOOD, "a@sender.example", None, ""),
    "8 no PTR": (("192.0.2.22", "[UNAVAILABLE]"), "a@sender.example", "not_allowed_to_send",
                 "no PTR record"),
    "8 PTR not forward-confirmed": (("192.0.2.21", "forged.test"), "a@sender.example",
                                    "not_allowed_to_send", "does not resolve back"),
    "19a client listed": (("192.0.2.77", "listed.test"), "a@sender.example", "access_denied",
                          "bl.test"),
    "19a sender domain listed": (GOOD, "a@spam.example", "access_denied", "dbl.test"),
}


@pytest.mark.parametrize("host, sender, entry, detail", DNS_CASES.values(), ids=DNS_CASES.keys())
def test_dns_decision_at_mail_from(site: Site, host: tuple[str, str], sender: str,
                                   entry: str | None, detail: str) -> None:
    tag = marker()
    before = len(site.milter.log_lines())
    with client(site.postfix, host) as s:
        got = command(s, f"MAIL FROM:<{sender}>")
        if entry is not None:
            expect(got, entry)
        else:
            assert got[0] == 250, got
            assert command(s, f"RCPT TO:<{RCPT}>")[0] == 250
            accepted(s.data(message(tag, sender=sender)))
    if entry is None:
        copies = site.postfix.deliveries_of(tag)
        assert [(c.recipient, c.sender) for c in copies] == [(RCPT, sender)]
        return
    check = "rdns" if entry == "not_allowed_to_send" else "dnsbl"
    line = decision_line(site, before, f"client={host[0]} ", "stage=mail")
    assert f"check={check} " in line and detail in line, line


def test_dns_failure_tempfails_at_mail_from_dnsbl(faulty: Site) -> None:
    """A SERVFAIL from the resolver is never a listing: 451 4.4.3, within dns_budget."""
    dns_failure(faulty, FAULTY_LIST_FAILS, "dnsbl", "31.2.0.192.bl.test")


def test_dns_failure_tempfails_at_mail_from_rdns(faulty: Site) -> None:
    dns_failure(faulty, FAULTY_PTR_FAILS, "rdns", "32.2.0.192.in-addr.arpa")


def dns_failure(site: Site, host: tuple[str, str], check: str, name: str) -> None:
    before = len(site.milter.log_lines())
    with client(site.postfix, host) as s:
        started = time.monotonic()
        got = command(s, "MAIL FROM:<a@sender.example>")
        elapsed = time.monotonic() - started
    expect(got, "dns_tempfail")
    assert elapsed < 2 + 1  # dns_budget plus slack: never Postfix's milter timeout
    line = decision_line(site, before, f"client={host[0]} ", "action=tempfail")
    assert f"check={check} " in line and "dns failed" in line and name in line, line


# --- rows 27, 28, 29, 30: the end of the message ------------------------------------------------

VIRUSES = {"inline": eicar_inline, "base64 attachment": eicar_attachment,
           "nested message": eicar_nested}


@pytest.mark.parametrize("build", VIRUSES.values(), ids=VIRUSES.keys())
def test_virus_is_refused_after_data_27(site: Site, build: Callable[[], bytes]) -> None:
    tag = marker()
    before = len(site.milter.log_lines())
    with client(site.postfix) as s:
        expect(send(s, "a@sender.example", (RCPT,), tagged(build(), tag)), "virus_found")
    nothing_left(site.postfix)
    assert site.postfix.deliveries_of(tag) == []
    assert "Eicar-Test-Signature" in decision_line(site, before, "check=virus", "action=reject")


def test_content_rule_refuses_an_attachment_28(site: Site) -> None:
    tag = marker()
    before = len(site.milter.log_lines())
    with client(site.postfix) as s:
        expect(send(s, "a@sender.example", (RCPT,), attachment(tag, "setup.exe")),
               "content_rejected")
        accepted(send(s, "a@sender.example", (RCPT,), attachment(tag, "notes.txt")))
    copies = site.postfix.deliveries_of(tag)
    assert len(copies) == 1 and "notes.txt" in copies[0].message.as_string()
    decision_line(site, before, "check=filters", "action=reject")


def test_dodges_that_once_worked_are_refused_through_postfix_28(site: Site) -> None:
    """The content rules through Postfix: an .exe three zips deep in an attachment called
    report.pdf is refused; a Subject after 1,200 other fields is found (the rule
    discards: 250, and nothing arrives)."""
    hidden, late = marker(), marker()
    pdf = with_attachment(nested_zips(3), "report.pdf", "application/pdf", subject=hidden)
    many = after_many_fields(1200, f"Subject: {late} you won the LOTTERY".encode())
    with client(site.postfix) as s:
        expect(send(s, "a@sender.example", (RCPT,), pdf), "content_rejected")
        accepted(send(s, "a@sender.example", (RCPT,), many))
    assert site.postfix.deliveries_of(hidden) == []
    site.postfix.wait_idle()
    assert site.postfix.deliveries_of(late) == []


def test_spam_over_the_reject_score_is_refused_29(site: Site) -> None:
    tag = marker()
    before = len(site.milter.log_lines())
    with client(site.postfix) as s:
        expect(send(s, "a@sender.example", (RCPT,), tagged(gtube_message(), tag)),
               "spam_rejected")
    nothing_left(site.postfix)
    assert site.postfix.deliveries_of(tag) == []
    assert "GTUBE" in decision_line(site, before, "check=spam", "action=reject")


def test_discarded_message_gets_250_and_never_arrives_30(site: Site) -> None:
    tag = marker()
    before = len(site.milter.log_lines())
    lottery = (f"From: <a@sender.example>\r\nTo: <{RCPT}>\r\n"
               f"Subject: {tag} You won the LOTTERY\r\n\r\nclaim now\r\n").encode()
    with client(site.postfix) as s:
        accepted(send(s, "a@sender.example", (RCPT,), lottery))
    assert site.postfix.deliveries_of(tag) == []
    line = decision_line(site, before, "check=filters", "action=discard")
    assert catalogue.get("deleted_by_filter").text in line
    assert "milter-discard" in site.postfix.log()


def test_clean_message_arrives_once_with_the_spam_headers(site: Site) -> None:
    tag = marker()
    with client(site.postfix) as s:
        accepted(send(s, "a@sender.example", (RCPT,), tagged(clean_message(), tag)))
    copies = site.postfix.deliveries_of(tag)
    assert [(c.recipient, c.sender) for c in copies] == [(RCPT, "a@sender.example")]
    msg = copies[0].message
    status, = msg.get_all("X-Spam-Status")
    score, = msg.get_all("X-Spam-Score")
    assert re.fullmatch(r"No, score=(-?\d+\.\d) required=5\.0 tests=\S+", status), status
    assert status.split("score=")[1].split()[0] == score
    assert float(score) < 5.0


def test_a_message_too_big_to_check_arrives_saying_so(site: Site) -> None:
    """Over spam_max_size (the default 2M) spamd is not asked; under the default
    unscannable_action the message arrives, its X-Policy-Unchecked header saying why."""
    tag = marker()
    line = "y" * 78 + "\r\n"
    body = line * (2 * 1024**2 // len(line) + 100)
    with client(site.postfix) as s:
        accepted(send(s, "a@sender.example", ("big@catchall.example",),
                      message(tag, to="big@catchall.example", body=body)))
    copy, = site.postfix.deliveries_of(tag)
    unchecked, = copy.message.get_all("X-Policy-Unchecked")
    assert re.fullmatch(r"spam: message of \d+ bytes is over spam_max_size \(2097152\)",
                        unchecked), unchecked
    assert copy.message.get_all("X-Spam-Status") is None  # not scanned, not pretended


def test_scanner_tempfail_at_end_of_message_leaves_nothing(faulty: Site) -> None:
    """clamd never answers (clamd_timeout = 2): 451 4.3.0 after DATA, and Postfix keeps no
    copy, neither delivered nor queued (the client will send it again)."""
    tag = marker()
    before = len(faulty.milter.log_lines())
    with client(faulty.postfix, FAULTY_CLEAN) as s:
        started = time.monotonic()
        got = send(s, "a@sender.example", (RCPT,), message(tag))
        elapsed = time.monotonic() - started
    expect(got, "scanner_tempfail")
    assert elapsed < 2 + 3
    nothing_left(faulty.postfix)
    assert faulty.postfix.deliveries_of(tag) == []
    assert "clamd" in decision_line(faulty, before, "check=virus", "action=tempfail")


# --- row 31: challenge-response -----------------------------------------------------------------

def challenge_for(site: Site, stranger: str) -> tuple[Delivered, str]:
    """The one challenge the milter sent ``stranger`` through Postfix, and its token."""
    challenge, = eventually(lambda: arrivals(site.postfix, stranger),
                            what=f"a challenge to {stranger}")
    msg = challenge.message
    match = re.fullmatch(r"challenge\+([0-9a-f]{16,64})@example\.com", str(msg["From"]))
    assert match is not None, msg["From"]
    token = match.group(1)
    assert challenge.sender == ""  # from the null sender: it cannot loop or bounce
    assert msg["Auto-Submitted"] == "auto-replied"
    assert str(msg["To"]) == stranger
    assert token in str(msg["Subject"]) and PROTECTED in str(msg["Subject"])
    assert f"challenge+{token}@example.com" in msg.get_content()
    return challenge, token


@pytest.fixture
def store(site: Site) -> Iterator[SqliteChallengeStore]:
    """The site's challenge store, opened beside the milter (SQLite in WAL mode allows it)."""
    text = (site.rules / "policy.conf").read_text()
    path = re.search(r"(?m)^challenge_store = (.+)$", text)
    assert path is not None
    opened = SqliteChallengeStore(Path(path.group(1)))
    yield opened
    opened.close()


def held_message(tag: str, stranger: str) -> bytes:
    """A message whose bytes a careless re-injection would change: a folded field, lines
    that start with dots (SMTP dot-stuffing) and a line that starts with "From "."""
    return (f"From: <{stranger}>\r\nTo: <{PROTECTED}>\r\nSubject: e2e {tag}\r\n"
            "X-Folded: part one\r\n\tpart two\r\n"
            f"Message-ID: <{tag}@client.test>\r\n\r\n"
            "first\r\n.one dot\r\n..two dots\r\nFrom the start\r\n").encode()


def test_challenge_round_trip_31(site: Site, store: SqliteChallengeStore) -> None:
    """Held, challenged through Postfix, answered through Postfix, released through Postfix:
    each held message arrives once, unchanged; then the stranger's mail goes straight in."""
    stranger = f"s-{marker()}@else.example"
    first, also, answer, later = marker(), marker(), marker(), marker()
    before = len(site.milter.log_lines())
    with client(site.postfix, STRANGER) as s:
        accepted(send(s, stranger, (PROTECTED,), held_message(first, stranger)))
    _, token = challenge_for(site, stranger)
    with client(site.postfix, STRANGER) as s:  # held too, without a second challenge
        accepted(send(s, stranger, (PROTECTED,), message(also, stranger, PROTECTED)))
    site.postfix.wait_idle()
    assert site.postfix.deliveries_of(first) == [] and site.postfix.deliveries_of(also) == []
    line = decision_line(site, before, f"sender={stranger} ", "check=challenge")
    assert "action=discard" in line and catalogue.get("challenged_by_filter").text in line
    listed = challenges_cli(site.rules, "list")
    assert listed.returncode == 0, listed
    assert listed.stdout.count(f" {stranger} -> {PROTECTED}\n") == 2, listed.stdout

    with client(site.postfix, STRANGER) as s:  # the stranger replies to the challenge
        accepted(send(s, stranger, (f"challenge+{token}@example.com",),
                      message(answer, stranger, f"challenge+{token}@example.com")))
    eventually(lambda: site.postfix.deliveries_of(first) and site.postfix.deliveries_of(also),
               what="the released messages")
    eventually(lambda: store.released() == [], what="the store to forget the released messages")
    site.postfix.wait_idle()
    released, = site.postfix.deliveries_of(first)
    assert (released.recipient, released.sender) == (PROTECTED, stranger)
    assert "X-Folded: part one\n\tpart two\n" in released.path.read_text()
    assert released.message.get_content() == "first\n.one dot\n..two dots\nFrom the start\n"
    assert len(released.message.get_all("X-Spam-Status")) == 1  # scanned once more, tagged once
    assert [c.recipient for c in site.postfix.deliveries_of(also)] == [PROTECTED]
    assert store.allowed(PROTECTED, stranger)
    assert f" {stranger} -> " not in challenges_cli(site.rules, "list").stdout
    assert site.postfix.deliveries_of(answer) == []  # the answer itself is consumed

    with client(site.postfix, STRANGER) as s:  # allowed now: straight through
        accepted(send(s, stranger, (PROTECTED,), message(later, stranger, PROTECTED)))
    assert [c.recipient for c in site.postfix.deliveries_of(later)] == [PROTECTED]
    assert len(site.postfix.deliveries_of(first)) == 1  # still exactly once
    assert len(arrivals(site.postfix, stranger)) == 1  # one challenge, never a second
    events = [x.split()[2] for x in site.log_after(before) if "event=challenge_" in x]
    assert sorted(events) == sorted(["event=challenge_held"] * 2 + [
        "event=challenge_sent", "event=challenge_answered"] + ["event=challenge_released"] * 2)


def test_only_the_protected_copy_is_held_31(site: Site) -> None:
    stranger = f"m-{marker()}@else.example"
    tag = marker()
    with client(site.postfix, STRANGER) as s:
        accepted(send(s, stranger, (PROTECTED, RCPT), message(tag, stranger, PROTECTED)))
    challenge_for(site, stranger)
    assert [c.recipient for c in site.postfix.deliveries_of(tag)] == [RCPT]


def test_a_sender_spf_fails_for_gets_no_challenge_31(site: Site) -> None:
    """No backscatter to forged senders: SPF (real pyspf against the test dnsmasq) fails
    for forged.example from this client, so the message is held and nobody is
    challenged.  A genuine sender's challenge, sent after, shows the milter did send
    what it was going to."""
    forged, genuine = f"f-{marker()}@forged.example", f"g-{marker()}@else.example"
    before = len(site.milter.log_lines())
    with client(site.postfix, STRANGER) as s:
        accepted(send(s, forged, (PROTECTED,), message(marker(), forged, PROTECTED)))
        accepted(send(s, genuine, (PROTECTED,), message(marker(), genuine, PROTECTED)))
    challenge_for(site, genuine)
    assert arrivals(site.postfix, forged) == []
    held = eventually(lambda: next((x for x in site.log_after(before)
                                    if "event=challenge_held" in x and f"sender={forged}" in x),
                                   None), what="the forged sender's message held")
    assert "challenge=no" in held and "SPF fail for forged.example" in held
    assert f" {forged} -> {PROTECTED}" in challenges_cli(site.rules, "list").stdout


def test_null_sender_and_auto_replies_are_never_challenged_31(site: Site) -> None:
    """No backscatter: the challenge itself is such a message."""
    bounce, auto = marker(), marker()
    stranger = f"a-{marker()}@else.example"
    before = len(site.milter.log_lines())
    with client(site.postfix, STRANGER) as s:
        accepted(send(s, "", (PROTECTED,), message(bounce, "mailer-daemon@else.example",
                                                   PROTECTED)))
        reply_msg = message(auto, stranger, PROTECTED).replace(
            b"\r\n\r\n", b"\r\nAuto-Submitted: auto-replied\r\n\r\n", 1)
        accepted(send(s, stranger, (PROTECTED,), reply_msg))
    assert [c.recipient for c in site.postfix.deliveries_of(bounce)] == [PROTECTED]
    assert [c.recipient for c in site.postfix.deliveries_of(auto)] == [PROTECTED]
    assert not [x for x in site.log_after(before) if "event=challenge_held" in x]
    assert arrivals(site.postfix, stranger) == []


def test_unanswered_challenge_expires_31(site: Site, store: SqliteChallengeStore,
                                         tmp_path: Path) -> None:
    """``policy-milter challenges expire`` with challenge_expire = 1s (the site's rules but for
    that setting, on the same store) once the message is older: it is gone from ``list`` and
    from the spool, and a late answer releases nothing."""
    stranger = f"x-{marker()}@else.example"
    tag, late = marker(), marker()
    with client(site.postfix, STRANGER) as s:
        accepted(send(s, stranger, (PROTECTED,), message(tag, stranger, PROTECTED)))
    _, token = challenge_for(site, stranger)
    held, = [h for h in store.pending() if h.sender == stranger]
    assert held.path.exists()
    expiring = copy_rules(tmp_path / "rules", source=site.rules, challenge_expire="1s")
    eventually(lambda: time.time() - held.queued_at > 1.2, what="the message to age")
    expired = challenges_cli(expiring, "expire")
    assert expired.returncode == 0, expired
    assert re.fullmatch(r"expired [1-9]\d* held message\(s\)", expired.stdout.strip()), expired
    listed = challenges_cli(site.rules, "list")
    assert listed.returncode == 0 and listed.stdout == "", listed
    assert not held.path.exists()

    before = len(site.milter.log_lines())
    with client(site.postfix, STRANGER) as s:
        accepted(send(s, stranger, (f"challenge+{token}@example.com",),
                      message(late, stranger, f"challenge+{token}@example.com")))
    line = eventually(lambda: next((x for x in site.log_after(before)
                                    if "event=challenge_answered" in x), None),
                      what="the late answer")
    assert "released=0" in line, line
    site.postfix.wait_idle()  # released=0: nothing was handed to the background thread
    assert site.postfix.deliveries_of(tag) == [] and site.postfix.deliveries_of(late) == []
    assert not store.allowed(PROTECTED, stranger)


def test_tagged_address_of_a_protected_account_is_challenged_31(site: Site) -> None:
    stranger = f"t-{marker()}@else.example"
    tag = marker()
    tagged_rcpt = PROTECTED.replace("@", "+news@")
    with client(site.postfix, STRANGER) as s:
        accepted(send(s, stranger, (tagged_rcpt,), message(tag, stranger, tagged_rcpt)))
    assert site.postfix.deliveries_of(tag) == []
