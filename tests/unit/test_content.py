"""Content rules: what one pass over the message finds, and what rules decide on it.

The forms an attacker tries are here beside the plain ones: a field after a thousand
others, a name inside a nested or renamed archive, any MIME depth, a regex built to
backtrack.  Whatever the pass cannot look at makes the message "not fully checked"
(``unscannable_action``), never a silent pass and never a retry that cannot succeed.
"""

from __future__ import annotations

import base64
import bz2
import gzip
import io
import threading
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path

import pytest

from policy_milter.content import (
    GlobPatterns,
    Limits,
    ScanResult,
    decode_field,
    scan,
)
from policy_milter.engine import UNCHECKED_HEADER, Engine, Outcome, Session
from policy_milter.message import MessageBuffer
from policy_milter.mime import Part, Walker
from policy_milter.rules.policy import load
from policy_milter.rules.source import RuleErrors
from policy_milter.services import Services
from tests.support.hostile import (
    after_many_fields,
    nested_messages,
    nested_multiparts,
    tarred,
    with_attachment,
    zipped,
)


def buffer_of(raw: bytes, threshold: int = 1 << 20) -> MessageBuffer:
    """Feed a raw message the way the MTA does: header fields, then body chunks."""
    buffer = MessageBuffer(threshold)
    for name, value in fields_of(raw):
        buffer.header(name, value)
    body = raw.replace(b"\r\n", b"\n").partition(b"\n\n")[2]
    for i in range(0, len(body), 7000):
        buffer.body(body[i:i + 7000].replace(b"\n", b"\r\n"))
    return buffer


def fields_of(raw: bytes) -> list[tuple[str, bytes]]:
    head = raw.replace(b"\r\n", b"\n").partition(b"\n\n")[0]
    fields: list[tuple[str, bytes]] = []
    for line in head.split(b"\n"):
        if line[:1] in (b" ", b"\t") and fields:
            name, value = fields[-1]
            fields[-1] = (name, value + b"\n" + line)
        else:
            name, _, value = line.partition(b":")
            fields.append((name.decode("utf-8", "surrogateescape"), value.lstrip()))
    return fields


def sample() -> bytes:
    msg = EmailMessage()
    msg["From"] = "a@sender.example"
    msg["Subject"] = "=?utf-8?q?Gr=C3=BC=C3=9Fe_und_Rabatt?="
    msg.set_content("Unsubscribe: caf\u00e9 \u00e9t\u00e9 special offer", charset="utf-8",
                    cte="quoted-printable")
    msg.add_attachment(b"MZ\x90", maintype="application", subtype="x-msdownload",
                       filename="invoice.pdf.exe")
    msg.add_attachment(zipped("docs/readme.txt", "payload.scr"), maintype="application",
                       subtype="zip", filename="archive.zip")
    inner = EmailMessage()
    inner["Subject"] = "inner"
    inner.set_content("nested text with a secret code")
    inner.add_attachment(b"x", maintype="application", subtype="octet-stream",
                         filename="inner.js")
    msg.add_attachment(inner)
    return msg.as_bytes()


# --- the walker ---------------------------------------------------------------------------

class Recorder:
    """Everything a walk hands its visitor."""

    def __init__(self) -> None:
        self.fields: list[tuple[str, str]] = []
        self.parts: list[Part] = []
        self.texts: dict[int, bytearray] = {}

    def field(self, name: str, value: str) -> None:
        self.fields.append((name, value))

    def part(self, part: Part) -> None:
        self.parts.append(part)

    def data(self, part: Part, chunk: bytes) -> None:
        self.texts.setdefault(id(part), bytearray()).extend(chunk)

    def end(self, part: Part) -> None:
        pass


def walk(raw: bytes, max_depth: int = 100) -> Recorder:
    recorder = Recorder()
    Walker(buffer_of(raw).open(), recorder, max_depth, float("inf")).run()
    return recorder


def test_the_walker_sees_every_part_once() -> None:
    seen = walk(sample())
    assert [p.content_type for p in seen.parts] == [
        "multipart/mixed", "text/plain", "application/x-msdownload", "application/zip",
        "message/rfc822", "multipart/mixed", "text/plain", "application/octet-stream"]
    assert [p.depth for p in seen.parts] == [0, 1, 1, 1, 1, 2, 3, 3]
    assert [p.filename for p in seen.parts if p.filename] == [
        "invoice.pdf.exe", "archive.zip", "inner.js"]
    texts = [bytes(t) for t in seen.texts.values()]
    assert any("café été special offer".encode() in t for t in texts)  # quoted-printable
    assert zipped("docs/readme.txt", "payload.scr") in texts  # base64, decoded
    assert decode_field(dict(seen.fields)["Subject"]) == "Grüße und Rabatt"  # as rules see it


def test_the_walker_does_not_recurse_on_depth() -> None:
    """Ten thousand nested multiparts: walked without a RecursionError (Python's own
    parser raises one at about a thousand), stopped at the depth asked for."""
    deep = nested_multiparts(10_000)
    seen = walk(deep, max_depth=100_000)
    assert len(seen.parts) == 10_001 and seen.parts[-1].depth == 10_000
    with pytest.raises(Exception, match="MIME nesting deeper than 100"):
        walk(deep, max_depth=100)


@pytest.mark.parametrize("raw", [
    b"Subject: =?bogus?x?zz?=\n\nbody\n",
    b"Content-Type: multipart/mixed; boundary=\"nope\"\n\n--other\nbroken\n",
    b"Content-Type: multipart/mixed\n\nno boundary at all\n",
    b"Content-Type: text/plain; charset=no-such-charset\n\n\xff\xfe text\n",
    b"Content-Type: application/zip; name=x.zip\nContent-Transfer-Encoding: base64\n\n" +
    base64.b64encode(b"PK\x03\x04 not really a zip") + b"\n",
    b"Content-Transfer-Encoding: base64\n\n!!!not base64 at all===\n",
    b"Subject: \xff\xfe raw 8-bit\n\n\x00\x01\x02\n",
    b"Content-Type: message/rfc822\nContent-Transfer-Encoding: base64\n\n" +
    base64.b64encode(b"Subject: inner\n\nhidden text\n") + b"\n",
    b"X-Long: " + b"y" * 300_000 + b"\n\n" + b"z" * 200_000,
])
def test_malformed_messages_never_raise(raw: bytes) -> None:
    seen = walk(raw)
    assert seen.parts and seen.parts[0].depth == 0


def test_a_multipart_without_boundary_is_text() -> None:
    """RFC 2045 5.2: an unusable Content-Type is text/plain; body rules read it."""
    seen = walk(b"Content-Type: multipart/mixed\n\nhidden offer\n")
    assert seen.parts[0].content_type == "text/plain" and seen.parts[0].text


def test_an_encoded_attached_message_is_walked_decoded() -> None:
    raw = (b"Content-Type: message/rfc822\nContent-Transfer-Encoding: base64\n\n" +
           base64.b64encode(with_attachment(b"MZ", "evil.exe")) + b"\n")
    assert "evil.exe" in [p.filename for p in walk(raw).parts]


def test_large_messages_spool_to_disk() -> None:
    buffer = buffer_of(b"Subject: big\n\n" + b"x" * 3_000_000, threshold=1 << 20)
    assert buffer._spool._rolled  # type: ignore[attr-defined]
    assert buffer.size == len(b"Subject: big\r\n\r\n") + 3_000_000
    assert buffer.open().read(14) == b"Subject: big\r\n"


# --- archives -----------------------------------------------------------------------------

LIMITS = Limits(text=10 * 1024**2, mime_depth=100, archive_depth=4, archive_entries=10_000,
                archive_size=50 * 1024**2, seconds=60)


class Seen(GlobPatterns[str]):
    """Patterns of one kind that keep every value the scan offers them."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.seen: set[str] = set()

    def test(self, value: str, result: ScanResult) -> None:
        self.seen.add(value)


def names_in(raw: bytes, limits: Limits = LIMITS) -> tuple[set[str], set[str], str]:
    """(attachment names, archive labels, why attachments were not fully seen)."""
    names, labels = Seen("attachment"), Seen("archive")
    result = scan(buffer_of(raw).open(), [names, labels], limits)
    return names.seen, labels.seen, result.not_checked(["attachment"])


@pytest.mark.parametrize("data, filename, expected", [
    (zipped("evil.exe"), "report.zip", {"report.zip", "evil.exe"}),
    (zipped("evil.exe"), "report.pdf", {"report.pdf", "evil.exe"}),  # renamed: by content
    (zipped(("inner.zip", zipped(("deepest.zip", zipped("evil.exe"))))), "outer.zip",
     {"outer.zip", "inner.zip", "deepest.zip", "evil.exe"}),
    (zipped(*(f"file{i}.txt" for i in range(1000)), "evil.exe"), "many.zip",
     {"many.zip", "evil.exe"} | {f"file{i}.txt" for i in range(1000)}),
    (gzip.compress(tarred(("bin/evil.exe", b"MZ"))), "backup.tgz",
     {"backup.tgz", "bin/evil.exe"}),
    (gzip.compress(b"MZ", mtime=0), "x.gz", {"x.gz"}),
    (bz2.compress(zipped("evil.exe")), "x.bin", {"x.bin", "evil.exe"}),
    (tarred(("a/evil.exe", b"MZ"), ("a/inner.zip", zipped("deep.scr"))), "x.tar",
     {"x.tar", "a/evil.exe", "a/inner.zip", "deep.scr"}),
])
def test_archive_entries_are_names_at_any_depth(data: bytes, filename: str,
                                                expected: set[str]) -> None:
    found, _, missed = names_in(with_attachment(data, filename, "application/pdf"))
    assert found == expected and missed == ""


def test_gzip_keeps_the_original_name() -> None:
    data = io.BytesIO()
    with gzip.GzipFile("evil.exe", "wb", fileobj=data, mtime=0) as f:
        f.write(b"MZ")
    found, labels, _ = names_in(with_attachment(data.getvalue(), "update.gz"))
    assert "evil.exe" in found and "gzip" in labels


@pytest.mark.parametrize("data, label, cause", [
    (b"Rar!\x1a\x07\x00" + b"\0" * 600, "rar", "a rar archive cannot be listed"),
    (b"7z\xbc\xaf\x27\x1c" + b"\0" * 600, "7z", "a 7z archive cannot be listed"),
    (b"PK\x03\x04" + b"\xff" * 600, "unlisted", "a zip archive could not be read"),
])
def test_what_cannot_be_listed_is_said(data: bytes, label: str, cause: str) -> None:
    _, labels, missed = names_in(with_attachment(data, "files.dat"))
    assert label in labels and "unlisted" in labels and missed.startswith(cause)


def test_an_encrypted_entry_is_not_fully_checked() -> None:
    raw = bytearray(zipped("secret.zip"))
    # Set the "encrypted" flag in the local and central headers, as zip's -e would.
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = raw.index(signature) + offset
        raw[at] |= 0x1
    found, labels, missed = names_in(with_attachment(bytes(raw), "x.zip"))
    assert "secret.zip" in found and "encrypted" in labels
    assert missed == "an encrypted archive entry cannot be looked into"


@pytest.mark.parametrize("limits, data, cause", [
    (LIMITS.__class__(**{**vars(LIMITS), "archive_entries": 50}),
     zipped(*(f"f{i}" for i in range(100))), "archives with more than 50 entries"),
    (LIMITS.__class__(**{**vars(LIMITS), "archive_depth": 2}),
     zipped(("a.zip", zipped(("b.zip", zipped("evil.exe"))))),
     "archives nested deeper than 2"),
    (LIMITS.__class__(**{**vars(LIMITS), "archive_size": 100_000}),
     zipped(("big.tar", tarred(("zeros", b"\0" * 1_000_000)))), "archives unpacking to more "
     "than 100000 bytes"),
])
def test_archive_limits_fail_closed(limits: Limits, data: bytes, cause: str) -> None:
    assert names_in(with_attachment(data, "x.zip"), limits)[2].startswith(cause)


# --- rules on content ---------------------------------------------------------------------

def content_engine(make_rules: Callable[..., Path], access: list[str],
                   **settings: str) -> Engine:
    rules = make_rules(**settings)
    (rules / "access").write_text("".join(f"{r}\n" for r in access))
    return Engine(load(rules), Services())


def send(engine: Engine, raw: bytes, sender: str = "<a@sender.example>") -> tuple[str, Outcome]:
    s: Session = engine.session()
    s.connect("192.0.2.10", "mx.sender.example", "smtpd")
    s.helo("mx.sender.example", False)
    s.mail(sender, [], "", "")
    s.rcpt("<postmaster@example.com>", [], "")
    s.data("")
    for name, value in fields_of(raw):
        s.header(name, value)
    body = raw.replace(b"\r\n", b"\n").partition(b"\n\n")[2]
    s.body(body.replace(b"\n", b"\r\n"))
    outcome = s.eom("")
    d = outcome.decision
    return (d.entry.name if d.entry else d.action.value), outcome


@pytest.mark.parametrize("rule, expected", [
    ("header Subject=/rabatt/i reject", "content_rejected"),
    ("header Subject=/^Grüße/ reject", "content_rejected"),
    ("header X-Nothing=/./ reject", "continue"),
    ("body /special\\s+offer/ reject", "content_rejected"),
    ("body /secret\\scode/ reject filter_rejected", "filter_rejected"),
    ("attachment *.exe reject", "content_rejected"),
    ("attachment *.SCR reject", "content_rejected"),
    ("attachment *.js discard", "deleted_by_filter"),
    ("mime_type application/x-msdownload deny", "permission_denied"),
    ("mime_type video/* reject", "continue"),
    ("archive zip reject", "content_rejected"),
    ("archive rar,7z reject", "continue"),
    ("sender @sender.example attachment *.exe reject", "content_rejected"),
    ("sender @other.example attachment *.exe reject", "continue"),
])
def test_content_rules(make_rules: Callable[..., Path], rule: str, expected: str) -> None:
    assert send(content_engine(make_rules, [rule]), sample())[0] == expected


def test_a_field_after_thousands_of_others_is_seen(make_rules: Callable[..., Path]) -> None:
    engine = content_engine(make_rules, ["header Subject=/lottery/i reject"])
    raw = after_many_fields(5000, b"Subject: You won the LOTTERY")
    assert send(engine, raw)[0] == "content_rejected"


def test_attachment_names_are_checked_at_any_size(make_rules: Callable[..., Path]) -> None:
    """content_max_size bounds the text body rules read, not what attachment rules see."""
    engine = content_engine(make_rules, ["attachment *.exe reject"], content_max_size="1K")
    raw = with_attachment(zipped("evil.exe"), "report.pdf", text="x" * 100_000)
    assert send(engine, raw)[0] == "content_rejected"


@pytest.mark.parametrize("raw, rule, cause", [
    (nested_multiparts(1000), "body /nothing/ reject", "MIME nesting deeper than 100"),
    (nested_messages(1000), "attachment *.exe reject", "MIME nesting deeper than 100"),
    (with_attachment(b"Rar!\x1a\x07\x00" + b"\0" * 600, "files.rar"),
     "attachment *.exe reject", "a rar archive cannot be listed"),
    (b"Subject: t\n\n" + b"offer " * 1000, "body /never/ reject",
     "more text than content_max_size (2048 bytes) for body rules"),
])
def test_what_was_not_seen_is_not_fully_checked(make_rules: Callable[..., Path], raw: bytes,
                                                rule: str, cause: str) -> None:
    """Accepted with the header naming why (the default), or refused with a 5xx: never a
    silent pass, never the 451 that deep nesting once got on every retry."""
    answer, outcome = send(content_engine(make_rules, [rule], content_max_size="2K"), raw)
    assert answer == "continue"
    header = dict(outcome.add_headers)[UNCHECKED_HEADER]
    assert header.startswith("access: " + cause), header
    refused = content_engine(make_rules, [rule], content_max_size="2K",
                             unscannable_action="reject")
    assert send(refused, raw)[0] == "content_rejected"


def test_a_rule_that_matched_what_was_seen_still_decides(
        make_rules: Callable[..., Path]) -> None:
    """An .exe found before a limit is refused; the limit does not turn that into a pass."""
    raw = with_attachment(zipped("evil.exe", *(f"f{i}" for i in range(100))), "x.zip")
    engine = content_engine(make_rules, ["attachment *.exe reject"],
                            archive_max_entries="10")
    assert send(engine, raw)[0] == "content_rejected"


def test_an_earlier_rule_that_could_not_look_makes_a_later_match_unreliable(
        make_rules: Callable[..., Path]) -> None:
    """The first matching rule is only trusted when the rules before it saw everything."""
    raw = with_attachment(b"Rar!\x1a\x07\x00" + b"\0" * 600, "files.rar")
    engine = content_engine(make_rules, ["attachment *.exe reject",
                                         "header Subject=/files/ add_header X-Files: yes"])
    answer, outcome = send(engine, raw)
    assert answer == "continue" and UNCHECKED_HEADER in dict(outcome.add_headers)
    assert ("X-Files", "yes") not in outcome.add_headers


def test_regexes_run_in_linear_time(make_rules: Callable[..., Path]) -> None:
    """The pattern that takes Python's re seconds at 25 characters and doubles with each
    one more: against ten thousand, it finishes (RE2).  A hang here would hang the suite;
    the thread and its join bound how long the test can wait."""
    engine = content_engine(make_rules, ["body /(x+x+)+y/ reject"])
    answers: list[str] = []
    worker = threading.Thread(target=lambda: answers.append(
        send(engine, b"Subject: t\n\n" + b"x" * 10_000)[0]))
    worker.start()
    worker.join(60)
    assert answers == ["continue"]


def test_content_rule_can_tag_and_quarantine(make_rules: Callable[..., Path]) -> None:
    tag = content_engine(make_rules, ["attachment *.exe add_header X-Executable: yes"])
    _, outcome = send(tag, sample())
    assert outcome.add_headers == [("X-Executable", "yes")]
    assert tag.plan.needs.actions == {"addheader"}
    hold = content_engine(make_rules, ["body /offer/ quarantine offers are reviewed"])
    _, outcome = send(hold, sample())
    assert outcome.quarantine == "offers are reviewed"


def test_header_only_rules_do_not_ask_for_the_body(make_rules: Callable[..., Path]) -> None:
    from policy_milter.stages import Stage
    headers = content_engine(make_rules, ["header Subject=/x/ reject"]).plan
    body = content_engine(make_rules, ["body /x/ reject"]).plan
    assert headers.keeps_message and body.keeps_message
    limits = make_rules(max_message_size="0", domains="", accounts="", listeners="")
    (limits / "access").write_text("header Subject=/x/ reject\n")
    no_sizes = Engine(load(limits), Services()).plan
    assert Stage.HEADER in no_sizes.needs.callbacks and Stage.BODY not in no_sizes.needs.callbacks
    assert Stage.BODY in body.needs.callbacks


@pytest.mark.parametrize("rule, message", [
    ("header Subject reject", "header: 'Subject' is not NAME=/regex/"),
    ("header Subject=/(unclosed/ reject", "header: '/(unclosed/': missing ): (unclosed "
                                          "(patterns are RE2: no backreferences or lookaround)"),
    ("body /(a)\\1/ reject", "body: '/(a)\\1/': invalid escape sequence: \\1 (patterns are "
                             "RE2: no backreferences or lookaround)"),
    ("body /(?=x)y/ reject", "body: '/(?=x)y/': invalid perl operator: (?= (patterns are "
                             "RE2: no backreferences or lookaround)"),
    ("body viagra reject", "body: 'viagra' is not a /regex/ (flags i, m, s may follow)"),
    ("archive cab reject", "archive: 'cab' names no archive label (7z, bzip2, encrypted, "
                           "gzip, rar, tar, unlisted, xz, zip)"),
    ("body /x/ reject helo_required", "'helo_required' cannot be sent at EOM "
                                      "(where this rule is decided)"),
])
def test_content_rule_errors(make_rules: Callable[..., Path], rule: str, message: str) -> None:
    rules = make_rules()
    (rules / "access").write_text(rule + "\n")
    with pytest.raises(RuleErrors) as info:
        load(rules)
    assert info.value.errors == [f"{rules / 'access'}:1: {message}"]


def test_white_entry_can_skip_content_rules(make_rules: Callable[..., Path]) -> None:
    engine = content_engine(make_rules, ["sender @sender.example permit skip=access",
                                         "attachment *.exe reject"])
    assert send(engine, sample())[0] == "continue"
    assert send(engine, sample(), "<a@else.example>")[0] == "content_rejected"


def test_the_buffer_keeps_only_what_the_milter_acts_on() -> None:
    from policy_milter.message import MAX_KEPT
    buffer = MessageBuffer()
    for i in range(5000):
        buffer.header(f"X-Field-{i}", b"v")
    buffer.header("Subject", b"x" * (MAX_KEPT * 2))
    buffer.header("Subject", b"second")
    buffer.header("List-Id", b"\xff\xfe 8-bit")
    assert buffer.first("subject") == "x" * MAX_KEPT
    assert buffer.first("List-Id") == "\ufffd\ufffd 8-bit"
    raw = buffer.open().read()
    assert raw.count(b"X-Field-") == 5000  # the scanners and the content pass get it all
    with pytest.raises(KeyError):
        buffer.first("X-Field-1")
