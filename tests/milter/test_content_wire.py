"""Rows 27, 28, 29 and the scanner failure actions over the milter protocol, with the
real clamd and spamd; hangs, garbage and closed ports come from our own fake."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from policy_milter import catalogue
from policy_milter.mtaclient import EomResult, MilterClient, Reply
from tests.conftest import copy_rules
from tests.milter.conftest import MilterProcess, start_milter
from tests.support.cli import cli_json
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
from tests.support.session import assert_reply

CONTENT_RULES = ["attachment *.exe,*.scr reject",
                 "header Subject=/lottery/i discard",
                 "body /wire\\stransfer/i quarantine held for review"]


def content_rules(dest: Path, clamd: str, spamd: str, **settings: str) -> Path:
    defaults = dict(spam_tag_score="5.0", spam_reject_score="5000", spam_subject_tag="[SPAM]")
    rules = copy_rules(dest, clamd=clamd, spamd=spamd, **{**defaults, **settings})
    (rules / "filters").write_text("".join(f"{r}\n" for r in CONTENT_RULES))
    return rules


@pytest.fixture(scope="module")
def scanners(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    work = tmp_path_factory.mktemp("scanners")
    with ClamdServer(work / "clamd") as clamd, SpamdServer(work / "spamd") as spamd:
        yield clamd.tcp_address, spamd.address


@pytest.fixture(scope="module")
def content_milter(tmp_path_factory: pytest.TempPathFactory,
                   scanners: tuple[str, str]) -> Iterator[MilterProcess]:
    work = tmp_path_factory.mktemp("content")
    process = start_milter(content_rules(work / "rules", *scanners), work)
    yield process
    assert process.stop() == 0


def send(client: MilterClient, raw: bytes, sender: str = "<a@sender.example>",
         rcpts: tuple[str, ...] = ("<postmaster@example.com>",)) -> EomResult | Reply:
    client.connect("mx.sender.example", "192.0.2.10", 40000, macros={"{daemon_name}": "smtpd"})
    client.helo("mx.sender.example")
    assert client.mail(sender).passed
    for rcpt in rcpts:
        assert client.rcpt(rcpt).passed
    assert client.data().passed
    return client.message(raw)


def final(result: EomResult | Reply) -> Reply:
    return result if isinstance(result, Reply) else result.reply


@pytest.mark.parametrize("raw", [eicar_inline(), eicar_attachment(), eicar_nested()],
                         ids=["inline", "base64 attachment", "nested message"])
def test_virus_is_rejected_27(content_milter: MilterProcess, raw: bytes) -> None:
    with content_milter.client() as client:
        assert_reply(final(send(client, raw)), "virus_found")
    line = content_milter.wait_for_log("check=virus")
    assert "Eicar-Test-Signature" in line


def test_gtube_is_tagged_then_rejected_29(tmp_path: Path, scanners: tuple[str, str],
                                          fresh_milter: Callable[..., MilterProcess]) -> None:
    process = fresh_milter(content_rules(tmp_path / "rules", *scanners,
                                         spam_reject_score="10"))
    with process.client() as client:
        assert_reply(final(send(client, gtube_message())), "spam_rejected")
    assert "GTUBE" in process.wait_for_log("check=spam action=reject")


def added_headers(result: EomResult | Reply) -> dict[str, str]:
    """The header fields an accepted message gets; fails unless it was accepted."""
    assert isinstance(result, EomResult) and result.reply.action == "continue"
    return dict(args[:2] for kind, args in result.modifications if kind == "addheader")


def test_spam_below_reject_is_tagged(content_milter: MilterProcess) -> None:
    with content_milter.client() as client:
        result = send(client, gtube_message())
    headers = added_headers(result)
    assert headers["X-Spam-Status"].startswith("Yes, score=")
    assert float(headers["X-Spam-Score"]) >= 1000
    assert "GTUBE" in headers["X-Spam-Status"]
    subject = [args for kind, args in result.modifications if kind == "chgheader"]
    assert subject and subject[0][1] == "Subject" and subject[0][2].startswith("[SPAM] ")


def test_clean_mail_passes_marked_no(content_milter: MilterProcess) -> None:
    with content_milter.client() as client:
        result = send(client, clean_message())
    assert added_headers(result)["X-Spam-Status"].startswith("No, score=")


def attachment(name: str) -> bytes:
    return (b"Subject: files\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
            b"Content-Type: text/plain\r\n\r\nsee attached\r\n--b\r\n"
            b"Content-Type: application/octet-stream\r\n"
            b"Content-Disposition: attachment; filename=" + name.encode() +
            b"\r\nContent-Transfer-Encoding: base64\r\n\r\nTVqQ\r\n--b--\r\n")


def test_content_rules_28_30(content_milter: MilterProcess) -> None:
    with content_milter.client() as client:
        assert_reply(final(send(client, attachment("setup.exe"))), "content_rejected")
    with content_milter.client() as client:
        lottery = b"Subject: You won the LOTTERY\r\n\r\nclaim now\r\n"
        assert final(send(client, lottery)).action == "discard"
    line = content_milter.wait_for_log("check=filters action=discard")
    assert catalogue.get("deleted_by_filter").text in line
    with content_milter.client() as client:
        result = send(client, b"Subject: invoice\r\n\r\nplease make a wire transfer\r\n")
    assert isinstance(result, EomResult)
    assert ("quarantine", ("held for review",)) in result.modifications


# --- failures and messages too big to check ------------------------------------------

UNCHECKED = "X-Policy-Unchecked"


@pytest.mark.parametrize("mode", ["refuse", "hang", "garbage", "close", "error"])
def test_virus_scanner_failure_tempfails(tmp_path: Path, scanners: tuple[str, str],
                                         fresh_milter: Callable[..., MilterProcess],
                                         mode: str) -> None:
    with FakeScanner(mode) as fake:
        process = fresh_milter(content_rules(tmp_path / "rules", fake.address, scanners[1],
                                             clamd_timeout="2"))
        with process.client() as client:
            assert_reply(final(send(client, clean_message())), "scanner_tempfail")
    assert "clamd" in process.wait_for_log("check=virus action=tempfail")


def test_virus_scanner_failure_can_accept(tmp_path: Path, scanners: tuple[str, str],
                                          fresh_milter: Callable[..., MilterProcess]) -> None:
    with FakeScanner("refuse") as fake:
        process = fresh_milter(content_rules(tmp_path / "rules", fake.address, scanners[1],
                                             virus_failure_action="accept"))
        with process.client() as client:
            result = send(client, clean_message())
    assert added_headers(result)[UNCHECKED] == "virus: clamd failed"
    line = process.wait_for_log("event=dependency_failure")
    assert "check=virus service=clamd" in line and "action=accept" in line


@pytest.mark.parametrize("mode, cause", [
    ("limits", "Heuristics.Limits.Exceeded.MaxFileSize"),
    ("email-limits", "Heuristics.Email.ExceedsMax.MIMEHeaderBytes"),
    ("null", "(null)"),
    ("too-long", "StreamMaxLength"),
])
def test_clamd_limit_notices_are_not_checked_never_virus_or_451(
        tmp_path: Path, scanners: tuple[str, str], fresh_milter: Callable[..., MilterProcess],
        mode: str, cause: str) -> None:
    """What clamd could not scan is accepted marked (the default), or refused with the
    5xx ``unscannable_action`` names: never ``virus_found``, never a 451 retried for days."""
    with FakeScanner(mode) as fake:
        marked = fresh_milter(content_rules(tmp_path / "marked", fake.address, scanners[1]))
        refused = fresh_milter(content_rules(tmp_path / "refused", fake.address, scanners[1],
                                             unscannable_action="reject"))
        with marked.client() as client:
            header = added_headers(send(client, clean_message()))[UNCHECKED]
        with refused.client() as client:
            assert_reply(final(send(client, clean_message())), "content_rejected")
    assert header.startswith("virus: clamd left data unscanned" if mode != "too-long"
                             else "virus: longer than") and cause in header
    assert cause in marked.wait_for_log("event=not_checked check=virus")
    assert "not checked" in refused.wait_for_log("check=virus action=reject")


def test_message_over_clamd_max_size_is_not_checked(
        tmp_path: Path, scanners: tuple[str, str],
        fresh_milter: Callable[..., MilterProcess]) -> None:
    """The real clamd is never sent a message over clamd_max_size: EICAR in it is not
    found, and the header says why."""
    process = fresh_milter(content_rules(tmp_path / "rules", *scanners, clamd_max_size="1K",
                                         spam_max_size="1K"))
    with process.client() as client:
        headers = added_headers(send(client, eicar_inline() + b"x" * 2048))
    unchecked = headers[UNCHECKED]
    assert unchecked.startswith("virus: message of ") and "clamd_max_size" in unchecked
    assert "; spam: message of " in unchecked and "spam_max_size" in unchecked


@pytest.mark.parametrize("mode", ["refuse", "hang", "garbage", "badcode"])
def test_spam_scanner_failure_accepts_marked(tmp_path: Path, scanners: tuple[str, str],
                                             fresh_milter: Callable[..., MilterProcess],
                                             mode: str) -> None:
    with FakeScanner(mode) as fake:
        process = fresh_milter(content_rules(tmp_path / "rules", scanners[0], fake.address,
                                             spamd_timeout="2", spam_failure_action="accept"))
        with process.client() as client:
            result = send(client, clean_message())
    assert added_headers(result)[UNCHECKED] == "spam: spamd failed"
    assert "check=spam" in process.wait_for_log("event=dependency_failure")


def test_spam_scanner_failure_follows_failure_action(
        tmp_path: Path, scanners: tuple[str, str],
        fresh_milter: Callable[..., MilterProcess]) -> None:
    """spam_failure_action left empty: failure_action (tempfail here) applies."""
    with FakeScanner("refuse") as fake:
        process = fresh_milter(content_rules(tmp_path / "rules", scanners[0], fake.address))
        with process.client() as client:
            assert_reply(final(send(client, clean_message())), "scanner_tempfail")


def test_spam_scanner_failure_tempfail_wins_over_failure_action_accept(
        tmp_path: Path, scanners: tuple[str, str],
        fresh_milter: Callable[..., MilterProcess]) -> None:
    """The case that once let mail through unscanned and unmarked."""
    with FakeScanner("refuse") as fake:
        process = fresh_milter(content_rules(tmp_path / "rules", scanners[0], fake.address,
                                             spam_failure_action="tempfail",
                                             failure_action="accept"))
        with process.client() as client:
            assert_reply(final(send(client, clean_message())), "scanner_tempfail")


@pytest.mark.parametrize("raw, entry, tagged", [
    (eicar_attachment(), "virus_found", False),
    (gtube_message(), "", True),
    (clean_message(), "", False),
], ids=["virus", "spam tagged", "clean"])
def test_policy_milter_test_with_the_scanners_answers_as_the_milter(
        content_milter: MilterProcess, tmp_path: Path, raw: bytes, entry: str,
        tagged: bool) -> None:
    """``policy-milter test --scanners on`` asks the same clamd and spamd, and its answer
    at end of message is the running milter's, reply and changes alike (spamd's score
    headers on every message it passes; the Subject tag only on spam)."""
    message = tmp_path / "message.eml"
    message.write_bytes(raw)
    args = ["--client", "192.0.2.10", "--client-name", "mx.sender.example", "--helo",
            "mx.sender.example", "--sender", "a@sender.example", "--rcpt",
            "postmaster@example.com", str(message), "--json"]
    offline = cli_json("test", "--rules", str(content_milter.rules), "--scanners", "on", *args)
    wire = cli_json("test", "--connect", content_milter.socket, *args)
    here, there = offline["stages"][-1], wire["stages"][-1]
    assert here["stage"] == there["stage"] == "eom"
    assert (here["answer"], here["reply"]) == (there["answer"], there["reply"])
    assert here["entry"] == entry
    assert [c.split(":")[0] for c in offline["changes"]] == [
        c.split(":")[0] for c in wire["changes"]]
    assert any(c.startswith("chgheader Subject") for c in offline["changes"]) is tagged
    if entry:
        [virus] = [s for s in here["steps"] if s["check"] == "virus"]
        assert "Eicar" in virus["detail"]

