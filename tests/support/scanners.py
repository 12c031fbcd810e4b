"""Content scanners on loopback for tests: the real clamd and spamd, and a fake for faults.

``ClamdServer`` and ``SpamdServer`` run the Debian daemons privately, from a config of their
own in a work directory: no signature or rule downloads, nothing but 127.0.0.1 and unix
sockets, nothing left running after ``stop()``.  A missing binary raises, naming its Debian
package: no test skips a scanner silently.  ``FakeScanner`` does what the real daemons will
not do on demand: refuse, hang, cut the connection, answer garbage or a canned error.

The EICAR and GTUBE test strings are assembled at run time, so that no scanner flags this file.
"""

from __future__ import annotations

import base64
import io
import shutil
import socket
import socketserver
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Self

from tests.support.daemon import LOOPBACK, Daemon

EICAR = ("X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + "EICAR-STANDARD-" + "ANTIVIRUS-TEST-FILE!$H+H*").encode()
GTUBE = ("XJS*C4JDBQADN1.NSBN3*2IDNEN*" + "GTUBE-STANDARD-" + "ANTI-UBE-TEST-EMAIL*C.34X").encode()
EICAR_SIGNATURE = "Eicar-Test-Signature"  # clamd reports it as Eicar-Test-Signature.UNOFFICIAL


# --- messages -------------------------------------------------------------------------------

def _message(subject: str, body: bytes, content_type: str = "text/plain; charset=us-ascii") -> bytes:
    """A plausible message (CRLF lines), so that spamd scores its content, not its headers.

    No Received line: a documentation address in one costs RCVD_ILLEGAL_IP points."""
    head = (
        "From: Alice Sender <alice@sender.example>\r\n"
        "To: Bob Receiver <bob@test.example>\r\n"
        f"Subject: {subject}\r\n"
        "Date: Fri, 27 Nov 2026 10:00:00 +0000\r\n"
        "Message-ID: <20261127100000.1.scanner-test@sender.example>\r\n"
        "MIME-Version: 1.0\r\n"
        f"Content-Type: {content_type}\r\n"
    )
    return head.encode() + b"\r\n" + body


def _with_attachment(subject: str, part_headers: str, part_body: bytes) -> bytes:
    boundary = "=-=-scanner-test-boundary-=-="
    body = (
        f"--{boundary}\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
        "The file is attached.\r\n\r\n"
        f"--{boundary}\r\n{part_headers}\r\n\r\n"
    ).encode() + part_body + f"\r\n--{boundary}--\r\n".encode()
    return _message(subject, body, f'multipart/mixed; boundary="{boundary}"')


def clean_message() -> bytes:
    body = (b"Hi Bob,\r\n\r\nThe minutes of Tuesday's meeting are on the shared drive; the next\r\n"
            b"meeting is on the 3rd at ten. Let me know if the room does not suit you.\r\n\r\n"
            b"Alice\r\n")
    return _message("Minutes of Tuesday's meeting", body)


def eicar_inline() -> bytes:
    return _message("Test file inline", EICAR + b"\r\n")


def eicar_attachment() -> bytes:
    part = ('Content-Type: application/octet-stream; name="eicar.com"\r\n'
            'Content-Disposition: attachment; filename="eicar.com"\r\n'
            "Content-Transfer-Encoding: base64")
    return _with_attachment("Test file attached", part, base64.encodebytes(EICAR))


def eicar_nested() -> bytes:
    """A message/rfc822 attachment that itself carries EICAR as a base64 attachment."""
    part = ('Content-Type: message/rfc822\r\n'
            'Content-Disposition: attachment; filename="forwarded.eml"')
    return _with_attachment("Forwarded message", part, eicar_attachment())


def gtube_message() -> bytes:
    return _message("Test spam", b"This is the GTUBE:\r\n" + GTUBE + b"\r\n")


# --- real daemons ---------------------------------------------------------------------------

def _ask(address: str, request: bytes, timeout: float = 1.0) -> bytes:
    """One raw request and the whole reply ('tcp:HOST:PORT' or 'unix:PATH'); b'' on failure.

    Written against the sockets directly, so that start-up does not rely on the code under test.
    """
    kind, _, rest = address.partition(":")
    try:
        if kind == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect(rest)
        else:
            host, _, port = rest.rpartition(":")
            sock = socket.create_connection((host, int(port)), timeout)
        with sock:
            sock.sendall(request)
            reply = b""
            while piece := sock.recv(4096):
                reply += piece
            return reply
    except OSError:
        return b""


class ClamdServer(Daemon):
    """The real clamd with one signature of our own: EICAR's body, as an .ndb rule.

    It finds EICAR inline, in base64 attachments and in attached messages.  ``stream_max`` is
    its StreamMaxLength; ``options`` are more clamd.conf lines (e.g. AlertExceedsMax).
    """

    binary = "clamd"
    package = "clamav-daemon"

    def __init__(self, workdir: Path, stream_max: str = "25M",
                 options: Mapping[str, str] | None = None) -> None:
        super().__init__(workdir)
        self.stream_max = stream_max
        self.options = dict(options or {})
        self.socket = workdir / "clamd.sock"
        self.log = workdir / "clamd.log"

    @property
    def tcp_address(self) -> str:
        return f"tcp:{LOOPBACK}:{self.port}"

    @property
    def unix_address(self) -> str:
        return f"unix:{self.socket}"

    def _configure(self) -> None:
        database = self.workdir / "db"
        database.mkdir(exist_ok=True)
        body = ("EICAR-STANDARD-" + "ANTIVIRUS-TEST-FILE").encode().hex()
        (database / "eicar.ndb").write_text(f"{EICAR_SIGNATURE}:0:*:{body}\n")
        (self.workdir / "tmp").mkdir(exist_ok=True)
        settings = {
            "Foreground": "yes",
            "TCPSocket": str(self.port),
            "TCPAddr": LOOPBACK,
            "LocalSocket": str(self.socket),
            "DatabaseDirectory": str(database),
            "TemporaryDirectory": str(self.workdir / "tmp"),
            "StreamMaxLength": self.stream_max,
            "SelfCheck": "0",
            "LogFile": str(self.log),
            **self.options,
        }
        text = "".join(f"{name} {value}\n" for name, value in settings.items())
        (self.workdir / "clamd.conf").write_text(text)

    def _command(self, binary: str) -> list[str]:
        return [binary, "-c", str(self.workdir / "clamd.conf")]

    def _ready(self) -> bool:
        tcp = _ask(self.tcp_address, b"zPING\0") == b"PONG\0"
        return tcp and _ask(self.unix_address, b"zPING\0") == b"PONG\0"


SPAMD_LOCAL_CF = """\
# Offline and deterministic: no DNS, no network checks, no learning.
dns_available no
skip_rbl_checks 1
skip_uribl_checks 1
use_bayes 0
bayes_auto_learn 0
use_razor2 0
use_pyzor 0
"""


class SpamdServer(Daemon):
    """The real spamd with Debian's shipped rules (no sa-update), offline.

    Its site config is a copy of /etc/spamassassin's *.pre files (without them no plugin
    loads) and a local.cf of our own; it logs to ``log``.  One child is preforked, two at most.
    """

    binary = "spamd"
    package = "spamd"
    site_config = Path("/etc/spamassassin")

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.log = workdir / "spamd.log"
        self._readable: Path | None = None  # site config and home, where user nobody can read

    @property
    def address(self) -> str:
        return f"tcp:{LOOPBACK}:{self.port}"

    def _configure(self) -> None:
        # spamd reads its config only after dropping to user nobody, and pytest's temporary
        # directories are private to their owner: the config lives in a directory of its own.
        if self._readable is None:
            self._readable = Path(tempfile.mkdtemp(prefix="spamd-"))
            self._readable.chmod(0o755)
        site = self._readable / "site"
        site.mkdir(exist_ok=True)
        pre = sorted(self.site_config.glob("*.pre"))
        if not pre:
            raise FileNotFoundError(f"no {self.site_config}/*.pre (Debian package spamassassin)")
        for path in pre:
            shutil.copy(path, site)
        (site / "local.cf").write_text(SPAMD_LOCAL_CF)
        (self._readable / "home").mkdir(exist_ok=True)

    def _command(self, binary: str) -> list[str]:
        readable = self._readable
        assert readable is not None  # made by _configure()
        return [
            binary, f"--listen={LOOPBACK}:{self.port}", f"--allowed-ips={LOOPBACK}",
            f"--siteconfigpath={readable / 'site'}", "--local", "--nouser-config",
            "--username=nobody", f"--helper-home-dir={readable / 'home'}",
            "--min-children=1", "--max-children=2", f"--pidfile={self.workdir / 'spamd.pid'}",
            f"--syslog={self.log}",
        ]  # fmt: skip

    def stop(self) -> None:
        super().stop()
        if self._readable is not None:
            shutil.rmtree(self._readable, ignore_errors=True)
            self._readable = None

    def _ready(self) -> bool:
        # The port accepts connections before spamd can answer: only a PONG means ready.
        return _ask(self.address, b"PING SPAMC/1.5\r\n\r\n").startswith(b"SPAMD/1.5 0 PONG")


# --- a fake of our own ----------------------------------------------------------------------

GARBAGE = b"\x16\x03\x01\x00\xa5HTTP/1.1 400 Bad Request\r\n\xff\xfe\x1b[2J"
CANNED = {
    "garbage": GARBAGE,
    "limits": b"stream: Heuristics.Limits.Exceeded.MaxFileSize FOUND\0",  # clamd
    "email-limits": b"stream: Heuristics.Email.ExceedsMax.MIMEHeaderBytes FOUND\0",  # clamd
    "null": b"stream: (null) FOUND\0",  # clamd
    "too-long": b"INSTREAM size limit exceeded. ERROR\0",  # clamd
    "error": b"Can't allocate memory ERROR\0",  # clamd
    "badcode": b"SPAMD/1.1 76 Bad header line: (Content-Length mismatch: Expected 10 bytes)\r\n",
}


def _read_request(rfile: io.BufferedIOBase) -> None:
    """Consume one request as the real daemon would, so that the reply comes when the client
    waits for it: a clamd 'z' command (INSTREAM with its chunks up to the empty one), or a
    SPAMC request with its Content-length bytes."""
    if rfile.read(1) == b"z":
        command = bytearray()
        while (byte := rfile.read(1)) not in (b"\0", b""):
            command += byte
        if command == b"INSTREAM":
            while size := int.from_bytes(rfile.read(4), "big"):
                rfile.read(size)
        return
    length = 0
    while (line := rfile.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    rfile.read(length)


class FakeScanner:
    """A scanner daemon of our own on a loopback port, misbehaving as ``mode`` says.

    'refuse': the port is held but nothing listens (connection refused).  'hang': accepts,
    reads everything, never answers.  'close': accepts and closes at once.  The modes named
    in ``CANNED`` read the request and answer those bytes.  'answer': reads the request,
    answers ``reply``.
    """

    def __init__(self, mode: str, reply: bytes = b"") -> None:
        if mode not in ("refuse", "hang", "close", "answer", *CANNED):
            raise ValueError(f"unknown FakeScanner mode {mode!r}")
        self.mode = mode
        self.reply = CANNED.get(mode, reply)
        self.port = 0
        self._server: socketserver.ThreadingTCPServer | None = None
        self._held: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    @property
    def address(self) -> str:
        return f"tcp:{LOOPBACK}:{self.port}"

    def _handle(self, handler: socketserver.StreamRequestHandler) -> None:
        if self.mode == "close":
            return
        if self.mode == "hang":
            while handler.rfile.read(65536):  # all of it, even past a half-close
                pass
            self._stopping.wait()  # never answer, never close: the client must time out
            return
        _read_request(handler.rfile)
        handler.wfile.write(self.reply)

    def start(self) -> Self:
        self._stopping.clear()
        if self.mode == "refuse":
            self._held = socket.socket()
            self._held.bind((LOOPBACK, 0))  # bound, never listening: connections are refused
            self.port = self._held.getsockname()[1]
            return self
        fake = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                fake._handle(self)

        server = socketserver.ThreadingTCPServer((LOOPBACK, 0), Handler)
        server.daemon_threads = True
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._held is not None:
            self._held.close()
            self._held = None
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
