"""Wire-level tests of policy_milter.mtaclient against a real pymilter milter process.

The milter (nullmilter.py) logs every callback, so the tests check what actually
reached the milter, not only what the client claims.  Expected protocol bits come
from pymilter and libmilter's mfdef.h rather than from the module under test.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import Milter
import pytest

from policy_milter.mtaclient import (
    EomResult,
    MilterClient,
    MilterProtocolError,
    MilterTimeout,
    Reply,
)

NULLMILTER = Path(__file__).with_name("nullmilter.py")
# A client that waits for a reply the milter never sends fails with MilterTimeout.
TIMEOUT = 5.0
SMFI_CURR_ACTS = 0x1FF  # mfdef.h: every action
SMFI_CURR_PROT = 0x1FFFFF  # mfdef.h: every protocol bit, what Postfix 3.7 offers
ALL_NO = (
    Milter.P_NOCONNECT | Milter.P_NOHELO | Milter.P_NOMAIL | Milter.P_NORCPT | Milter.P_NODATA
    | Milter.P_NOHDRS | Milter.P_NOEOH | Milter.P_NOBODY | Milter.P_NOUNKNOWN
)


class MilterProcess:
    """A nullmilter.py process and the events it logged."""

    def __init__(self, workdir: Path, address: str, *args: str) -> None:
        self.address = address
        self.log = workdir / "events.jsonl"
        self.stderr = workdir / "stderr.txt"
        with open(self.stderr, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(NULLMILTER), address, str(self.log), *args],
                stdout=subprocess.DEVNULL,
                stderr=err,
            )

    def wait_listening(self, probe: Callable[[], socket.socket]) -> None:
        deadline = time.monotonic() + 10
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"nullmilter exited {self.proc.returncode}: {self.stderr.read_text()}")
            try:
                probe().close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("nullmilter did not start listening")
                time.sleep(0.05)

    def events(self, *kinds: str) -> list[dict]:
        """Logged events (of the given kinds), without the asynchronous close."""
        lines = self.log.read_text().splitlines() if self.log.exists() else []
        events = [json.loads(line) for line in lines]
        return [e for e in events if (e["event"] in kinds if kinds else e["event"] != "close")]

    def stop(self) -> None:
        # libmilter takes seconds to wind down on SIGTERM; nothing here needs a clean exit.
        self.proc.kill()
        self.proc.wait()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def start_milter(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., MilterProcess]]:
    started: list[MilterProcess] = []

    def start(*args: str, inet: bool = False) -> MilterProcess:
        workdir = tmp_path_factory.mktemp("nm")  # short: unix socket paths max out near 107 bytes
        if inet:
            port = _free_port()
            milter = MilterProcess(workdir, f"inet:{port}@127.0.0.1", *args)
            probe = lambda: socket.create_connection(("127.0.0.1", port), 1)  # noqa: E731
        else:
            path = str(workdir / "milter.sock")
            milter = MilterProcess(workdir, f"unix:{path}", *args)

            def probe() -> socket.socket:
                sock = socket.socket(socket.AF_UNIX)
                try:
                    sock.connect(path)
                except OSError:
                    sock.close()
                    raise
                return sock

        started.append(milter)
        milter.wait_listening(probe)
        return milter

    yield start
    for milter in started:
        milter.stop()


@pytest.fixture
def fake_milter(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[[bytes | None], str]]:
    """A unix-socket peer answering OPTNEG with canned bytes then hanging up, or silent (None)."""
    stop = threading.Event()
    servers: list[tuple[socket.socket, threading.Thread]] = []

    def start(answer: bytes | None) -> str:
        path = str(tmp_path_factory.mktemp("fake") / "s")
        server = socket.socket(socket.AF_UNIX)
        server.bind(path)
        server.listen()

        def serve() -> None:
            conn, _ = server.accept()
            with conn:
                conn.recv(4096)  # the client's OPTNEG
                if answer is None:
                    stop.wait()
                else:
                    conn.sendall(answer)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        servers.append((server, thread))
        return f"unix:{path}"

    yield start
    stop.set()
    for server, thread in servers:
        server.close()
        thread.join(5)


def kinds(milter: MilterProcess) -> list[str]:
    return [e["event"] for e in milter.events() if e["event"] != "negotiate"]


def test_negotiation_offers_what_postfix_offers_and_keeps_the_answer(start_milter):
    milter = start_milter()
    with MilterClient(milter.address, TIMEOUT) as client:
        assert client.actions == SMFI_CURR_ACTS
        assert client.protocol == (
            Milter.P_NODATA | Milter.P_SKIP | Milter.P_NR_HELO | Milter.P_NR_HDR | Milter.P_NR_UNKN
        )
        assert client.macro_lists == {"C": {"j", "{daemon_name}"}}
    [offer] = milter.events("negotiate")
    assert offer["actions"] == SMFI_CURR_ACTS
    assert offer["protocol"] == SMFI_CURR_PROT


def test_declined_steps_are_not_sent_and_noreply_steps_not_awaited(start_milter):
    milter = start_milter()
    with MilterClient(milter.address, TIMEOUT) as client:
        assert client.connect("client.example", "192.0.2.1", 4711).action == "continue"
        assert client.helo("client.example").action == "noreply"
        assert client.unknown("XYZZY").action == "noreply"
        assert client.mail("<a@example.com>").action == "continue"
        assert client.rcpt("<b@example.com>").action == "continue"
        assert client.data().action == "skipped"
        assert client.header("Subject", "hi").action == "noreply"
        assert client.eoh().action == "continue"
        assert client.eom().reply.action == "continue"
    assert kinds(milter) == ["connect", "helo", "unknown", "mail", "rcpt", "header", "eoh", "eom"]
    [connect] = milter.events("connect")
    assert (connect["hostname"], connect["hostaddr"]) == ("client.example", ["192.0.2.1", 4711])
    assert milter.events("helo")[0]["name"] == "client.example"
    assert milter.events("unknown")[0]["cmd"] == "XYZZY"


def test_milter_that_declines_everything_only_sees_end_of_message(start_milter):
    milter = start_milter("--minimal")
    with MilterClient(milter.address, TIMEOUT) as client:
        assert client.protocol & ALL_NO == ALL_NO
        replies = [
            client.connect(),
            client.helo("client.example"),
            client.mail("<a@example.com>"),
            client.rcpt("<b@example.com>"),
            client.data(),
            client.unknown("XYZZY"),
            client.header("Subject", "hi"),
            client.eoh(),
            client.body(b"body\r\n"),
        ]
        assert {reply.action for reply in replies} == {"skipped"}
        result = client.message(b"Subject: hi\n\nbody\n")
    assert isinstance(result, EomResult) and result.reply.action == "continue"
    assert kinds(milter) == ["eom"]


def test_macros_follow_the_milters_list_and_default_to_all(start_milter):
    milter = start_milter()
    with MilterClient(milter.address, TIMEOUT) as client:
        client.connect(macros={"j": "mx.example", "{daemon_name}": "smtpd", "{other}": "x"})
        client.mail("<a@example.com>", "SIZE=100", macros={"{auth_authen}": "bob"})
    [connect] = milter.events("connect")
    # '{other}' is not in the milter's connect list, so the client must have left it out.
    assert (connect["j"], connect["daemon_name"], connect["other"]) == ("mx.example", "smtpd", None)
    [mail] = milter.events("mail")
    assert (mail["sender"], mail["params"]) == ("<a@example.com>", ["SIZE=100"])
    assert mail["auth"] == "bob"  # no list for MAIL: everything given is sent


@pytest.mark.parametrize("when_skipped, seen", [(False, None), (True, "dm")])
def test_macros_of_a_declined_step_are_sent_only_on_request(start_milter, when_skipped, seen):
    milter = start_milter()
    with MilterClient(milter.address, TIMEOUT, send_macros_when_skipped=when_skipped) as client:
        client.connect()
        client.mail("<a@example.com>")
        client.rcpt("<b@example.com>")
        assert client.data(macros={"{data_macro}": "dm"}).action == "skipped"
        client.eoh()
        client.eom()
    assert milter.events("eom")[0]["data_macro"] == seen
    assert "data" not in kinds(milter)


def test_reply_codes_are_parsed_like_postfix(start_milter):
    milter = start_milter()
    with MilterClient(milter.address, TIMEOUT) as client:
        client.connect()
        reply = client.mail("<tempfail@example.com>")
        assert reply == Reply("replycode", "451", "4.7.1", "Try again later")
        assert reply.tempfailed and not reply.rejected and not reply.passed
        assert reply.line == "451 4.7.1 Try again later"
        assert client.mail("<a@example.com>").action == "continue"
        # The milter had to write '100%%'; Postfix shows the SMTP client '100%'.
        reply = client.rcpt("<reject@example.com>")
        assert reply == Reply("replycode", "550", "5.7.1", "No such user here, 100% sure")
        assert reply.rejected and reply.line == "550 5.7.1 No such user here, 100% sure"
        reply = client.rcpt("<plainreject@example.com>")
        assert reply == Reply("reject") and reply.rejected and reply.line == "reject"
        assert client.rcpt("<b@example.com>").action == "continue"


@pytest.mark.parametrize("eol", [b"\r\n", b"\n"], ids=["crlf", "lf"])
def test_message_round_trip_frames_headers_and_body_like_postfix(start_milter, eol):
    milter = start_milter()
    raw = eol.join([
        b"From: Alice <a@example.com>",
        b"Subject: hello",
        b"  world",
        b"X-Tab:\tvalue",
        b"X-Space:  two",
        b"",
        b"line one",
        b"line two",
    ])
    with MilterClient(milter.address, TIMEOUT) as client:
        client.connect()
        client.mail("<a@example.com>")
        client.rcpt("<b@example.com>")
        result = client.message(raw, macros={"eoh": {"{x}": "y"}, "eom": {"i": "QID1"}})
    assert isinstance(result, EomResult)
    assert result.reply == Reply("continue")
    assert result.modifications == [("addheader", ("X-Null-Milter", "4 headers"))]
    headers = [(e["name"], e["value"]) for e in milter.events("header")]
    assert headers == [
        ("From", "Alice <a@example.com>"),
        ("Subject", "hello\n  world"),
        ("X-Tab", "\tvalue"),
        ("X-Space", " two"),
    ]
    assert milter.events("eoh")[0]["x"] == "y"
    [eom] = milter.events("eom")
    assert (eom["body"], eom["i"]) == ("line one\r\nline two\r\n", "QID1")


def test_every_end_of_message_modification_is_decoded(start_milter):
    milter = start_milter()
    with MilterClient(milter.address, TIMEOUT) as client:
        client.connect()
        client.mail("<a@example.com>")
        client.rcpt("<b@example.com>")
        result = client.message(b"Subject: hi\nX-Test-Mods: all\n\nbody\n")
    assert isinstance(result, EomResult) and result.reply == Reply("continue")
    assert result.modifications == [
        ("addheader", ("X-Null-Milter", "2 headers")),
        ("insheader", (0, "X-Top", "first")),
        ("chgheader", (1, "Subject", "changed")),
        ("addrcpt", ("<new@example.com>",)),
        ("addrcpt_par", ("<par@example.com>", "NOTIFY=NEVER")),
        ("delrcpt", ("<b@example.com>",)),
        ("chgfrom", ("<bounce@example.com>", "SIZE=1")),
        ("quarantine", ("held for review",)),
        ("replbody", (b"r" * 70000,)),  # arrives in two packets
    ]


def test_body_reject_ends_the_message_and_the_session_stays_in_step(start_milter):
    milter = start_milter()
    with MilterClient(milter.address, TIMEOUT) as client:
        client.connect()
        client.mail("<a@example.com>")
        client.rcpt("<b@example.com>")
        reply = client.message(b"Subject: hi\n\nplease REJECTBODY\n")
        assert reply == Reply("replycode", "554", "5.7.1", "Body rejected")
        client.abort()
        assert client.mail("<c@example.com>").action == "continue"
    assert "eom" not in kinds(milter)


def test_accept_ends_the_message_like_postfix(start_milter):
    milter = start_milter()
    with MilterClient(milter.address, TIMEOUT) as client:
        client.connect()
        client.mail("<a@example.com>")
        client.rcpt("<b@example.com>")
        assert client.message(b"X-Accept: yes\n\nbody\n") == Reply("accept")
        assert client.mail("<c@example.com>").action == "continue"
    # QUIT with a transaction open makes libmilter call abort; it may log after we read.
    events = kinds(milter)
    assert events[:6] == ["connect", "mail", "rcpt", "header", "eoh", "mail"]
    assert events[6:] in ([], ["abort"])


def test_skip_stops_body_chunks(start_milter):
    milter = start_milter()
    with MilterClient(milter.address, TIMEOUT) as client:
        client.connect()
        client.mail("<a@example.com>")
        client.rcpt("<b@example.com>")
        client.eoh()
        assert client.body(b"SKIPREST" + b"x" * (2 * 65535)).action == "skip"
        assert client.body(b"more").action == "skipped"  # Postfix keeps skipping this event type
        assert client.eom().reply.action == "continue"
    assert [e["size"] for e in milter.events("body")] == [65535]
    assert len(milter.events("eom")[0]["body"]) == 65535


def test_abort_awaits_no_reply_and_a_new_transaction_follows(start_milter):
    milter = start_milter()
    with MilterClient(milter.address, TIMEOUT) as client:
        client.connect()
        client.mail("<a@example.com>")
        client.rcpt("<b@example.com>")
        client.abort()
        assert client.mail("<c@example.com>").action == "continue"
    events = kinds(milter)  # QUIT with MAIL open may add an abort after we read
    assert events[:5] == ["connect", "mail", "rcpt", "abort", "mail"]
    assert events[5:] in ([], ["abort"])


def test_header_with_non_utf8_bytes_is_sent_verbatim(start_milter):
    milter = start_milter()
    with MilterClient(milter.address, TIMEOUT) as client:
        client.connect()
        client.mail("<a@example.com>")
        client.rcpt("<b@example.com>")
        assert client.header("X-Bin", b"caf\xe9 \xff").action == "noreply"
        assert client.eoh().action == "continue"
    [header] = milter.events("header")
    assert header["name"] == "X-Bin"
    assert header["value"].encode("utf-8", "surrogateescape") == b"caf\xe9 \xff"


def test_inet_transport_in_both_address_forms(start_milter):
    milter = start_milter(inet=True)
    port = milter.address.split(":")[1].split("@")[0]
    for address in (f"inet:{port}@127.0.0.1", f"inet:127.0.0.1:{port}"):
        with MilterClient(address, TIMEOUT) as client:
            assert client.connect().action == "continue"
            client.mail("<a@example.com>")
            assert client.rcpt("<reject@example.com>").code == "550"
    assert len(milter.events("rcpt")) == 2


def test_silent_milter_raises_milter_timeout(fake_milter):
    client = MilterClient(fake_milter(None), timeout=0.3)
    started = time.monotonic()
    with pytest.raises(MilterTimeout):
        client.open()
    assert time.monotonic() - started < 3
    assert issubclass(MilterTimeout, TimeoutError)


@pytest.mark.parametrize(
    "answer, message",
    [
        (b"", "closed the connection"),
        (b"\0\0\0\0", "bad packet length 0"),
        (b"\0\0\0\x01c", "bad option negotiation reply"),
        (b"\0\0\0\x0dO\0\0\0", "closed the connection"),  # truncated packet
    ],
    ids=["hangup", "zero-length", "not-optneg", "truncated"],
)
def test_broken_milter_raises_protocol_error(fake_milter, answer, message):
    client = MilterClient(fake_milter(answer), timeout=TIMEOUT)
    with pytest.raises(MilterProtocolError, match=message):
        client.open()


def test_reply_classification():
    assert Reply("noreply").passed and Reply("skipped").passed and Reply("skip").passed
    discard = Reply("discard")
    assert not (discard.passed or discard.rejected or discard.tempfailed)
    assert Reply("tempfail").tempfailed and Reply("tempfail").line == "tempfail"
