"""What content rules look at: header fields, decoded text, attachment names, MIME types
and archive kinds, gathered in one streaming pass over the kept message.

The pass (``scan``) reads the message once with ``mime.Walker`` and tests every content
pattern of the loaded rules as each value goes by, so header and attachment-name rules
see every field and every part at any message size, without a parsed copy of the whole
message.  Attachment names include those inside archives, recognised by their content
(``archives``), to the configured depth.  Regexes are RE2's: their time is linear in the
text, so no pattern can stall the milter.  What the pass could not look at (MIME deeper
than allowed, text past ``content_max_size``, archives past their limits, the time
budget) is recorded by kind, so a rule that needed it is "not fully checked" instead of
passing in silence.
"""

from __future__ import annotations

import email.errors
import email.header
import fnmatch
import re
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any, Generic, TypeVar

import re2

from . import archives
from .mime import MimeLimit, Part, Walker
from .patterns import PatternError

T = TypeVar("T")
_REGEX = re.compile(r"/(.*)/([ims]*)", re.DOTALL)
_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # an invalid pattern is a load error of ours, not stderr noise
_OPTIONS.never_capture = True  # only whether it matches
_SPOOL = 1 << 20
KINDS = ("header", "body", "attachment", "mime_type", "archive")  # what patterns look at


def decode_field(value: str) -> str:
    """An RFC 2047 encoded header value as text; undecodable parts are kept as written."""
    try:
        return str(email.header.make_header(email.header.decode_header(value)))
    except (ValueError, LookupError, email.errors.HeaderParseError):
        return value


def compile_regex(text: str) -> Any:
    """``/pattern/flags`` (flags i, m, s) as an RE2 regex.  RE2 runs in time linear in the
    text; it has no backreferences or lookaround, and a pattern it refuses does not load."""
    m = _REGEX.fullmatch(text)
    if not m:
        raise PatternError(f"'{text}' is not a /regex/ (flags i, m, s may follow)")
    flags = "".join(sorted(set(m.group(2))))
    try:
        return re2.compile(f"(?{flags}){m.group(1)}" if flags else m.group(1), _OPTIONS)
    except re2.error as err:
        reason = err.args[0].decode() if err.args and isinstance(err.args[0], bytes) else err
        raise PatternError(f"'{text}': {reason} (patterns are RE2: no backreferences or "
                           "lookaround)") from None


@dataclass(frozen=True)
class Limits:
    """How far the pass may go; beyond, it records what it did not see."""

    text: int  # decoded text body rules read, all parts together (content_max_size)
    mime_depth: int
    archive_depth: int
    archive_entries: int
    archive_size: int
    seconds: float


@dataclass
class ScanResult:
    """Which pattern sets matched (payloads by set), and what was not looked at, by kind."""

    matched: dict[ContentPatterns[Any], list[Any]] = field(default_factory=dict)
    missed: dict[str, str] = field(default_factory=dict)

    def miss(self, kinds: Iterable[str], cause: str) -> None:
        for kind in kinds:
            self.missed.setdefault(kind, cause)

    def not_checked(self, kinds: Iterable[str]) -> str:
        """Why content of these kinds was not all seen; '' when it was."""
        return next((self.missed[k] for k in kinds if k in self.missed), "")


class ContentPatterns(ABC, Generic[T]):
    """Patterns over one kind of content.  Never hashable, so rules using them are
    walked in order; the scan tests them as the content goes by."""

    kind: str

    def __init__(self) -> None:
        self._items: list[tuple[Any, T]] = []  # (compiled pattern, payload)

    def hashable(self) -> bool:
        return False

    def __bool__(self) -> bool:
        return bool(self._items)

    def find(self, result: ScanResult) -> Iterator[T]:
        return iter(result.matched.get(self, ()))

    @abstractmethod
    def add(self, text: str, payload: T) -> None: ...


class HeaderPatterns(ContentPatterns[T]):
    """``Name=/regex/flags``: a top-level field of that name whose decoded value matches."""

    kind = "header"

    def add(self, text: str, payload: T) -> None:
        name, eq, rx = text.partition("=")
        if not eq or not re.fullmatch(r"[!-9;-~]+", name):
            raise PatternError(f"'{text}' is not NAME=/regex/")
        self._items.append(((name.lower(), compile_regex(rx)), payload))

    def test(self, name: str, value: str, result: ScanResult) -> None:
        for (wanted, rx), payload in self._items:
            if wanted == name and rx.search(value):
                _record(result, self, payload)


class BodyPatterns(ContentPatterns[T]):
    """``/regex/flags`` over the decoded text of each text part."""

    kind = "body"

    def add(self, text: str, payload: T) -> None:
        self._items.append((compile_regex(text), payload))

    def test(self, text: str, result: ScanResult) -> None:
        for rx, payload in self._items:
            if rx.search(text):
                _record(result, self, payload)


class GlobPatterns(ContentPatterns[T]):
    """Shell globs, case-insensitive, over names or types."""

    def add(self, text: str, payload: T) -> None:
        self._items.append((re.compile(fnmatch.translate(text), re.IGNORECASE), payload))

    def test(self, value: str, result: ScanResult) -> None:
        for rx, payload in self._items:
            if rx.fullmatch(value):
                _record(result, self, payload)


class AttachmentPatterns(GlobPatterns[T]):
    """File name globs (``*.exe``): part names, and entry names inside archives."""

    kind = "attachment"


class MimeTypePatterns(GlobPatterns[T]):
    """MIME type globs (``application/x-msdownload``, ``video/*``) of any part."""

    kind = "mime_type"


class ArchivePatterns(GlobPatterns[T]):
    """What archives were found: their kinds (zip, gzip, bzip2, xz, tar, rar, 7z), and
    ``encrypted`` or ``unlisted`` when something in one could not be looked into."""

    kind = "archive"

    def add(self, text: str, payload: T) -> None:
        if not any(fnmatch.fnmatch(label, text.lower()) for label in archives.LABELS):
            raise PatternError(f"'{text}' names no archive label "
                               f"({', '.join(sorted(archives.LABELS))})")
        super().add(text, payload)


def _record(result: ScanResult, patterns: ContentPatterns[T], payload: T) -> None:
    found = result.matched.setdefault(patterns, [])
    if payload not in found:
        found.append(payload)


class _Scan:
    """The visitor of one pass: tests each value against the patterns of its kind."""

    def __init__(self, patterns: Iterable[ContentPatterns[Any]], limits: Limits,
                 result: ScanResult) -> None:
        patterns = list(patterns)
        self.headers = [p for p in patterns if isinstance(p, HeaderPatterns)]
        self.bodies = [p for p in patterns if isinstance(p, BodyPatterns)]
        self.globs: dict[str, list[GlobPatterns[Any]]] = {}
        for p in patterns:
            if isinstance(p, GlobPatterns):
                self.globs.setdefault(p.kind, []).append(p)
        self.limits = limits
        self.result = result
        self.deadline = time.monotonic() + limits.seconds
        self.text_left = limits.text
        self.wants_archives = bool(self.globs.keys() & {"attachment", "archive"})
        self.listing = archives.Listing()
        self._text = bytearray()
        self._head = bytearray()
        self._archive: IO[bytes] | None = None
        self._kind = ""

    def field(self, name: str, value: str) -> None:
        if self.headers:
            decoded = decode_field(value)
            for patterns in self.headers:
                patterns.test(name.lower(), decoded, self.result)

    def part(self, part: Part) -> None:
        self._glob("mime_type", part.content_type)
        if part.filename:
            self._name(decode_field(part.filename))
        self._text.clear()
        self._head.clear()
        self._archive, self._kind = None, ""

    def data(self, part: Part, chunk: bytes) -> None:
        if part.text and self.bodies:
            if len(chunk) > self.text_left:
                self.result.miss(("body",), f"more text than content_max_size "
                                            f"({self.limits.text} bytes) for body rules")
                chunk = chunk[: self.text_left]
            self._text += chunk
            self.text_left -= len(chunk)
        if self.wants_archives:
            self._archive_data(chunk)

    def end(self, part: Part) -> None:
        if self._text:
            text = _decoded(bytes(self._text), part.charset)
            for patterns in self.bodies:
                patterns.test(text, self.result)
            self._text.clear()
        if self.wants_archives:
            if not self._kind and self._head:
                self._archive_data(b"", final=True)
            if self._archive is not None:
                self._list()

    def _name(self, name: str) -> None:
        self._glob("attachment", name)

    def _glob(self, kind: str, value: str) -> None:
        for patterns in self.globs.get(kind, ()):
            patterns.test(value, self.result)

    def _archive_data(self, chunk: bytes, final: bool = False) -> None:
        """Keep the first bytes until they say whether the part is an archive; keep an
        archive whole (within archive_max_size) to list it at the part's end."""
        if self._archive is not None:
            self._keep(chunk)
            return
        if self._kind == "-":  # not an archive
            return
        self._head += chunk
        if len(self._head) < archives.HEAD and not final:
            return
        self._kind = archives.kind_of(bytes(self._head)) or "-"
        if self._kind != "-":
            self._archive = tempfile.SpooledTemporaryFile(_SPOOL)
            self._keep(bytes(self._head))
        self._head.clear()

    def _keep(self, chunk: bytes) -> None:
        assert self._archive is not None
        self.listing.size += len(chunk)
        if self.listing.size > self.limits.archive_size:
            self._missed_archive(f"archives over archive_max_size "
                                 f"({self.limits.archive_size} bytes)")
            self._archive.close()
            self._archive, self._kind = None, "-"
            return
        self._archive.write(chunk)

    def _list(self) -> None:
        assert self._archive is not None
        before = len(self.listing.names)
        archive, self._archive = self._archive, None
        try:
            archive.seek(0)
            archives.inspect(archive, self._kind, archives.Limits(
                self.limits.archive_depth, self.limits.archive_entries,
                self.limits.archive_size, self.deadline), self.listing)
        finally:
            archive.close()
        for name in self.listing.names[before:]:
            self._name(name)
        for label in self.listing.labels:
            self._glob("archive", label)
        if self.listing.missed:
            self._missed_archive(self.listing.missed)

    def _missed_archive(self, cause: str) -> None:
        self.result.miss(("attachment", "archive"), cause)


def _decoded(data: bytes, charset: str) -> str:
    try:
        return data.decode(charset or "utf-8", "replace")
    except LookupError:  # a charset Python does not know
        return data.decode("latin-1")


def scan(message: IO[bytes], patterns: Iterable[ContentPatterns[Any]],
         limits: Limits) -> ScanResult:
    """One pass over ``message`` (positioned at its start) for ``patterns``."""
    result = ScanResult()
    visitor = _Scan(patterns, limits, result)
    try:
        Walker(message, visitor, limits.mime_depth, visitor.deadline).run()
    except MimeLimit as limit:
        result.miss(KINDS, str(limit))  # the walk stopped: nothing after was seen
    return result
