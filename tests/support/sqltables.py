"""The test rules' tables as a database: a postfixadmin schema (domain, mailbox, alias)
with the columns a site adds for the milter, filled from tests/fixtures/rules' files, and
rules that read them through SQL.

The rows are the files' lines: a key, and the words after it.  One translation is
needed: a relay domain with no line in a relay_recipients file accepts everyone, which
a table from SQL cannot tell (README, "Tables from SQL"), so such a domain gets its
``@domain`` row.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from policy_milter.addresses import parse_path
from policy_milter.patterns import domain_name
from policy_milter.rules.source import Errors, read_lines
from tests.conftest import FIXTURE_RULES, copy_rules

SCHEMA = """
CREATE TABLE domain (domain varchar(255) PRIMARY KEY, description varchar(255) NOT NULL
    DEFAULT '', backupmx boolean NOT NULL DEFAULT false, active boolean NOT NULL DEFAULT true,
    milter_kind varchar(16), milter_words text);
CREATE TABLE mailbox (username varchar(255) PRIMARY KEY, domain varchar(255) NOT NULL,
    local_part varchar(255) NOT NULL, active boolean NOT NULL DEFAULT true,
    milter_login varchar(255), milter_words text);
CREATE TABLE alias (address varchar(255) PRIMARY KEY, goto text NOT NULL,
    domain varchar(255) NOT NULL, active boolean NOT NULL DEFAULT true);
CREATE TABLE milter_list (address varchar(255) PRIMARY KEY, mode varchar(16) NOT NULL,
    members text);
CREATE TABLE milter_relay_recipient (address varchar(255) PRIMARY KEY);
"""

QUERIES = {
    "domains": "SELECT COALESCE(milter_kind, CASE WHEN backupmx THEN 'relay' ELSE 'local' "
               "END), milter_words FROM domain WHERE domain = %s AND active",
    "accounts": "SELECT COALESCE(milter_words, '') FROM mailbox WHERE username = %s AND active",
    "accounts_login": "SELECT username, milter_words FROM mailbox WHERE milter_login = %s "
                      "AND active",
    "aliases": "SELECT goto FROM alias WHERE address = %s AND active",
    "lists": "SELECT mode, members FROM milter_list WHERE address = %s",
    "relay_recipients": "SELECT 'OK' FROM milter_relay_recipient WHERE address = %s",
}


def _lines(name: str) -> Iterator[tuple[str, list[str]]]:
    errors = Errors()
    for line in read_lines(FIXTURE_RULES / name, name, errors):
        key, *words = line.words()
        yield key, words
    assert not errors.items, errors.items


def _key(text: str) -> str:
    """A key as lookups ask it: lower case, A-label domains."""
    if text.startswith("@"):
        return "@" + domain_name(text[1:])
    if "@" in text:
        return parse_path(text, null_ok=False).key
    return ("." if text.startswith(".") else "") + domain_name(text.lstrip("."))


def statements() -> list[tuple[str, tuple[Any, ...]]]:
    """INSERTs (with %s parameters) of the fixture tables' lines."""
    out: list[tuple[str, tuple[Any, ...]]] = []
    relay_domains = []
    for key, (kind, *words) in _lines("domains"):
        out.append(("INSERT INTO domain (domain, backupmx, milter_kind, milter_words) "
                    "VALUES (%s, %s, %s, %s)", (_key(key), kind == "relay",
                                                None if kind in ("local", "relay") else kind,
                                                " ".join(words) or None)))
        if kind == "relay":
            relay_domains.append(_key(key))
    for key, words in _lines("accounts"):
        address = _key(key)
        login = next((w.split("=", 1)[1] for w in words if w.startswith("login=")), None)
        out.append(("INSERT INTO mailbox (username, domain, local_part, milter_login, "
                    "milter_words) VALUES (%s, %s, %s, %s, %s)",
                    (address, address.rpartition("@")[2], address.rpartition("@")[0], login,
                     " ".join(words) or None)))
    for key, targets in _lines("aliases"):
        out.append(("INSERT INTO alias (address, goto, domain) VALUES (%s, %s, %s)",
                    (_key(key), ",".join(targets), _key(key).rpartition("@")[2])))
    for key, (mode, *members) in _lines("lists"):
        out.append(("INSERT INTO milter_list VALUES (%s, %s, %s)",
                    (_key(key), mode, ",".join(members) or None)))
    listed = set()
    for key, _ in _lines("relay_recipients"):
        out.append(("INSERT INTO milter_relay_recipient VALUES (%s)", (_key(key),)))
        listed.add(_key(key).rpartition("@")[2])
    out += [("INSERT INTO milter_relay_recipient VALUES (%s)", (f"@{d}",))
            for d in relay_domains if d not in listed]
    return out


def fill(execute: Callable[[str, tuple[Any, ...]], object], placeholder: str = "%s") -> None:
    """The schema and the fixture rows, through a driver's ``execute``."""
    for statement in filter(str.strip, SCHEMA.split(";")):
        execute(statement, ())
    for sql, args in statements():
        execute(sql.replace("%s", placeholder), args)


def sqlite_database(path: Path) -> Path:
    with sqlite3.connect(path) as conn:
        fill(conn.execute, "?")
    conn.close()
    return path


def sql_rules(dest: Path, url: str, name: str = "mail", **settings: str) -> Path:
    """The fixture rules with every table that can come from SQL read from ``url``."""
    tables = {t: f"sql:{name}" for t in QUERIES if t != "accounts_login"}
    queries = {f"{t}_query": q for t, q in QUERIES.items()}
    rules = copy_rules(dest, **{**tables, **queries, **settings})
    conf = rules / "policy.conf"
    conf.write_text(f"sql {name} = {url}\n" + conf.read_text())
    return rules

