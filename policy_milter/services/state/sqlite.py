"""The embedded state store: one SQLite file, kept across restarts.

The milter's threads share one connection behind a lock; other processes (the admin's
``policy-milter greylist``, forked workers) open their own, and a process that finds
itself forked opens a new one, since a SQLite connection must not cross a fork.  WAL
mode lets readers run beside the one writer; a write that must read first (``add``)
takes the write lock up front (BEGIN IMMEDIATE), and a process waits for another's lock
up to the store's timeout.  ``synchronous=NORMAL``: a power cut may lose the last
counts, never corrupt the file.  Every SQLite or OS error is a DependencyError.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from ..errors import DependencyError
from . import FOREVER, MAX_PERIOD, SWEEP_EVERY, Entry

SERVICE = "state-sqlite"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS count (key TEXT NOT NULL, at REAL NOT NULL, amount INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS count_key_at ON count (key, at);
CREATE TABLE IF NOT EXISTS entry (
    key TEXT PRIMARY KEY, value TEXT NOT NULL, expires REAL NOT NULL  -- 0: never
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS entry_expires ON entry (expires) WHERE expires > 0;
"""
_LIVE = "(expires = 0 OR expires > ?)"


class SqliteStore:
    """StateStore in the SQLite file ``path`` (made 0600 with its directory 0700 if new)."""

    name = SERVICE
    across_hosts = False  # the processes of one host only

    def __init__(self, path: Path, timeout: float = 1.0, clock: Callable[[], float] = time.time,
                 horizon: int = MAX_PERIOD) -> None:
        self.path = path
        self.address = str(path)
        self._timeout = timeout
        self._clock = clock
        self._horizon = horizon
        self._lock = threading.Lock()
        self._pid = 0
        self._db: sqlite3.Connection | None = None
        self._swept = 0.0
        with self._errors("opening"), self._lock:
            self._connection()

    def _connection(self) -> sqlite3.Connection:
        """This process's connection (a new one after a fork); the lock is held."""
        if self._db is not None and self._pid == os.getpid():
            return self._db
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with suppress(FileExistsError):
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        db = sqlite3.connect(self.path, timeout=self._timeout, isolation_level=None,
                             check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript("BEGIN IMMEDIATE;" + _SCHEMA + "COMMIT;")
        except sqlite3.Error:
            db.close()
            raise
        self._db, self._pid = db, os.getpid()
        return db

    def close(self) -> None:
        with self._lock:
            if self._db is not None and self._pid == os.getpid():
                self._db.close()
            self._db = None

    def problem(self) -> str:
        return ""  # it opened, or the milter did not start

    def total(self, key: str, window: float) -> int:
        now = self._clock()
        with self._use("reading a counter in") as db:
            row = db.execute("SELECT COALESCE(SUM(amount), 0) FROM count WHERE key = ? AND at > ?",
                             (key, now - window)).fetchone()
        return int(row[0])

    def record(self, key: str, amount: int) -> None:
        now = self._clock()
        with self._use("counting in") as db:
            db.execute("INSERT INTO count VALUES (?, ?, ?)", (key, now, amount))
            self._sweep(db, now)

    def get(self, key: str) -> str | None:
        with self._use("reading an entry in") as db:
            row = db.execute(f"SELECT value FROM entry WHERE key = ? AND {_LIVE}",
                             (key, self._clock())).fetchone()
        return None if row is None else str(row[0])

    def put(self, key: str, value: str, ttl: float = FOREVER) -> None:
        now = self._clock()
        with self._use("writing an entry in") as db:
            self._sweep(db, now)
            db.execute("INSERT OR REPLACE INTO entry VALUES (?, ?, ?)",
                       (key, value, self._expiry(ttl, now)))

    def add(self, key: str, value: str, ttl: float = FOREVER) -> str:
        now = self._clock()
        with self._use("adding an entry in") as db:
            self._sweep(db, now)  # before: a failed sweep must not hide an added entry
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute(f"SELECT value FROM entry WHERE key = ? AND {_LIVE}",
                                 (key, now)).fetchone()
                if row is None:
                    db.execute("INSERT OR REPLACE INTO entry VALUES (?, ?, ?)",
                               (key, value, self._expiry(ttl, now)))
                db.execute("COMMIT")
            finally:
                if db.in_transaction:
                    db.rollback()
        return value if row is None else str(row[0])

    def delete(self, key: str) -> bool:
        with self._use("deleting an entry in") as db:
            rows = db.execute(f"DELETE FROM entry WHERE key = ? AND {_LIVE} RETURNING key",
                              (key, self._clock())).fetchall()
        return bool(rows)

    def entries(self, prefix: str) -> Iterator[Entry]:
        with self._use("listing entries in") as db:
            rows = db.execute(f"SELECT key, value, expires FROM entry WHERE substr(key, 1, ?) = ?"
                              f" AND {_LIVE} ORDER BY key",
                              (len(prefix), prefix, self._clock())).fetchall()
        return iter([Entry(*row) for row in rows])

    @staticmethod
    def _expiry(ttl: float, now: float) -> float:
        return now + ttl if ttl else FOREVER

    def _sweep(self, db: sqlite3.Connection, now: float) -> None:
        """Now and then (every write asks), forget counts past the longest window and
        expired entries: a first-seen triplet that never comes back is never read again."""
        if now - self._swept < SWEEP_EVERY:
            return
        self._swept = now
        db.execute("DELETE FROM count WHERE at <= ?", (now - self._horizon,))
        db.execute("DELETE FROM entry WHERE expires > 0 AND expires <= ?", (now,))

    @contextmanager
    def _use(self, doing: str) -> Iterator[sqlite3.Connection]:
        with self._errors(doing), self._lock:
            yield self._connection()

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        try:
            yield
        except (sqlite3.Error, OSError) as err:
            raise DependencyError(SERVICE, f"{doing} {self.path}: {err}") from err
