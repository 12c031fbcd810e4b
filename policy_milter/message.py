"""The message as the MTA hands it over, kept once: in memory while small, on disk after.

Scanners read it back as a stream from the start, so a 25 MB message costs a spool
file, not 25 MB (or twice that) of memory.  Header fields are also kept decoded for
the content rules, within bounds: a hostile message cannot make them grow without
limit, and undecodable bytes never raise.
"""

from __future__ import annotations

import tempfile
from typing import BinaryIO

SPOOL_THRESHOLD = 1 << 20  # bytes kept in memory before the message moves to a file
MAX_FIELDS = 1000  # header fields kept for rules (all of them still reach the scanners)
MAX_FIELD = 64 * 1024  # characters of one field value kept for rules


class MessageBuffer:
    """Header fields and body of one message, in the order they arrived."""

    def __init__(self, threshold: int = SPOOL_THRESHOLD) -> None:
        self._spool = tempfile.SpooledTemporaryFile(max_size=threshold, prefix="policy-milter-")
        self.fields: list[tuple[str, str]] = []
        self.size = 0
        self._body_started = False

    def header(self, name: str, value: bytes) -> None:
        raw = name.encode("utf-8", "surrogateescape") + b": " + value + b"\r\n"
        self._write(raw)
        if len(self.fields) < MAX_FIELDS:
            text = value.decode("utf-8", "surrogateescape")[:MAX_FIELD]
            self.fields.append((name, text))

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
        """The first field of that name, as received (case-insensitive name)."""
        low = name.lower()
        return next((v for n, v in self.fields if n.lower() == low), None)

    def close(self) -> None:
        self._spool.close()
