"""A MIME walker that reads a message once, as a stream, and never recurses on its depth.

It hands a visitor every top-level header field, every entity (the message itself, each
part of each multipart, each attached message) and the decoded bytes of every leaf, in
the order they appear.  Memory stays bounded whatever the message: a line is read in
pieces, a header field is kept up to ``MAX_FIELD``, a body is passed on as it is decoded.
Nesting is followed with an explicit stack, so a thousand nested multiparts cost a
thousand stack entries, not a thousand Python frames; deeper than ``max_depth`` (or past
the deadline) the walk stops with ``MimeLimit``, which says what was not looked at.

Malformed MIME never raises: a part without a usable Content-Type is text/plain (RFC 2045
5.2), a multipart without a boundary is text/plain too, a missing end is the end of the
message, undecodable base64 is skipped.
"""

from __future__ import annotations

import binascii
import email.message
import tempfile
import time
from dataclasses import dataclass
from typing import IO, Protocol

MAX_LINE = 64 * 1024  # bytes read at once; longer lines come in pieces
MAX_FIELD = 1024 * 1024  # bytes of one header field kept; a longer one is not fully seen
_PART_FIELDS = frozenset({"content-type", "content-disposition", "content-transfer-encoding"})
_ENCAPSULATED = frozenset({"message/rfc822", "message/global"})
_SPOOL = 1 << 20  # an encoded attached message is decoded into memory up to this, then disk


class MimeLimit(Exception):
    """The walk stopped early, so nothing after this point was looked at; why."""


@dataclass(frozen=True)
class Part:
    """One entity: the message itself at depth 0, its parts and attached messages below."""

    depth: int
    content_type: str  # type/subtype, lower case
    filename: str  # '' when it has none
    charset: str  # '' when none is given
    attachment: bool  # Content-Disposition: attachment
    encoding: str  # Content-Transfer-Encoding, lower case
    boundary: bytes = b""  # for a multipart

    @property
    def maintype(self) -> str:
        return self.content_type.partition("/")[0]

    @property
    def text(self) -> bool:
        """Text a reader sees in the message itself: what body rules read."""
        return self.maintype == "text" and not self.attachment


class Visitor(Protocol):
    def field(self, name: str, value: str) -> None:
        """A top-level header field, its value as received (not yet RFC 2047-decoded)."""

    def part(self, part: Part) -> None:
        """An entity begins (its header fields have been read)."""

    def data(self, part: Part, chunk: bytes) -> None:
        """Decoded body bytes of a leaf entity."""

    def end(self, part: Part) -> None:
        """A leaf entity ended."""


def _make_part(fields: dict[str, str], depth: int, default: str) -> Part:
    """The part's MIME facts from its Content-* fields, as Python's email package reads
    parameters (RFC 2231 included); anything unusable falls back to RFC 2045's text/plain."""
    msg = email.message.Message()
    if default != "text/plain":
        msg.set_default_type(default)
    for name, value in fields.items():
        msg[name] = value
    try:
        ctype = msg.get_content_type()
        boundary = msg.get_boundary() if ctype.startswith("multipart/") else None
        filename = msg.get_filename() or ""
        charset = msg.get_content_charset() or ""
        attachment = msg.get_content_disposition() == "attachment"
    except (ValueError, LookupError, TypeError):
        return Part(depth, "text/plain", "", "", False, "")
    if ctype.startswith("multipart/") and not boundary:
        ctype = "text/plain"  # a multipart without its boundary cannot be split
    encoding = msg.get("content-transfer-encoding", "").strip().lower()
    return Part(depth, ctype, str(filename), charset, attachment, encoding,
                (boundary or "").encode("utf-8", "surrogateescape"))


class _Decoder:
    """Content-Transfer-Encoding, undone line by line."""

    def __init__(self, encoding: str) -> None:
        self.encoding = encoding
        self._pending = b""  # base64 characters not yet a multiple of four

    def feed(self, line: bytes) -> bytes:
        if self.encoding == "base64":
            chars = self._pending + b"".join(line.split())
            cut = len(chars) - len(chars) % 4
            self._pending = chars[cut:]
            return self._base64(chars[:cut])
        if self.encoding == "quoted-printable":
            return binascii.a2b_qp(line)
        return line

    def flush(self) -> bytes:
        rest, self._pending = self._pending, b""
        return self._base64(rest + b"=" * (-len(rest) % 4)) if rest.strip(b"=") else b""

    @staticmethod
    def _base64(chars: bytes) -> bytes:
        try:
            return binascii.a2b_base64(chars)
        except binascii.Error:
            return b""  # garbage in a base64 part: nothing a reader would see either


class Walker:
    """Walks one message from ``stream`` (positioned at its first byte) for ``visitor``."""

    def __init__(self, stream: IO[bytes], visitor: Visitor, max_depth: int, deadline: float,
                 base_depth: int = 0) -> None:
        self._stream = stream
        self._visitor = visitor
        self._max_depth = max_depth
        self._deadline = deadline
        self._base = base_depth
        self._pushed: bytes | None = None
        self._line_start = True
        self._open: list[tuple[bytes, int, bool]] = []  # open multiparts: boundary, depth,
        # and whether it is a multipart/digest (whose parts are messages by default)

    def run(self) -> None:
        part: Part | None = self._headers(self._base, top=self._base == 0, default="text/plain")
        while part is not None:
            part = self._entity(part)

    # --- reading ---------------------------------------------------------------------

    def _line(self) -> tuple[bytes, bool] | None:
        """The next line, or the next piece of a long one, and whether it begins a line."""
        if self._pushed is not None:
            line, self._pushed = self._pushed, None
            return line, True
        line = self._stream.readline(MAX_LINE)
        if not line:
            return None
        start = self._line_start
        self._line_start = line.endswith(b"\n")
        return line, start

    def _boundary(self, line: bytes, start: bool) -> tuple[int, bool] | None:
        """(index in the open multiparts, closing) when ``line`` is a delimiter line."""
        if not start or not self._open or not line.startswith(b"--") \
                or not line.endswith(b"\n"):
            return None
        core = line[2:].rstrip(b" \t\r\n")
        closing = core.endswith(b"--")
        for index in range(len(self._open) - 1, -1, -1):  # the innermost first
            boundary = self._open[index][0]
            if core == boundary:
                return index, False
            if closing and core[:-2] == boundary:
                return index, True
        return None

    def _check_time(self) -> None:
        if time.monotonic() > self._deadline:
            raise MimeLimit("the content scan ran out of time (content_timeout)")

    # --- entities --------------------------------------------------------------------

    def _headers(self, depth: int, *, top: bool, default: str) -> Part:
        """Read a header block: top-level fields go to the visitor; the Content-* fields
        make the Part.  A block cut short by a delimiter line or the end is taken as is."""
        fields: dict[str, str] = {}
        name, value, size = "", bytearray(), 0

        def finish() -> None:
            if not name:
                return
            if size > MAX_FIELD:
                raise MimeLimit(f"a header field over {MAX_FIELD} bytes")
            text = value.decode("utf-8", "replace").strip()
            if top:
                self._visitor.field(name, text)
            low = name.lower()
            if low in _PART_FIELDS and low not in fields:
                fields[low] = text

        while (got := self._line()) is not None:
            line, start = got
            if start and self._boundary(line, start) is not None:
                self._pushed = line
                break
            if start and line in (b"\r\n", b"\n"):
                break
            if start and line[:1] not in (b" ", b"\t"):
                finish()
                head, colon, rest = line.partition(b":")
                name = head.decode("utf-8", "replace").strip() if colon else ""
                value, size = bytearray(rest if colon else b""), len(line)
            else:
                size += len(line)
                if size <= MAX_FIELD:
                    value += line
        finish()
        return _make_part(fields, depth, default)

    def _entity(self, part: Part) -> Part | None:
        """Handle one entity; the next one to handle, or None at the end of the message."""
        self._check_time()
        if part.depth > self._max_depth:
            raise MimeLimit(f"MIME nesting deeper than {self._max_depth} (mime_max_depth)")
        self._visitor.part(part)
        if part.boundary:
            self._open.append((part.boundary, part.depth,
                               part.content_type == "multipart/digest"))
            return self._next(self._skip())
        if part.content_type in _ENCAPSULATED and part.encoding not in ("base64",
                                                                         "quoted-printable"):
            return self._headers(part.depth + 1, top=False, default="text/plain")
        return self._next(self._leaf(part))

    def _next(self, hit: tuple[int, bool] | None) -> Part | None:
        """After a delimiter line: the next part's headers, or the epilogue skipped."""
        while hit is not None:
            index, closing = hit
            _, depth, digest = self._open[index]
            del self._open[index + 1:]  # inner multiparts end with an outer delimiter
            if not closing:
                return self._headers(depth + 1, top=False,
                                     default="message/rfc822" if digest else "text/plain")
            self._open.pop()
            hit = self._skip()
        return None

    def _skip(self) -> tuple[int, bool] | None:
        """Skip a preamble or an epilogue: up to the next delimiter line, or the end."""
        while (got := self._line()) is not None:
            hit = self._boundary(*got)
            if hit is not None:
                return hit
        return None

    def _leaf(self, part: Part) -> tuple[int, bool] | None:
        """Decode a leaf's body for the visitor, up to the next delimiter line."""
        decoder = _Decoder(part.encoding)
        nested = part.content_type in _ENCAPSULATED  # encoded: walked once decoded
        spool = tempfile.SpooledTemporaryFile(_SPOOL) if nested else None
        hit = None
        lines = 0
        try:
            while (got := self._line()) is not None:
                hit = self._boundary(*got)
                if hit is not None:
                    break
                lines += 1
                if lines % 4096 == 0:
                    self._check_time()
                chunk = decoder.feed(got[0])
                if spool is not None:
                    spool.write(chunk)
                elif chunk:
                    self._visitor.data(part, chunk)
            tail = decoder.flush()
            if spool is not None:
                spool.write(tail)
                spool.seek(0)
                Walker(spool, self._visitor, self._max_depth, self._deadline,
                       part.depth + 1).run()
            else:
                if tail:
                    self._visitor.data(part, tail)
                self._visitor.end(part)
        finally:
            if spool is not None:
                spool.close()
        return hit
