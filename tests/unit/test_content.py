"""Content rules: what the message parser finds, and the decisions rules take on it."""

from __future__ import annotations

import base64
import io
import zipfile
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path

import pytest

from policy_milter.content import MessageFacts
from policy_milter.engine import Engine, Session
from policy_milter.message import MessageBuffer
from policy_milter.rules.policy import load
from policy_milter.rules.source import RuleErrors
from policy_milter.services import Services


def buffer_of(raw: bytes, threshold: int = 1 << 20) -> MessageBuffer:
    """Feed a raw message the way the MTA does: header fields, then body chunks."""
    head, _, body = raw.replace(b"\r\n", b"\n").partition(b"\n\n")
    buffer = MessageBuffer(threshold)
    fields: list[tuple[str, bytes]] = []
    for line in head.split(b"\n"):
        if line[:1] in (b" ", b"\t") and fields:
            name, value = fields[-1]
            fields[-1] = (name, value + b"\n" + line)
        else:
            name, _, value = line.partition(b":")
            fields.append((name.decode(), value.lstrip()))
    for name, value in fields:
        buffer.header(name, value)
    for i in range(0, len(body), 7000):
        buffer.body(body[i:i + 7000].replace(b"\n", b"\r\n"))
    return buffer


def zipped(*names: str) -> bytes:
    data = io.BytesIO()
    with zipfile.ZipFile(data, "w") as archive:
        for name in names:
            archive.writestr(name, b"MZ")
    return data.getvalue()


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


@pytest.fixture(scope="module")
def facts() -> MessageFacts:
    return MessageFacts(buffer_of(sample()), 10 * 1024**2)


def test_header_fields_are_decoded(facts: MessageFacts) -> None:
    assert ("Subject", "Grüße und Rabatt") in facts.fields


def test_text_parts_are_decoded(facts: MessageFacts) -> None:
    assert any("café été special offer" in t for t in facts.texts)
    assert any("secret code" in t for t in facts.texts)  # inside the attached message


def test_attachment_names_include_archives_and_nested_messages(facts: MessageFacts) -> None:
    assert {"invoice.pdf.exe", "archive.zip", "docs/readme.txt", "payload.scr",
            "inner.js"} <= set(facts.attachments)


def test_mime_types(facts: MessageFacts) -> None:
    assert {"multipart/mixed", "application/x-msdownload", "message/rfc822"} <= \
        set(facts.mime_types)


@pytest.mark.parametrize("raw", [
    b"Subject: =?bogus?x?zz?=\n\nbody\n",
    b"Content-Type: multipart/mixed; boundary=\"nope\"\n\n--other\nbroken\n",
    b"Content-Type: text/plain; charset=no-such-charset\n\n\xff\xfe text\n",
    b"Content-Type: application/zip; name=x.zip\nContent-Transfer-Encoding: base64\n\n" +
    base64.b64encode(b"PK\x03\x04 not really a zip") + b"\n",
    b"Subject: \xff\xfe raw 8-bit\n\n\x00\x01\x02\n",
])
def test_malformed_messages_never_raise(raw: bytes) -> None:
    f = MessageFacts(buffer_of(raw), 10 * 1024**2)
    assert isinstance(f.fields, list) and isinstance(f.texts, list)
    assert isinstance(f.attachments, list) and isinstance(f.mime_types, list)


def test_messages_over_the_bound_are_matched_on_headers_only() -> None:
    f = MessageFacts(buffer_of(sample()), 100)
    assert f.texts == [] and f.attachments == [] and f.fields


def test_large_messages_spool_to_disk() -> None:
    buffer = buffer_of(b"Subject: big\n\n" + b"x" * 3_000_000, threshold=1 << 20)
    assert buffer._spool._rolled  # type: ignore[attr-defined]
    assert buffer.size == len(b"Subject: big\r\n\r\n") + 3_000_000
    assert buffer.open().read(14) == b"Subject: big\r\n"


# --- rules on content ----------------------------------------------------------------

def content_engine(make_rules: Callable[..., Path], access: list[str]) -> Engine:
    rules = make_rules()
    (rules / "access").write_text("".join(f"{r}\n" for r in access))
    return Engine(load(rules), Services())


def send(engine: Engine, raw: bytes, sender: str = "<a@sender.example>") -> tuple[str, object]:
    s: Session = engine.session()
    s.connect("192.0.2.10", "mx.sender.example", "smtpd")
    s.helo("mx.sender.example", False)
    s.mail(sender, [], "", "")
    s.rcpt("<postmaster@example.com>", [], "")
    s.data("")
    head, _, body = raw.replace(b"\r\n", b"\n").partition(b"\n\n")
    for line in head.split(b"\n"):
        name, _, value = line.partition(b":")
        s.header(name.decode(), value.strip())
    s.body(body.replace(b"\n", b"\r\n"))
    outcome = s.eom("")
    d = outcome.decision
    name = d.entry.name if d.entry else d.action.value
    return name, outcome


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
    ("sender @sender.example attachment *.exe reject", "content_rejected"),
    ("sender @other.example attachment *.exe reject", "continue"),
])
def test_content_rules(make_rules: Callable[..., Path], rule: str, expected: str) -> None:
    assert send(content_engine(make_rules, [rule]), sample())[0] == expected


def test_content_rule_can_tag_and_quarantine(make_rules: Callable[..., Path]) -> None:
    tag = content_engine(make_rules, ["attachment *.exe add_header X-Executable: yes"])
    _, outcome = send(tag, sample())
    assert outcome.add_headers == [("X-Executable", "yes")]  # type: ignore[attr-defined]
    assert tag.plan.needs.actions == {"addheader"}
    hold = content_engine(make_rules, ["body /offer/ quarantine offers are reviewed"])
    _, outcome = send(hold, sample())
    assert outcome.quarantine == "offers are reviewed"  # type: ignore[attr-defined]


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
    ("header Subject=/(unclosed/ reject", "header: '/(unclosed/': missing ), unterminated "
                                          "subpattern at position 0"),
    ("body viagra reject", "body: 'viagra' is not a /regex/ (flags i, m, s may follow)"),
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


def test_header_fields_kept_for_rules_are_bounded() -> None:
    from policy_milter.message import MAX_FIELD, MAX_FIELDS
    buffer = MessageBuffer()
    for i in range(MAX_FIELDS + 500):
        buffer.header(f"X-Field-{i}", b"v")
    buffer.header("X-Huge", b"x" * (MAX_FIELD * 2))
    buffer.header("X-Bytes", b"\xff\xfe\x00 8-bit")
    assert len(buffer.fields) == MAX_FIELDS
    raw = buffer.open().read()
    assert raw.count(b"X-Field-") == MAX_FIELDS + 500  # the scanners still get all of it
    assert b"x" * (MAX_FIELD * 2) in raw and b"\xff\xfe\x00 8-bit" in raw
    small = MessageBuffer()
    small.header("X-Huge", b"x" * (MAX_FIELD * 2))
    small.header("X-Bytes", b"\xff\xfe 8-bit")
    assert len(small.fields[0][1]) == MAX_FIELD
    assert MessageFacts(small, 1 << 20).fields[1][0] == "X-Bytes"
