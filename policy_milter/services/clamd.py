"""Virus scanning through clamd's INSTREAM command.

The message is streamed in length-prefixed chunks from its file, never read whole.  A
message over clamd's StreamMaxLength is refused here, before any byte is sent: clamd would
cut the stream and could otherwise only answer with an error.  Anything but a clear "OK"
or "FOUND" answer raises DependencyError, so a broken scanner never passes a message as clean.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from .errors import DependencyError
from .sockets import ENTRY, Connection, blocks, parse_address, printable

LIMITS = "Heuristics.Limits.Exceeded"  # clamd's notice (AlertExceedsMax) for what it did not scan
_FOUND = re.compile(r"stream: (\S.*) FOUND")


@dataclass(frozen=True)
class VirusResult:
    """The signatures clamd reported; none means the message is clean."""

    names: tuple[str, ...] = ()

    @property
    def infected(self) -> bool:
        """A real detection: limit notices say what went unscanned, not what was found."""
        return any(not name.startswith(LIMITS) for name in self.names)

    @property
    def limits_exceeded(self) -> bool:
        """Part of the message went unscanned: neither clean nor a virus, so the caller fails."""
        return any(name.startswith(LIMITS) for name in self.names)


class VirusScanner(Protocol):
    def scan(self, message: BinaryIO) -> VirusResult:
        """Scan ``message`` from its current position to its end; DependencyError on failure."""


class Clamd:
    """A clamd daemon at 'tcp:HOST:PORT' or 'unix:/PATH'.

    ``stream_max`` must not exceed clamd's StreamMaxLength (Debian's default: 25M), or large
    messages fail as clamd cuts the stream; ``chunk`` bounds the memory a scan uses.
    """

    def __init__(self, address: str, timeout: float = 30.0, stream_max: int = 25 * 1024 * 1024,
                 chunk: int = 65536) -> None:
        self.address = address
        self.timeout = timeout
        self.stream_max = stream_max
        self.chunk = chunk
        self._endpoint = parse_address(address)

    def scan(self, message: BinaryIO) -> VirusResult:
        start = message.tell()
        message.seek(0, os.SEEK_END)
        size = message.tell() - start
        message.seek(start)
        if size > self.stream_max:
            raise DependencyError(
                "clamd", f"message of {size} bytes is over the scan limit of {self.stream_max}",
                entry=ENTRY)
        with Connection("clamd", self._endpoint, self.timeout) as conn:
            conn.send(b"zINSTREAM\0")
            for block in blocks(message, size, self.chunk, "clamd"):
                conn.send(len(block).to_bytes(4, "big") + block)
            conn.send(b"\0\0\0\0")
            return _parse(conn, conn.reply())

    def ping(self) -> bool:
        """True if clamd answers PONG: for health checks, never raises."""
        try:
            with Connection("clamd", self._endpoint, self.timeout) as conn:
                conn.send(b"zPING\0")
                return conn.reply() == b"PONG\0"
        except DependencyError:
            return False


def _parse(conn: Connection, reply: bytes) -> VirusResult:
    """One NUL-terminated line per result ('z' mode): 'stream: OK' or 'stream: NAME FOUND'.

    Several FOUND lines are accepted (AllMatchScan); any other line, such as '... ERROR', fails.
    """
    if not reply:
        raise conn.error("connection closed without a reply")
    if not reply.endswith(b"\0"):
        raise conn.error(f"reply not understood: {printable(reply)!r}")
    names = []
    for line in reply[:-1].decode("ascii", "replace").split("\0"):
        found = _FOUND.fullmatch(line)
        if found:
            names.append(printable(found[1]))
        elif line != "stream: OK":
            raise conn.error(f"clamd answered {printable(line)!r}")
    return VirusResult(tuple(names))
