"""Canned DNS answers from a small file, for ``policy-milter test --dns stub=FILE``.

One record per line, ``NAME TYPE VALUE``; ``#`` starts a comment::

    192.0.2.7                 PTR  mx.example.net     # an address stands for its PTR name
    mx.example.net            A    192.0.2.7
    7.2.0.192.zen.example     A    127.0.0.2          # listed in zen.example
    7.2.0.192.zen.example     TXT  listed for testing
    broken.example            A    SERVFAIL           # a lookup error: the failure action

A name or type the file does not list does not exist (NXDOMAIN), as it would in a zone
that holds only these records.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from concurrent.futures import Future
from pathlib import Path

from .dns import Answer, DnsError, Key, key, reverse_name

TYPES = ("A", "AAAA", "PTR", "TXT", "MX", "CNAME")
FAILURE = "SERVFAIL"
TTL = 300


class StubError(ValueError):
    """A line of the stub file that cannot be read, as ``path:line: message``."""


class StubResolver:
    """Answers only from the file: never a packet on the network."""

    def __init__(self, records: dict[Key, tuple[str, ...]], failing: frozenset[Key]) -> None:
        self.records, self.failing = records, failing

    @classmethod
    def load(cls, path: Path) -> StubResolver:
        records: dict[Key, list[str]] = defaultdict(list)
        failing: set[Key] = set()
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise StubError(f"{path}: cannot read: {err}") from None
        for number, line in enumerate(text.split("\n"), start=1):
            words = line.split("#", 1)[0].split(None, 2)
            if not words:
                continue
            if len(words) < 3 or words[1].upper() not in TYPES:
                raise StubError(f"{path}:{number}: expected NAME TYPE VALUE, TYPE one of "
                                f"{', '.join(TYPES)}")
            name, rdtype, value = words[0], words[1].upper(), words[2].strip()
            k = key(_owner(name, rdtype), rdtype)
            if value.upper() == FAILURE:
                failing.add(k)
            else:
                records[k].append(value.rstrip(".").lower() if rdtype != "TXT" else value)
        return cls({k: tuple(v) for k, v in records.items()}, frozenset(failing))

    def submit(self, name: str, rdtype: str) -> Future[Answer]:
        k = key(name, rdtype)
        future: Future[Answer] = Future()
        if k in self.failing:
            future.set_exception(DnsError(f"{rdtype} {name}: SERVFAIL (stub file)"))
        else:
            future.set_result(Answer(k[0], k[1], self.records.get(k, ()), TTL))
        return future


def _owner(name: str, rdtype: str) -> str:
    """An address written as the name of a PTR record stands for its reverse name."""
    if rdtype == "PTR":
        try:
            return reverse_name(str(ipaddress.ip_address(name)))
        except ValueError:
            pass
    return name


class DnsOff:
    """``--dns off``: the checks that need DNS are left out; a lookup started anyway (a
    prefetch) fails, and nothing reads it."""

    def submit(self, name: str, rdtype: str) -> Future[Answer]:
        future: Future[Answer] = Future()
        future.set_exception(DnsError(f"{rdtype} {name}: DNS is off"))
        return future
