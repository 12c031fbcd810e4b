"""Archives recognised by their content, never by their name, and listed within bounds.

An attachment is an archive when its first bytes say so (zip, gzip, bzip2, xz, tar, rar,
7z), whatever it is called or typed as.  zip and tar archives are listed, and archives
inside them (compressed ones decompressed) up to ``max_depth`` levels; all levels
together list at most ``max_entries`` entries and decompress at most ``max_size`` bytes,
before a deadline.  rar and 7z are recognised but not listed: no well-kept library reads
them without an outside program.  Whatever could not be looked at (an encrypted entry,
an archive that cannot be listed or read, a limit reached) is reported, never skipped in
silence; every label found ("zip", "encrypted", "unlisted" ...) is reported too, so a rule
can refuse archives it cannot see into.
"""

from __future__ import annotations

import bz2
import functools
import gzip
import io
import lzma
import tarfile
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO

HEAD = 512  # bytes that identify an archive (tar's magic is at offset 257)
_SPOOL = 1 << 20  # decompressed data is kept in memory up to this, then on disk
_MAGIC = (
    (b"PK\x03\x04", "zip"), (b"PK\x05\x06", "zip"), (b"PK\x07\x08", "zip"),
    (b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"), (b"\xfd7zXZ\x00", "xz"),
    (b"7z\xbc\xaf\x27\x1c", "7z"), (b"Rar!\x1a\x07", "rar"),
)
COMPRESSED: dict[str, Callable[[IO[bytes]], io.BufferedIOBase]] = {
    "gzip": lambda f: gzip.GzipFile(fileobj=f, mode="rb"),
    "bzip2": lambda f: bz2.BZ2File(f),
    "xz": lambda f: lzma.LZMAFile(f),
}
UNLISTED = frozenset({"rar", "7z"})
KINDS = frozenset({k for _, k in _MAGIC} | {"tar"})
LABELS = KINDS | {"encrypted", "unlisted"}
# What goes wrong reading an archive someone built to break readers.
_BROKEN = (zipfile.BadZipFile, tarfile.TarError, zlib.error, lzma.LZMAError, EOFError,
           OSError, ValueError, NotImplementedError, RuntimeError, OverflowError, KeyError)


def kind_of(head: bytes) -> str:
    """The archive kind the first bytes of some data show, or ''."""
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    return "tar" if head[257:262] == b"ustar" else ""


@dataclass
class Listing:
    """What the archives of one message held, and what could not be looked at."""

    names: list[str] = field(default_factory=list)  # entry names, every level
    labels: set[str] = field(default_factory=set)  # kinds found, "encrypted", "unlisted"
    missed: str = ""  # the first thing not looked at, '' when all was
    entries: int = 0
    size: int = 0  # decompressed bytes read so far

    def miss(self, cause: str) -> None:
        self.missed = self.missed or cause


class _Stop(Exception):
    """A limit for the whole message was reached: stop listing."""


@dataclass(frozen=True)
class Limits:
    max_depth: int
    max_entries: int
    max_size: int
    deadline: float


def inspect(data: IO[bytes], kind: str, limits: Limits, listing: Listing) -> None:
    """List the archive in ``data`` (positioned at its start), and the archives in it."""
    work: list[tuple[IO[bytes], str, int]] = [(data, kind, 1)]
    try:
        while work:
            stream, kind, depth = work.pop()
            try:
                listing.labels.add(kind)
                for inner, inner_kind in _entries(stream, kind, depth, limits, listing):
                    work.append((inner, inner_kind, depth + 1))
            except _BROKEN as err:
                listing.labels.add("unlisted")
                listing.miss(f"a {kind} archive could not be read ({type(err).__name__})")
            finally:
                if stream is not data:
                    stream.close()
    except _Stop:
        pass
    finally:
        for stream, _, _ in work:
            if stream is not data:
                stream.close()


def _entries(stream: IO[bytes], kind: str, depth: int, limits: Limits,
             listing: Listing) -> list[tuple[IO[bytes], str]]:
    """Record one archive's entries; the archives found in it, extracted."""
    if kind in UNLISTED:
        listing.labels.add("unlisted")
        listing.miss(f"a {kind} archive cannot be listed")
        return []
    if kind in COMPRESSED:
        return _decompressed(stream, kind, depth, limits, listing)
    found: list[tuple[IO[bytes], str]] = []
    try:
        if kind == "zip":
            with zipfile.ZipFile(stream) as archive:
                for info in archive.infolist():
                    _count(info.filename, limits, listing)
                    if info.flag_bits & 0x1:
                        listing.labels.add("encrypted")
                        listing.miss("an encrypted archive entry cannot be looked into")
                    elif not info.is_dir():
                        found += _member(functools.partial(archive.open, info), depth,
                                         limits, listing)
        else:  # tar
            with tarfile.open(fileobj=stream, mode="r:") as archive:
                for entry in archive:
                    _count(entry.name, limits, listing)
                    if entry.isfile():
                        found += _member(functools.partial(archive.extractfile, entry),
                                         depth, limits, listing)
    except BaseException:
        for copy, _ in found:
            copy.close()
        raise
    return found


def _member(opener: Callable[[], IO[bytes] | None], depth: int, limits: Limits,
            listing: Listing) -> list[tuple[IO[bytes], str]]:
    """One entry, if it is an archive; an entry that cannot be read is reported and the
    listing goes on."""
    try:
        member = opener()
        if member is None:
            return []
        with member:
            return _nested(member, depth, limits, listing)
    except _BROKEN as err:
        listing.labels.add("unlisted")
        listing.miss(f"an archive entry could not be read ({type(err).__name__})")
        return []


def _decompressed(stream: IO[bytes], kind: str, depth: int, limits: Limits,
                  listing: Listing) -> list[tuple[IO[bytes], str]]:
    """A compressed file holds one file: its name (gzip keeps it) and, if an archive, it."""
    if kind == "gzip":
        name = _gzip_name(stream)
        if name:
            _count(name, limits, listing)
        stream.seek(0)
    with COMPRESSED[kind](stream) as plain:
        return _nested(plain, depth, limits, listing)


def _nested(member: IO[bytes] | io.BufferedIOBase, depth: int, limits: Limits,
            listing: Listing) -> list[tuple[IO[bytes], str]]:
    """An entry that is itself an archive, copied out for listing; [] when it is not."""
    head = member.read(HEAD)
    kind = kind_of(head)
    if not kind:
        return []
    if depth >= limits.max_depth:
        listing.labels.add(kind)
        listing.miss(f"archives nested deeper than {limits.max_depth} (archive_max_depth)")
        return []
    copy = tempfile.SpooledTemporaryFile(_SPOOL)
    try:
        copy.write(head)
        _account(len(head), limits, listing)
        while chunk := member.read(64 * 1024):
            _account(len(chunk), limits, listing)
            copy.write(chunk)
    except BaseException:
        copy.close()
        raise
    copy.seek(0)
    return [(copy, kind)]


def _count(name: str, limits: Limits, listing: Listing) -> None:
    if time.monotonic() > limits.deadline:
        listing.miss("the content scan ran out of time (content_timeout)")
        raise _Stop
    listing.entries += 1
    if listing.entries > limits.max_entries:
        listing.miss(f"archives with more than {limits.max_entries} entries "
                     "(archive_max_entries)")
        raise _Stop
    listing.names.append(name)


def _account(size: int, limits: Limits, listing: Listing) -> None:
    listing.size += size
    if listing.size > limits.max_size:
        listing.miss(f"archives unpacking to more than {limits.max_size} bytes "
                     "(archive_max_size)")
        raise _Stop


def _gzip_name(stream: IO[bytes]) -> str:
    """The original file name a gzip header may carry (RFC 1952 FNAME), or ''."""
    header = stream.read(10)
    if len(header) < 10 or not header[3] & 0x08:
        return ""
    if header[3] & 0x04:  # FEXTRA comes first
        extra = stream.read(2)
        stream.read(int.from_bytes(extra, "little") if len(extra) == 2 else 0)
    name = bytearray()
    while (byte := stream.read(1)) not in (b"\0", b"") and len(name) < 1024:
        name += byte
    return name.decode("latin-1")
