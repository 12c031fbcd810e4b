"""Reading rule files into logical lines, and collecting every error with its place.

All rule files share one lexical form: ``#`` starts a comment (at the start of a line or
after white space), blank lines are ignored, and a line that starts with white space
continues the previous one, as in Postfix's main.cf and map files.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .. import catalogue
from ..services.state import MAX_PERIOD

_COMMENT = re.compile(r"(^|\s)#.*$")


@dataclass(frozen=True)
class Line:
    """One logical line of a rule file."""

    path: str
    number: int
    text: str

    @property
    def where(self) -> str:
        return f"{self.path}:{self.number}"

    def words(self) -> list[str]:
        """White-space separated words, with comma lists (``a, b``) kept as one word."""
        return re.sub(r"\s*,\s*", ",", self.text).split()


class RuleErrors(Exception):
    """Every problem found in a set of rule files, each as ``path:line: message``."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


class Errors:
    """Collects errors so that a load reports all of them at once, and hashes every file
    it read, in order, so that a log line can say which rules decided."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self._read = hashlib.sha256()

    def saw(self, raw: bytes) -> None:
        """A file's bytes, as read: the digest depends on content and order, not paths."""
        self._read.update(len(raw).to_bytes(8, "big"))
        self._read.update(raw)

    @property
    def digest(self) -> str:
        """A short hash of every file read: 12 hex digits (48 bits) tell rule sets apart."""
        return self._read.hexdigest()[:12]

    def add(self, where: str, message: str) -> None:
        self.items.append(f"{where}: {message}")

    def raise_if_any(self) -> None:
        if self.items:
            raise RuleErrors(self.items)


def read_lines(path: Path, label: str, errors: Errors, named_at: str = "") -> list[Line]:
    """The logical lines of ``path``; ``label`` is how messages name the file, and
    ``named_at`` the line that named it (where a missing file is reported)."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        if named_at:
            errors.add(named_at, f"cannot read {label}: {err.strerror or err}")
        else:
            errors.add(label, f"cannot read: {err.strerror or err}")
        return []
    errors.saw(raw)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        errors.add(f"{label}:{line}", "not valid UTF-8")
        return []
    lines: list[Line] = []
    # Only LF ends a line (a CRLF's CR goes with the trailing white space): splitlines()
    # also breaks at form feeds and Unicode separators, which would shift every later
    # line number and turn the rest of a comment into a rule.
    for number, physical in enumerate(text.split("\n"), start=1):
        content = _COMMENT.sub("", physical).rstrip()
        if not content.strip():
            continue
        if content[0] in " \t":
            if not lines:
                errors.add(f"{label}:{number}", "continuation line with nothing to continue")
                continue
            prev = lines[-1]
            lines[-1] = Line(prev.path, prev.number, f"{prev.text} {content.strip()}")
        else:
            lines.append(Line(label, number, content.strip()))
    return lines


def did_you_mean(word: str, names: Iterable[str]) -> str:
    """``; did you mean 'NAME'?`` for the name closest to a misspelt word, or ''."""
    by_lower = {name.lower(): name for name in names}
    close = difflib.get_close_matches(word.lower(), by_lower, n=1)
    return f"; did you mean '{by_lower[close[0]]}'?" if close and close[0] != word else ""


def unknown_entry(name: str) -> str:
    return f"unknown catalogue entry '{name}'{did_you_mean(name, catalogue.ENTRIES)}"


SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
PERIOD_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_size(text: str) -> int:
    """``0``, ``512K``, ``25M``, ``1G`` -> octets (binary units, as Postfix's docs count)."""
    m = re.fullmatch(r"(\d+)([kKmMgG]?)", text)
    if not m:
        raise ValueError(f"'{text}' is not a size (a number with an optional K, M or G)")
    return int(m.group(1)) * SIZE_UNITS[m.group(2).lower()]


def parse_count(text: str) -> int:
    if not re.fullmatch(r"\d+", text):
        raise ValueError(f"'{text}' is not a whole number")
    return int(text)


def parse_rate(text: str) -> tuple[int, int]:
    """``100/1h`` -> (100, 3600): at most 100 in any hour."""
    m = re.fullmatch(r"(\d+)/(\d*)([smhd])", text)
    if not m:
        raise ValueError(f"'{text}' is not a rate (like 100/1h: a count per s, m, h or d)")
    period = int(m.group(2) or 1) * PERIOD_UNITS[m.group(3)]
    if not 0 < period <= MAX_PERIOD:
        raise ValueError(f"'{text}': the period must be between 1s and 7d")
    return int(m.group(1)), period


def parse_bool(text: str) -> bool:
    low = text.lower()
    if low in ("yes", "true", "on", "1"):
        return True
    if low in ("no", "false", "off", "0"):
        return False
    raise ValueError(f"'{text}' is not yes or no")
