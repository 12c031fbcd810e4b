"""Reading the milter's own log back: the inverse of log.py, for explain, replay and report.

A line may come as the milter wrote it (``ts=... level=... event=...``), through syslog
(``Nov 30 12:00:01 mx policy-milter[812]: level=info event=...``, or an ISO stamp in
front), or on stderr (``policy-milter: level=...``).  Whatever precedes the first
``level=`` is the carrier's; lines without one are not ours and are skipped.  Values are
unescaped exactly as log.quote escaped them, so an undecodable byte comes back as the
same lone surrogate the milter saw.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

_START = re.compile(r"(?:^|\s)(?:ts=(\S+) )?level=")
_PAIR = re.compile(r'([a-z_]+)=("(?:[^"\\]|\\.)*"|\S*)')
_ESCAPE = re.compile(r'\\(?:x([0-9a-f]{2})|u([0-9a-f]{4})|U([0-9a-f]{8})|(.))')
_SIMPLE = {'"': '"', "\\": "\\", "n": "\n", "r": "\r", "t": "\t"}
_SYSLOG_STAMP = re.compile(r"^(\w{3}) +(\d+) (\d\d:\d\d:\d\d) ")
_ISO_STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?)(Z|[+-]\d\d:?\d\d)? ")

# The answers that told the client no (an ``action`` or ``result`` value); a discard is
# not one: the client was told the mail was taken.  report and replay both count by it.
REFUSALS = frozenset({"reject", "tempfail"})


def unquote(text: str) -> str:
    """A logfmt value as log.quote wrote it."""
    if not text.startswith('"'):
        return text
    return _ESCAPE.sub(_unescape, text[1:-1])


def _unescape(m: re.Match[str]) -> str:
    if m.group(1):
        return chr(0xDC00 + int(m.group(1), 16))  # the byte, as surrogateescape holds it
    if m.group(2) or m.group(3):
        return chr(int(m.group(2) or m.group(3), 16))
    return _SIMPLE.get(m.group(4), m.group(4))


@dataclass(frozen=True)
class Record:
    """One line of the milter's log: its fields, and when it was written (None: the line
    carried no time stamp this module knows)."""

    fields: dict[str, str]
    when: datetime | None
    source: str  # 'FILE:LINE' where it was read

    def __getitem__(self, name: str) -> str:
        return self.fields.get(name, "")

    @property
    def event(self) -> str:
        return self.fields.get("event", "")


def parse(line: str, source: str = "", year: int | None = None) -> Record | None:
    """The record of one log line, or None if the milter did not write it."""
    m = _START.search(line)
    if m is None:
        return None
    body = line[m.start():].lstrip()
    values = {name: unquote(value) for name, value in _PAIR.findall(body)}
    values.pop("ts", None)
    return Record(values, _stamp(m.group(1), line[:m.start()], year), source)


def _stamp(ts: str | None, prefix: str, year: int | None) -> datetime | None:
    if ts:
        return _iso(ts.rstrip("Z"), "Z")
    iso = _ISO_STAMP.match(prefix)
    if iso:
        return _iso(iso.group(1), iso.group(2) or "Z")
    legacy = _SYSLOG_STAMP.match(prefix)
    if legacy:  # RFC 3164 has no year: the caller's, else this one
        text = f"{legacy.group(1)} {legacy.group(2)} {year or datetime.now(UTC).year} " \
               f"{legacy.group(3)}"
        try:
            return datetime.strptime(text, "%b %d %Y %H:%M:%S").replace(tzinfo=UTC)
        except ValueError:
            return None
    return None


def _iso(text: str, zone: str) -> datetime | None:
    try:
        stamp = datetime.fromisoformat(text + ("+00:00" if zone == "Z" else zone))
    except ValueError:
        return None
    return stamp.astimezone(UTC)


def records(paths: Iterable[str], since: datetime | None = None,
            until: datetime | None = None) -> Iterator[Record]:
    """Every record of the files named (``-``: standard input) within ``[since, until)``;
    a record without a time stamp is kept only when no bound is given."""
    for path in paths:
        for number, line in enumerate(_lines(path), start=1):
            record = parse(line.rstrip("\n"), f"{path}:{number}")
            if record is None:
                continue
            if since or until:
                if record.when is None or (since and record.when < since) \
                        or (until and record.when >= until):
                    continue
            yield record


def _lines(path: str) -> Iterator[str]:
    """A file's lines (``-``: standard input); a byte that is not UTF-8 (a mangled or
    foreign line) is kept as a lone surrogate rather than ending the read."""
    if path == "-":
        sys.stdin.reconfigure(errors="surrogateescape")  # type: ignore[union-attr]
        yield from sys.stdin
        return
    with open(path, encoding="utf-8", errors="surrogateescape") as lines:
        yield from lines


_AGO = re.compile(r"(\d+)([mhd])")
_UNIT = {"m": timedelta(minutes=1), "h": timedelta(hours=1), "d": timedelta(days=1)}


def moment(text: str, now: datetime | None = None) -> datetime:
    """A ``--since``/``--until`` bound: an ISO 8601 date or time (UTC unless it says),
    or a span before now such as ``90m``, ``24h``, ``7d``; ValueError otherwise."""
    ago = _AGO.fullmatch(text)
    if ago:
        return (now or datetime.now(UTC)) - int(ago.group(1)) * _UNIT[ago.group(2)]
    try:
        stamp = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"'{text}' is not an ISO 8601 date or time, nor a span like 24h")
    return stamp.replace(tzinfo=UTC) if stamp.tzinfo is None else stamp.astimezone(UTC)
