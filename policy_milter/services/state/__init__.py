"""The state store: what several milter processes, and several mail hosts, share.

Rate counters (sliding windows), greylist triplets and the challenge allow lists live
behind one small interface, ``StateStore``, with three implementations: ``MemoryStore``
(this process only, gone at a restart), ``SqliteStore`` (the embedded store: one file
that survives a restart and that the processes of one host share) and ``RedisStore``
(one Redis server that several hosts share).  Every failure is a DependencyError naming
the store, so the engine applies the configured failure action.

Entries are strings under string keys, each with a time to live; counters are separate
and slide: ``total(key, window)`` is what ``record`` added in the last ``window`` seconds
(at most MAX_PERIOD: older records are dropped).  What expires goes without being read
again: Redis drops it itself, the other stores sweep now and then as they write.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple, Protocol
from urllib.parse import urlsplit

MAX_PERIOD = 7 * 86400  # the longest window a limit may use: counters are kept this long
SWEEP_EVERY = 300.0  # seconds between a store's deletions of expired entries and counts
FOREVER = 0.0  # a time to live of 0: the entry stays until it is deleted


class Entry(NamedTuple):
    key: str
    value: str
    expires: float  # time.time() when it goes, FOREVER for never


class StateStore(Protocol):
    name: str  # for the log: "state-memory", "state-sqlite", "redis"
    address: str  # where it is: "memory", the file, the server
    across_hosts: bool  # other hosts see what it holds (Redis): the MXes of a site share it

    def problem(self) -> str:
        """Why the store cannot answer now ('' when it can): the probe at start."""

    def total(self, key: str, window: float) -> int:
        """How much was recorded under ``key`` in the last ``window`` seconds."""

    def record(self, key: str, amount: int) -> None:
        """Record ``amount`` now under ``key``."""

    def get(self, key: str) -> str | None:
        """The value of a live entry, or None."""

    def put(self, key: str, value: str, ttl: float = FOREVER) -> None:
        """Set an entry, replacing any; it goes after ``ttl`` seconds (FOREVER: never)."""

    def add(self, key: str, value: str, ttl: float = FOREVER) -> str:
        """Set an entry unless a live one exists, atomically across processes and hosts:
        the value now stored (``value`` itself when it was set, so that ``is`` tells;
        else the one that was there, even if equal)."""

    def delete(self, key: str) -> bool:
        """Remove an entry; False when there was none."""

    def entries(self, prefix: str) -> Iterable[Entry]:
        """The live entries whose key starts with ``prefix`` (for the admin; not fast)."""

    def close(self) -> None:
        """Release connections and files."""


@dataclass(frozen=True)
class RedisServer:
    """Where the store is: ``redis://HOST[:PORT][/DB]`` or ``redis+unix:///PATH[?db=N]``."""

    host: str = ""
    port: int = 6379
    db: int = 0
    unix: str = ""

    @classmethod
    def parse(cls, url: str) -> RedisServer:
        """Raises ValueError saying what is wrong (a password in it, above all)."""
        parts = urlsplit(url)
        if parts.password is not None or parts.username:
            raise ValueError("no user or password in the URL: give the password in "
                             "state_password_file")
        try:
            if parts.scheme == "redis+unix" and parts.path:
                query = dict(p.split("=", 1) for p in parts.query.split("&") if p)
                return cls(unix=parts.path, db=int(query.pop("db", "0")))
            if parts.scheme == "redis" and parts.hostname and not parts.query:
                db = parts.path.strip("/")
                return cls(host=parts.hostname, port=parts.port or 6379, db=int(db or "0"))
        except ValueError:
            pass
        raise ValueError(f"'{url}' is not redis://HOST[:PORT][/DB] or "
                         "redis+unix:///PATH[?db=N]")

    def __str__(self) -> str:
        return f"unix:{self.unix} db {self.db}" if self.unix else \
            f"{self.host}:{self.port} db {self.db}"
