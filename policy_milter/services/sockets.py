"""Stream sockets to the content scanners (clamd, spamd).

One deadline covers a whole exchange (connect, send, reply), so a scanner that trickles
cannot hold a message longer than its timeout; every failure is a DependencyError with the
``scanner_tempfail`` entry, so a scanner that is down, slow or confused can only ever delay
mail, never let it through unscanned.  Messages are streamed in bounded pieces: the milter
never holds a whole message in memory for a scanner.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import BinaryIO, Self

from .errors import DependencyError

ENTRY = "scanner_tempfail"
REPLY_LIMIT = 65536  # both daemons answer in a few hundred bytes; more is not a scanner talking

Endpoint = str | tuple[str, int]  # a unix socket path, or (host, port)


def printable(data: bytes | str, limit: int = 100) -> str:
    """Text from a server made safe for one log line: printable ASCII, at most ``limit`` chars."""
    if isinstance(data, bytes):
        data = data.decode("ascii", "replace")
    text = "".join(c if " " <= c <= "~" else "?" for c in data)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_address(address: str) -> Endpoint:
    """'tcp:HOST:PORT' or 'unix:/PATH', checked once when configured rather than per message."""
    kind, _, rest = address.partition(":")
    if kind == "unix" and rest:
        return rest
    if kind == "tcp":
        host, _, port = rest.rpartition(":")
        host = host.removeprefix("[").removesuffix("]")  # tcp:[::1]:783
        if host and port.isdigit() and 0 < int(port) < 65536:
            return host, int(port)
    raise ValueError(f"{address!r}: expected tcp:HOST:PORT or unix:/PATH")


def blocks(message: BinaryIO, size: int, chunk: int, service: str) -> Iterator[bytes]:
    """Exactly ``size`` bytes of ``message``, read at most ``chunk`` bytes at a time.

    A message that ends early would leave the daemon waiting for the rest, so it fails at once.
    """
    left = size
    while left:
        block = message.read(min(chunk, left))
        if not block:
            raise DependencyError(service, f"message ended {left} bytes short of its {size}",
                                  entry=ENTRY)
        left -= len(block)
        yield block


class Cut(DependencyError):
    """The daemon stopped reading the request; ``said`` is what it answered first."""

    def __init__(self, service: str, message: str, said: bytes) -> None:
        super().__init__(service, message, entry=ENTRY)
        self.said = said


class Connection:
    """One request/reply exchange with a scanner daemon, under one deadline."""

    def __init__(self, service: str, endpoint: Endpoint, timeout: float) -> None:
        self.service = service
        self._where = endpoint if isinstance(endpoint, str) else f"{endpoint[0]}:{endpoint[1]}"
        self._timeout = timeout
        self._deadline = time.monotonic() + timeout
        try:
            if isinstance(endpoint, str):
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    sock.settimeout(self._left("connecting"))
                    sock.connect(endpoint)
                except BaseException:
                    sock.close()
                    raise
            else:
                sock = socket.create_connection(endpoint, self._left("connecting"))
                # Small writes (command, chunk header, terminator) must not wait for delayed ACKs.
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as err:
            raise self._failed(err, "connecting") from None
        self._sock = sock

    def _left(self, doing: str) -> float:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise self._failed(TimeoutError(), doing)
        return left

    def _reason(self, err: OSError, doing: str) -> str:
        if isinstance(err, TimeoutError):
            return f"timed out after {self._timeout:g} s while {doing}"
        return f"{err.strerror or type(err).__name__} while {doing}"

    def _failed(self, err: OSError, doing: str) -> DependencyError:
        return self.error(self._reason(err, doing))

    def send(self, data: bytes) -> None:
        try:
            self._sock.settimeout(self._left("sending"))
            self._sock.sendall(data)
        except TimeoutError as err:
            raise self._failed(err, "sending") from None
        except OSError as err:
            said = self._last_words()
            shown = said.rstrip(b"\0\r\n")
            reason = self._reason(err, "sending" + (f" (it said {printable(shown)!r})"
                                                    if shown else ""))
            raise Cut(self.service, f"{self._where}: {reason}", said) from None

    def _last_words(self) -> bytes:
        """What the daemon said before it closed on us, e.g. clamd's 'INSTREAM size limit
        exceeded. ERROR': the reason is worth more than 'Broken pipe'."""
        try:
            self._sock.setblocking(False)
            return self._sock.recv(512)
        except OSError:
            return b""

    def end_request(self) -> None:
        """Half-close: the daemon sees the end of the request, the reply can still come back."""
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError as err:
            raise self._failed(err, "sending") from None

    def reply(self) -> bytes:
        """Everything the daemon sends until it closes the connection, as both do after a reply."""
        data = bytearray()
        try:
            while True:
                self._sock.settimeout(self._left("waiting for the reply"))
                piece = self._sock.recv(4096)
                if not piece:
                    return bytes(data)
                data += piece
                if len(data) > REPLY_LIMIT:
                    raise self.error(f"reply over {REPLY_LIMIT} bytes")
        except OSError as err:
            raise self._failed(err, "waiting for the reply") from None

    def error(self, message: str) -> DependencyError:
        """A protocol failure on this connection, naming the daemon's address."""
        return DependencyError(self.service, f"{self._where}: {message}", entry=ENTRY)

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
