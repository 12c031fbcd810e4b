"""What content rules look at: header fields, decoded text, attachment names, MIME types.

The message is parsed with Python's ``email`` package only when a rule asks, and only
up to a size bound; nested messages and the member names of zip archives count too.
Malformed MIME, unknown charsets and broken archives never raise: what cannot be
read is simply not there to match.
"""

from __future__ import annotations

import email
import email.errors
import email.header
import email.policy
import fnmatch
import io
import re
import zipfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from email.message import Message
from functools import cached_property
from typing import Generic, TypeVar, cast

from .message import MessageBuffer
from .patterns import PatternError

T = TypeVar("T")
MAX_ARCHIVE_NAMES = 1000
_FLAGS = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL}


def decode_field(value: str) -> str:
    """An RFC 2047 encoded header value as text; undecodable parts are kept as written."""
    try:
        return str(email.header.make_header(email.header.decode_header(value)))
    except (ValueError, LookupError, email.errors.HeaderParseError):
        return value


def _text(part: Message) -> str:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    charset = part.get_content_charset() or "utf-8"
    try:
        return payload.decode(charset, "replace")
    except LookupError:  # a charset Python does not know
        return payload.decode("latin-1")


def _archive_names(data: bytes) -> list[str]:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return archive.namelist()[:MAX_ARCHIVE_NAMES]
    except (zipfile.BadZipFile, ValueError, NotImplementedError, OSError):
        return []


class MessageFacts:
    """The facts of one message, each worked out at most once."""

    def __init__(self, message: MessageBuffer, max_parse: int) -> None:
        self.message = message
        self.max_parse = max_parse

    @cached_property
    def fields(self) -> list[tuple[str, str]]:
        return [(name, decode_field(value)) for name, value in self.message.fields]

    @cached_property
    def _parts(self) -> list[Message]:
        if self.message.size > self.max_parse:
            return []
        return list(email.message_from_binary_file(self.message.open(),
                                                   policy=email.policy.compat32).walk())

    @cached_property
    def texts(self) -> list[str]:
        return [_text(p) for p in self._parts
                if p.get_content_maintype() == "text" and not p.get_filename()]

    @cached_property
    def mime_types(self) -> list[str]:
        return [p.get_content_type() for p in self._parts]

    @cached_property
    def attachments(self) -> list[str]:
        names: list[str] = []
        for part in self._parts:
            try:
                name = part.get_filename()
            except (ValueError, LookupError):
                continue
            if not name:
                continue
            names.append(name)
            if name.lower().endswith(".zip") or part.get_content_type() == "application/zip":
                payload = part.get_payload(decode=True)
                if isinstance(payload, bytes):
                    names += _archive_names(payload)
        return names


def _regex(text: str) -> re.Pattern[str]:
    m = re.fullmatch(r"/(.*)/([ims]*)", text, re.DOTALL)
    if not m:
        raise PatternError(f"'{text}' is not a /regex/ (flags i, m, s may follow)")
    flags = 0
    for flag in m.group(2):
        flags |= _FLAGS[flag]
    try:
        return re.compile(m.group(1), flags)
    except re.error as err:
        raise PatternError(f"'{text}': {err}") from None


class ContentPatterns(ABC, Generic[T]):
    """Patterns over MessageFacts; never hashable, so rules using them are scanned."""

    def __init__(self) -> None:
        self._items: list[tuple[object, T]] = []

    def hashable(self) -> bool:
        return False

    def __bool__(self) -> bool:
        return bool(self._items)

    def find(self, facts: MessageFacts) -> Iterator[T]:
        return (payload for pattern, payload in self._items if self._matches(pattern, facts))

    @abstractmethod
    def add(self, text: str, payload: T) -> None: ...

    @abstractmethod
    def _matches(self, pattern: object, facts: MessageFacts) -> bool: ...


class HeaderPatterns(ContentPatterns[T]):
    """``Name=/regex/flags``: a field of that name whose decoded value matches."""

    def add(self, text: str, payload: T) -> None:
        name, eq, rx = text.partition("=")
        if not eq or not re.fullmatch(r"[!-9;-~]+", name):
            raise PatternError(f"'{text}' is not NAME=/regex/")
        self._items.append(((name.lower(), _regex(rx)), payload))

    def _matches(self, pattern: object, facts: MessageFacts) -> bool:
        name, rx = cast(tuple[str, re.Pattern[str]], pattern)
        return any(n.lower() == name and rx.search(v) for n, v in facts.fields)


class BodyPatterns(ContentPatterns[T]):
    """``/regex/flags`` over the decoded text of each text part."""

    def add(self, text: str, payload: T) -> None:
        self._items.append((_regex(text), payload))

    def _matches(self, pattern: object, facts: MessageFacts) -> bool:
        return any(pattern.search(t) for t in facts.texts)  # type: ignore[attr-defined]


class _GlobPatterns(ContentPatterns[T]):
    def add(self, text: str, payload: T) -> None:
        self._items.append((re.compile(fnmatch.translate(text), re.IGNORECASE), payload))

    @abstractmethod
    def _values(self, facts: MessageFacts) -> list[str]: ...

    def _matches(self, pattern: object, facts: MessageFacts) -> bool:
        return any(pattern.fullmatch(v) for v in self._values(facts))  # type: ignore[attr-defined]


class AttachmentPatterns(_GlobPatterns[T]):
    """File name globs (``*.exe``), also for names inside zip archives."""

    def _values(self, facts: MessageFacts) -> list[str]:
        return facts.attachments


class MimeTypePatterns(_GlobPatterns[T]):
    """MIME type globs (``application/x-msdownload``, ``video/*``) of any part."""

    def _values(self, facts: MessageFacts) -> list[str]:
        return facts.mime_types
