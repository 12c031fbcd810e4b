"""Virus scanning through clamd's INSTREAM command.

The message is streamed in length-prefixed chunks from its file, never read whole.  A
message over clamd's StreamMaxLength is not sent at all: clamd would cut the stream and
could then only answer with an error.  A scan has three outcomes besides failing: clean,
infected, or not fully checked (too big to send, or clamd's own notices that it left
data over its limits unscanned).  Anything but a clear "OK" or "FOUND" answer raises
DependencyError, so a broken scanner never passes a message as clean.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from .errors import DependencyError
from .sockets import Connection, Cut, blocks, parse_address, printable

# clamd's notices for what it did not scan (AlertExceedsMax); "(null)" is what some
# versions name such a notice.  They say what was not looked at, never what was found.
LIMIT_NOTICES = ("Heuristics.Limits.Exceeded", "Heuristics.Email.ExceedsMax")
_NULL_NAME = "(null)"
_FOUND = re.compile(r"stream: (\S.*) FOUND")
_TOO_LONG = "INSTREAM size limit exceeded. ERROR"


def _is_notice(name: str) -> bool:
    return name == _NULL_NAME or name.startswith(LIMIT_NOTICES)


@dataclass(frozen=True)
class VirusResult:
    """The names clamd reported, and what it could not scan; none of either: clean."""

    names: tuple[str, ...] = ()
    unscanned: str = ""  # why the message was not sent to clamd at all

    @property
    def infected(self) -> bool:
        """A real detection: limit notices say what went unscanned, not what was found."""
        return any(not _is_notice(name) for name in self.names)

    @property
    def not_checked(self) -> str:
        """Why part of the message went unscanned; '' when clamd saw all of it."""
        notices = [name for name in self.names if _is_notice(name)]
        if notices:
            return f"clamd left data unscanned ({', '.join(notices)})"
        return self.unscanned


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
            return VirusResult(unscanned=f"message of {size} bytes is over clamd_max_size "
                                         f"({self.stream_max})")
        with Connection("clamd", self._endpoint, self.timeout) as conn:
            try:
                conn.send(b"zINSTREAM\0")
                for block in blocks(message, size, self.chunk, "clamd"):
                    conn.send(len(block).to_bytes(4, "big") + block)
                conn.send(b"\0\0\0\0")
            except Cut as cut:  # over its StreamMaxLength clamd answers and stops reading
                if cut.said.rstrip(b"\0") == _TOO_LONG.encode():
                    return _parse(conn, cut.said)
                raise
            return _parse(conn, conn.reply())

    def ping(self) -> bool:
        """True if clamd answers PONG: for health checks, never raises."""
        return not self.problem()

    def problem(self, timeout: float | None = None) -> str:
        """Why clamd does not answer PING now, or '' when it does (start-up warnings)."""
        try:
            with Connection("clamd", self._endpoint, timeout or self.timeout) as conn:
                conn.send(b"zPING\0")
                reply = conn.reply()
        except DependencyError as err:
            return err.message
        return "" if reply == b"PONG\0" else f"it answered PING with '{printable(reply)}'"


def _parse(conn: Connection, reply: bytes) -> VirusResult:
    """One NUL-terminated line per result ('z' mode): 'stream: OK' or 'stream: NAME FOUND'.

    Several FOUND lines are accepted (AllMatchScan).  clamd's "size limit exceeded" error
    (the stream was longer than its StreamMaxLength) means the message was not scanned and
    never will be; any other line, such as another '... ERROR', fails.
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
        elif line == _TOO_LONG:
            return VirusResult(unscanned="longer than clamd's StreamMaxLength (set "
                                         "clamd_max_size to it)")
        elif line != "stream: OK":
            raise conn.error(f"clamd answered {printable(line)!r}")
    return VirusResult(tuple(names))
