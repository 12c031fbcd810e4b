"""The store behind challenge-response: allow lists, challenge tokens and held messages.

Mail from a sender not on a protected recipient's allow list is held; the first held
message of a (recipient, sender) pair opens a challenge whose token the sender must send
back (the caller sends it once, when it may, and notes it with challenged()); the answer
allow-lists the pair and releases everything held for it.

A held message moves through  held -> released -> done  (answer() or release(), then
done() once the caller has re-injected it), or  held -> gone  (drop() or expire()).
Released rows stay until done(), so a crash between releasing and re-injecting loses
nothing: released() lists them for re-injection after a restart (delivery is at least
once; a crash after re-injecting but before done() delivers twice rather than never).

Files and rows: the spool file is written whole (temporary name, fsync, rename) before
its row is inserted, and a row is deleted before its file is removed, so every row
always has its file.  A crash in between leaves at worst an orphan file, which pending()
never shows and expire() sweeps once it is older than ``max_age``.

Both the milter's threads and the admin CLI's process use one SQLite database in WAL
mode; every write is a BEGIN IMMEDIATE transaction, so two processes wait for each other
(up to the busy timeout) instead of failing on a lock upgrade.  Every SQLite or OS error
is a DependencyError, so the milter tempfails instead of losing mail.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from .errors import DependencyError
from .state import StateStore

CHUNK = 64 * 1024  # messages are copied in chunks this size: never read whole
SUFFIX = ".eml"  # spool file of a held message: <id>.eml; anything else there is temporary
DATABASE = "challenges.sqlite3"

_COLUMNS = "id, token, sender, recipient, queued_at, size"
_SCHEMA = """
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS allowed (
    recipient TEXT NOT NULL, sender TEXT NOT NULL, PRIMARY KEY (recipient, sender)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS challenge (
    token TEXT PRIMARY KEY, recipient TEXT NOT NULL, sender TEXT NOT NULL,
    created REAL NOT NULL, UNIQUE (recipient, sender)
);
CREATE TABLE IF NOT EXISTS held (
    id TEXT PRIMARY KEY, token TEXT NOT NULL, sender TEXT NOT NULL, recipient TEXT NOT NULL,
    queued_at REAL NOT NULL, size INTEGER NOT NULL,
    released_at REAL  -- NULL while held; set by answer()/release() until done()
);
CREATE TABLE IF NOT EXISTS challenged (
    token TEXT PRIMARY KEY, sent REAL NOT NULL  -- the pair's challenge went out
);
CREATE INDEX IF NOT EXISTS held_token ON held (token);
CREATE INDEX IF NOT EXISTS held_queued ON held (queued_at);
COMMIT;
"""


@dataclass(frozen=True)
class Held:
    id: str  # 32 hex digits: safe in URLs and file names
    token: str  # the challenge token of its (recipient, sender) pair
    sender: str  # lowercase envelope sender (null senders are never challenged)
    recipient: str  # lowercase protected recipient
    queued_at: float  # time.time()
    size: int
    path: Path  # the spooled message


class ChallengeStore(Protocol):
    def allowed(self, recipient: str, sender: str) -> bool:
        """Whether ``sender`` is on ``recipient``'s allow list."""

    def allow(self, recipient: str, sender: str) -> None:
        """Put ``sender`` on ``recipient``'s allow list."""

    def hold(self, recipient: str, sender: str, message: BinaryIO,
             now: float | None = None) -> tuple[Held, bool]:
        """Spool ``message`` (read from its position to the end); True: no challenge has
        gone out for the pair yet (send one with ``Held.token``, then call challenged()).
        Callers check allowed() first; a pair allow-listed in between gets a new challenge."""

    def challenged(self, token: str) -> None:
        """The challenge with ``token`` went out."""

    def known(self, sender: str) -> bool:
        """Whether ``sender`` is on anyone's allow list (it answered a challenge before)."""

    def answer(self, token: str, sender: str) -> list[Held]:
        """The sender answered: allow-list the pair, return its messages, released.
        An unknown token or another sender changes nothing and returns []."""

    def release(self, held_id: str) -> Held | None:
        """Release one held message (the pair is not allow-listed); None if not held."""

    def drop(self, held_id: str) -> bool:
        """Delete one held message; False if not held."""

    def done(self, held: Held) -> None:
        """The caller re-injected a released message: forget it."""

    def pending(self) -> list[Held]:
        """Messages held and not released, oldest first."""

    def released(self, min_age: float = 0.0, now: float | None = None) -> list[Held]:
        """Messages released at least ``min_age`` seconds ago and not done: re-inject them."""

    def expire(self, max_age: float, now: float | None = None) -> list[Held]:
        """Drop held messages older than ``max_age`` and the tokens left without any."""

    def open_message(self, held: Held) -> BinaryIO:
        """The spooled message, for reading."""


def _pair_key(recipient: str, sender: str) -> str:
    return f"challenge-allowed:{_key(recipient)} {_key(sender)}"


def _sender_key(sender: str) -> str:
    return f"challenge-known:{_key(sender)}"


def _key(address: str) -> str:
    return address.lower()


class SqliteChallengeStore:
    """ChallengeStore in ``directory``: the DATABASE and spool/.  Thread-safe (one
    connection behind a lock) and safe to share with other processes.

    Held mail stays on the host that held it; the allow lists are also written to
    ``shared``, the state store, when it is one other hosts see (Redis), and read from
    either: a sender allowed through one MX is allowed on every MX sharing it."""

    def __init__(self, directory: Path, timeout: float = 10.0,
                 shared: StateStore | None = None) -> None:
        self.directory = directory
        self.shared = shared
        self._spool = directory / "spool"
        self._lock = threading.Lock()
        database = directory / DATABASE
        with self._errors(f"opening {directory}"):
            self._private(database)
            self._db = sqlite3.connect(database, timeout=timeout,
                                       isolation_level=None, check_same_thread=False)
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")  # a held message must outlive a power cut
                self._db.executescript(_SCHEMA)
            except sqlite3.Error:
                self._db.close()
                raise

    def _private(self, database: Path) -> None:
        """Tokens release held mail: the directories are made 0700 and the database and
        its -wal and -shm 0600 whatever the umask, and an older store is tightened.

        SQLite gives -wal and -shm the database's mode, so the database is created here
        first.  Existing files are changed by path: closing a descriptor of a database
        another connection of this process has locked would release its locks.
        """
        for directory in (self.directory, self._spool):
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(directory, 0o700)
        with suppress(FileExistsError):
            os.close(os.open(database, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        for path in (database, f"{database}-wal", f"{database}-shm"):
            with suppress(FileNotFoundError):  # -wal, -shm: only while a connection is open
                os.chmod(path, 0o600)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def allowed(self, recipient: str, sender: str) -> bool:
        if self.shared is not None and self.shared.get(_pair_key(recipient, sender)):
            return True
        return bool(self._read("reading the allow list",
                               "SELECT 1 FROM allowed WHERE recipient = ? AND sender = ?",
                               (_key(recipient), _key(sender))))

    def allow(self, recipient: str, sender: str) -> None:
        with self._write("updating the allow list") as db:
            db.execute("INSERT OR IGNORE INTO allowed VALUES (?, ?)", (_key(recipient), _key(sender)))
        self._share(recipient, sender)

    def _share(self, recipient: str, sender: str) -> None:
        if self.shared is not None:
            self.shared.put(_pair_key(recipient, sender), "1")
            self.shared.put(_sender_key(sender), "1")

    def hold(self, recipient: str, sender: str, message: BinaryIO,
             now: float | None = None) -> tuple[Held, bool]:
        recipient, sender = _key(recipient), _key(sender)
        queued_at = time.time() if now is None else now
        held_id = secrets.token_hex(16)
        path = self._path(held_id)
        with self._errors("spooling a message"):
            size = self._spool_copy(message, path)
        try:
            with self._write("holding a message") as db:
                row = db.execute("SELECT token FROM challenge WHERE recipient = ? AND sender = ?",
                                 (recipient, sender)).fetchone()
                token = secrets.token_hex(16) if row is None else row[0]
                if row is None:
                    db.execute("INSERT INTO challenge VALUES (?, ?, ?, ?)",
                               (token, recipient, sender, queued_at))
                db.execute("INSERT INTO held VALUES (?, ?, ?, ?, ?, ?, NULL)",
                           (held_id, token, sender, recipient, queued_at, size))
                unchallenged = db.execute("SELECT 1 FROM challenged WHERE token = ?",
                                          (token,)).fetchone() is None
        except DependencyError:
            with suppress(OSError):  # else an orphan, swept by expire()
                path.unlink()
            raise
        return Held(held_id, token, sender, recipient, queued_at, size, path), unchallenged

    def challenged(self, token: str) -> None:
        with self._write("noting a challenge sent") as db:
            db.execute("INSERT OR IGNORE INTO challenged VALUES (?, ?)", (token, time.time()))

    def known(self, sender: str) -> bool:
        if self.shared is not None and self.shared.get(_sender_key(sender)):
            return True
        return bool(self._read("reading the allow list",
                               "SELECT 1 FROM allowed WHERE sender = ? LIMIT 1", (_key(sender),)))

    def answer(self, token: str, sender: str) -> list[Held]:
        token, sender = token.lower(), _key(sender)
        with self._write("answering a challenge") as db:
            pair = db.execute("SELECT recipient, sender FROM challenge WHERE token = ?",
                              (token,)).fetchone()
            if pair is None or pair[1] != sender:
                return []
            db.execute("INSERT OR IGNORE INTO allowed VALUES (?, ?)", pair)
            db.execute("DELETE FROM challenge WHERE token = ?", (token,))
            db.execute("DELETE FROM challenged WHERE token = ?", (token,))
            rows = db.execute(f"UPDATE held SET released_at = ? WHERE token = ? AND released_at IS NULL"
                              f" RETURNING {_COLUMNS}", (time.time(), token)).fetchall()
        self._share(*pair)
        return self._sorted(rows)

    def release(self, held_id: str) -> Held | None:
        with self._write("releasing a message") as db:
            rows = db.execute(f"UPDATE held SET released_at = ? WHERE id = ? AND released_at IS NULL"
                              f" RETURNING {_COLUMNS}", (time.time(), held_id)).fetchall()
        return self._held(rows[0]) if rows else None

    def drop(self, held_id: str) -> bool:
        with self._write("dropping a message") as db:
            rows = db.execute("DELETE FROM held WHERE id = ? AND released_at IS NULL RETURNING id",
                              (held_id,)).fetchall()
        if rows:
            self._remove(self._path(held_id))
        return bool(rows)

    def done(self, held: Held) -> None:
        with self._write("forgetting a released message") as db:
            db.execute("DELETE FROM held WHERE id = ?", (held.id,))
        self._remove(held.path)

    def pending(self) -> list[Held]:
        rows = self._read("listing held messages", f"SELECT {_COLUMNS} FROM held"
                          " WHERE released_at IS NULL ORDER BY queued_at, id")
        return [self._held(row) for row in rows]

    def released(self, min_age: float = 0.0, now: float | None = None) -> list[Held]:
        before = (time.time() if now is None else now) - min_age
        rows = self._read("listing released messages", f"SELECT {_COLUMNS} FROM held"
                          " WHERE released_at <= ? ORDER BY queued_at, id", (before,))
        return [self._held(row) for row in rows]

    def expire(self, max_age: float, now: float | None = None) -> list[Held]:
        """Also sweeps spool files without a row whose mtime is older than ``max_age``
        (left by a crash or a failed hold(); recent ones may be a hold() in progress)."""
        cutoff = (time.time() if now is None else now) - max_age
        with self._errors("listing the spool"):
            files = list(self._spool.iterdir())  # before reading the rows: see the docstring
        with self._write("expiring held messages") as db:
            rows = db.execute(f"DELETE FROM held WHERE released_at IS NULL AND queued_at < ?"
                              f" RETURNING {_COLUMNS}", (cutoff,)).fetchall()
            db.execute("DELETE FROM challenge WHERE created < ? AND NOT EXISTS (SELECT 1 FROM held"
                       " WHERE held.token = challenge.token AND held.released_at IS NULL)", (cutoff,))
            db.execute("DELETE FROM challenged WHERE NOT EXISTS (SELECT 1 FROM challenge"
                       " WHERE challenge.token = challenged.token)")
            live = {row[0] + SUFFIX for row in db.execute("SELECT id FROM held")}
        expired = self._sorted(rows)
        for held in expired:
            self._remove(held.path)
        with self._errors("sweeping orphan spool files"):
            for path in files:
                with suppress(FileNotFoundError):  # a concurrent done() or drop() removed it
                    if path.name not in live and path.stat().st_mtime < cutoff:
                        path.unlink()
        return expired

    def open_message(self, held: Held) -> BinaryIO:
        with self._errors(f"opening held message {held.id}"):
            return open(held.path, "rb")

    def _path(self, held_id: str) -> Path:
        return self._spool / (held_id + SUFFIX)

    def _held(self, row: Any) -> Held:
        held_id, token, sender, recipient, queued_at, size = row  # the _COLUMNS
        return Held(held_id, token, sender, recipient, queued_at, size, self._path(held_id))

    def _sorted(self, rows: list[Any]) -> list[Held]:
        return sorted((self._held(row) for row in rows), key=lambda h: (h.queued_at, h.id))

    def _spool_copy(self, message: BinaryIO, path: Path) -> int:
        """Write to a temporary name, fsync, rename: ``path`` only ever holds a whole message."""
        fd, tmp = tempfile.mkstemp(dir=self._spool, prefix=".tmp-")
        try:
            size = 0
            with open(fd, "wb") as out:
                while chunk := message.read(CHUNK):
                    out.write(chunk)
                    size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.rename(tmp, path)
        except BaseException:
            with suppress(OSError):
                os.unlink(tmp)
            raise
        spool = os.open(self._spool, os.O_RDONLY)  # make the rename itself durable
        try:
            os.fsync(spool)
        finally:
            os.close(spool)
        return size

    def _remove(self, path: Path) -> None:
        """The row is already gone: a file left behind is an orphan that expire() sweeps."""
        with self._errors(f"removing {path.name}"):
            path.unlink(missing_ok=True)

    def _read(self, doing: str, sql: str, params: tuple[object, ...] = ()) -> list[Any]:
        with self._errors(doing), self._lock:
            return self._db.execute(sql, params).fetchall()

    @contextmanager
    def _write(self, doing: str) -> Iterator[sqlite3.Connection]:
        """One write transaction; IMMEDIATE takes the write lock up front, where the busy
        timeout applies, instead of failing when a read turns into a write."""
        with self._errors(doing), self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            finally:
                if self._db.in_transaction:
                    self._db.rollback()

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        try:
            yield
        except (sqlite3.Error, OSError) as err:
            raise DependencyError("challenge-store", f"{doing}: {err}", entry="state_tempfail") from err
