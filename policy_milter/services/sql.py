"""Tables read from the MTA's database: SQLite (the standard library) or PostgreSQL
(psycopg 3), one parameterised query per table.

A query carries the looked-up key as its one parameter, ``%s``: envelope text never
becomes SQL.  Its row holds what a flat-file line holds after its key, so the same
parser reads both, and an SQL table answers exactly as the file with the same lines.
Answers, "no such row" included, are cached for ``ttl`` seconds; a database that fails
or does not answer within the timeout raises ``TableError``, which the engine answers
with a tempfail (as Postfix answers a lookup error), never with "unknown user".  A
connection that failed is opened again by the next lookup, so lookups recover by
themselves when the database is back.
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from cachetools import TTLCache

from .errors import DependencyError

SQL_TABLES = ("domains", "accounts", "aliases", "lists", "relay_recipients")
LOGIN_QUERY = "accounts_login_query"  # an account by its SASL login (login=NAME)
_PERCENT = re.compile(r"'%s'|\"%s\"|%%|%s|%.?", re.S)


@dataclass(frozen=True)
class Query:
    """A validated query: as written, and in each driver's parameter style."""

    text: str
    where: str  # the policy.conf line that sets it

    @property
    def postgresql(self) -> str:
        return self.text  # psycopg's own style: %s, and %% for a percent sign

    @property
    def sqlite(self) -> str:
        return _PERCENT.sub(lambda m: "?" if m[0] == "%s" else "%", self.text)


def parse_query(text: str, where: str) -> Query:
    """A query with exactly one ``%s`` (the key, passed as a parameter) and ``%%`` for
    any literal percent sign; raises ValueError saying what to write instead."""
    if not text:
        raise ValueError("the query is empty")
    keys = 0
    for m in _PERCENT.finditer(text):
        if m[0] == "%s":
            keys += 1
        elif m[0] in ("'%s'", '"%s"'):
            raise ValueError(f"{m[0]}: write %s without quotes: the key is passed as a "
                             "parameter, never pasted into the SQL")
        elif m[0] != "%%":
            raise ValueError(f"'{m[0]}': a query takes %s (the key) and %% (a percent "
                             "sign) only; Postfix's %u, %d and the like are not expanded")
    if keys != 1:
        raise ValueError(f"the query has {keys} %s: it needs exactly one, where the key goes")
    return Query(text, where)


@dataclass(frozen=True)
class Database:
    """``sql NAME = URL``: ``sqlite:PATH`` or ``postgresql://...`` (libpq's URL)."""

    name: str
    url: str
    where: str
    driver: str  # sqlite or postgresql
    target: str  # the SQLite file, or the URL psycopg connects to

    @property
    def service(self) -> str:
        return f"sql:{self.name}"

    @property
    def shown(self) -> str:
        """The URL without a password, for logs and findings."""
        return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", self.url)


def parse_database(name: str, url: str, where: str, base: Path) -> Database:
    """A database named in policy.conf; a relative SQLite path is the rules directory's."""
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", name):
        raise ValueError(f"'{name}' is not a database name (letters, digits, _ and -)")
    if url.startswith("sqlite:"):
        path = url.removeprefix("sqlite:").removeprefix("//")
        if not path:
            raise ValueError(f"'{url}' names no file: write sqlite:/PATH")
        return Database(name, url, where, "sqlite", str(base / path))
    if re.match(r"postgres(ql)?://", url):
        return Database(name, url, where, "postgresql", url)
    raise ValueError(f"'{url}' is not sqlite:PATH or postgresql://[USER@][HOST][:PORT]/DATABASE")


@dataclass(frozen=True)
class TableSpec:
    """``TABLE = sql:NAME`` with its query (and, for accounts, the login query)."""

    table: str
    database: Database
    query: Query
    where: str  # the line that names the table: where its failures are reported
    login_query: Query | None = None


class TableError(DependencyError):
    """A table could not be read; ``where`` is the line that names it, ``bad_query``
    tells a query the database refuses from a database that is away."""

    def __init__(self, service: str, message: str, where: str = "",
                 bad_query: bool = False) -> None:
        super().__init__(service, message, entry="state_tempfail")
        self.where = where
        self.bad_query = bad_query


class Connection:
    """One open connection to one database, opened when first needed and again after a
    failure.  Queries take turns (a connection serves one at a time) and each is bounded
    by ``timeout`` seconds, connecting included."""

    def __init__(self, database: Database, timeout: float) -> None:
        self.database = database
        self.timeout = timeout
        self._conn: Any = None
        self._lock = threading.Lock()

    def rows(self, query: Query, key: str) -> list[tuple[Any, ...]]:
        """The rows ``query`` answers for ``key``; TableError when there are none to have."""
        with self._lock:
            try:
                if self._conn is None:
                    self._conn = self._open()
                return self._execute(query, key)
            except TableError:
                raise
            except Exception as err:
                bad = self._bad_query(err)
                if not bad:
                    self._close()
                raise TableError(self.database.service, f"{type(err).__name__}: "
                                 f"{str(err).strip() or 'no answer'}", bad_query=bad) from None

    def problem(self, timeout: float) -> str:
        """Why the database does not answer now, or '' (``run``'s probe at start)."""
        try:
            with self._lock:
                if self._conn is None:
                    self._conn = self._open(timeout)
            return ""
        except Exception as err:
            return f"{type(err).__name__}: {str(err).strip()}"

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # closing a broken connection: nothing more to learn
                pass

    def _open(self, timeout: float | None = None) -> Any:
        wait = timeout or self.timeout
        db = self.database
        if db.driver == "sqlite":
            conn = sqlite3.connect(f"file:{quote(db.target)}?mode=ro", uri=True, timeout=wait,
                                   check_same_thread=False, isolation_level=None)
            return conn
        try:
            import psycopg
        except ImportError:
            raise TableError(db.service, "the Python package psycopg is not installed (pip "
                             "install psycopg, or Debian's python3-psycopg)") from None
        return psycopg.connect(db.target, autocommit=True, connect_timeout=max(1, round(wait)),
                               options=f"-c statement_timeout={int(self.timeout * 1000)}")

    def _execute(self, query: Query, key: str) -> list[tuple[Any, ...]]:
        if self.database.driver == "postgresql":
            return list(self._conn.execute(query.postgresql, (key,)).fetchall())
        deadline = time.monotonic() + self.timeout
        self._conn.set_progress_handler(lambda: time.monotonic() > deadline, 1000)
        try:
            return self._conn.execute(query.sqlite, (key,)).fetchall()
        except sqlite3.OperationalError as err:
            if str(err) == "interrupted":
                raise TableError(self.database.service, f"no answer within {self.timeout:g}s "
                                 "(sql_timeout)") from None
            raise

    @staticmethod
    def _bad_query(err: Exception) -> bool:
        """The database answered, and refused the query itself (its syntax, a table or
        column it lacks): the connection is fine, the rules are not."""
        if isinstance(err, sqlite3.ProgrammingError):
            return True
        if isinstance(err, sqlite3.OperationalError):
            return str(err).startswith(("no such ", "near ", "incomplete input"))
        return type(err).__module__.startswith("psycopg") and any(
            cls.__name__ == "ProgrammingError" for cls in type(err).__mro__)


def row_text(row: Iterable[Any]) -> str | None:
    """A row as the words of a flat-file line after its key: its columns in order,
    NULL and empty ones left out; a row of NULLs only (an aggregate over no rows) is none."""
    values = list(row)
    if all(v is None for v in values):
        return None
    return " ".join(str(v).strip() for v in values if v is not None and str(v).strip())


class SqlTable:
    """One table from SQL: its key's entry, parsed as the flat file's line would be, and
    cached with every answer (none included) for ``ttl`` seconds."""

    def __init__(self, spec: TableSpec, connection: Connection,
                 parse: Callable[[str, str, str], Any], ttl: float, size: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.spec = spec
        self.connection = connection
        self._parse = parse  # (key, text after the key, where) -> entry; ValueError
        self._cache: TTLCache[tuple[str, str], Any] = TTLCache(size, ttl, timer=clock)
        self._lock = threading.Lock()
        self.lookups = 0  # queries sent (the benchmark and the tests count them)

    def get(self, key: str) -> Any:
        """The entry for ``key``, or None."""
        return self._cached(self.spec.query, key)

    def first(self, keys: Iterable[str]) -> Any:
        """The entry of the first key that has one, in the order given."""
        for key in keys:
            found = self.get(key)
            if found is not None:
                return found
        return None

    def by_login(self, login: str) -> Any:
        """The account whose login is ``login`` (its row starts with the address), else
        the account whose address it is."""
        login_query = self.spec.login_query
        found = self._cached(login_query, login) if login_query is not None else None
        return found if found is not None else self.get(login)

    def _cached(self, query: Query, key: str) -> Any:
        slot = (query.text, key)
        with self._lock:
            if slot in self._cache:
                return self._cache[slot]
        entry = self._lookup(query, key)
        with self._lock:
            self._cache[slot] = entry
        return entry

    def _lookup(self, query: Query, key: str) -> Any:
        spec = self.spec
        try:
            self.lookups += 1
            rows = self.connection.rows(query, key)
            if len(rows) > 1:
                raise self._error(f"{len(rows)} rows for '{key}': a key has one row (join "
                                  "several values with string_agg() or group_concat())", query)
            text = row_text(rows[0]) if rows else None
            if text is None:
                return None
            if query is spec.login_query:  # the address first, then the words
                key, _, text = text.partition(" ")
            return self._parse(key, text, f"{spec.database.service}/{spec.table}/{key}")
        except TableError as err:
            raise self._error(err.message, query, err.bad_query) from None
        except ValueError as err:
            raise self._error(f"the row for '{key}' is not a {spec.table} line: {err}",
                              query) from None

    def _error(self, message: str, query: Query, bad_query: bool = True) -> TableError:
        where = query.where if bad_query else self.spec.where
        return TableError(self.spec.database.service, f"{self.spec.table}: {message}",
                          where, bad_query)
