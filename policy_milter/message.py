"""The message as the MTA hands it over, kept once: in memory while small, on disk after.

Scanners and the content rules read it back as a stream from the start, so a 25 MB
message costs a spool file, not 25 MB (or twice that) of memory.  Besides, the first
value of the few header fields the milter itself acts on (challenge exemptions, the
spam subject tag) is kept, bounded: a hostile message cannot make them grow, and
undecodable bytes never raise.
"""

from __future__ import annotations

import tempfile
from typing import BinaryIO

SPOOL_THRESHOLD = 1 << 20  # bytes kept in memory before the message moves to a file
KEPT = frozenset({"subject", "list-id", "precedence", "auto-submitted"})
MAX_KEPT = 64 * 1024  # characters of one kept field value


class MessageBuffer:
    """Header fields and body of one message, in the order they arrived."""

    def __init__(self, threshold: int = SPOOL_THRESHOLD) -> None:
        self._spool = tempfile.SpooledTemporaryFile(max_size=threshold, prefix="policy-milter-")
        self._first: dict[str, str] = {}
        self.size = 0
        self._body_started = False

    def header(self, name: str, value: bytes) -> None:
        raw = name.encode("utf-8", "surrogateescape") + b": " + value + b"\r\n"
        self._write(raw)
        low = name.lower()
        if low in KEPT and low not in self._first:
            self._first[low] = value[:MAX_KEPT].decode("utf-8", "replace")

    def body(self, chunk: bytes) -> None:
        if not self._body_started:
            self._write(b"\r\n")
            self._body_started = True
        self._write(chunk)

    def _write(self, data: bytes) -> None:
        self._spool.write(data)
        self.size += len(data)

    def open(self) -> BinaryIO:
        """The raw message from its first byte; read it before the next write."""
        if not self._body_started:
            self.body(b"")
        self._spool.seek(0)
        return self._spool  # type: ignore[return-value]

    def first(self, name: str) -> str | None:
        """The first field of that name (one of ``KEPT``), as received."""
        low = name.lower()
        if low not in KEPT:
            raise KeyError(f"{name} is not a header field the buffer keeps")
        return self._first.get(low)

    def close(self) -> None:
        self._spool.close()
