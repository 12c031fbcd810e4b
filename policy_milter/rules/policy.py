"""Loading a rules directory into one immutable Policy, or every error it has.

The entry point is ``policy.conf``: ``name = value`` settings and ``include`` lines.
Settings name the table and rule files; every file is read, every error collected,
and nothing is returned unless all of it is right.  A running milter swaps in a new
Policy whole (SIGHUP), so a half-loaded policy never exists.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from ..checks.order import SKIPPABLE, skippable_after
from ..content import ContentPatterns
from ..content import Limits as ContentLimits
from ..services.dns import DnsConfig
from ..services.sql import (LOGIN_QUERY, SQL_TABLES, Database, Query, TableSpec,
                            parse_database, parse_query)
from ..stages import Stage
from .rulelist import RuleIndex, RuleList, RuleListParser
from .settings import NAMES as SETTING_NAMES
from .settings import Settings
from .settings import parse as parse_settings
from .source import Errors, Line, did_you_mean, read_lines
from .tables import Tables

MAIN_FILE = "policy.conf"
# Settings that name a file, and how each file is read.
TABLE_FILES = ("domains", "accounts", "aliases", "lists", "relay_recipients", "listeners",
               "dnsbl")
RULE_FILES = {"access": "access_denied", "filters": "filter_rejected"}
# A table from SQL (``accounts = sql:NAME``) takes its query from ``accounts_query``.
QUERIES = (*(f"{table}_query" for table in SQL_TABLES), LOGIN_QUERY)


@dataclass(frozen=True)
class Policy:
    """Everything the engine decides from.  Never changed after load."""

    source: str
    settings: Settings
    where: dict[str, str]  # setting or file name -> 'path:line', or 'default'
    tables: Tables
    rule_lists: tuple[RuleList, ...] = ()
    files: tuple[str, ...] = field(default=())
    digest: str = ""  # a short hash of every file read: logged with every decision

    def rules(self, name: str, stage: Stage) -> RuleIndex | None:
        """The rules of the list called ``name`` decided at ``stage``, if it is loaded."""
        found = next((rl for rl in self.rule_lists if rl.name == name), None)
        return found.index(stage) if found else None

    @cached_property
    def content_patterns(self) -> tuple[ContentPatterns[Any], ...]:
        """Every content pattern set of the end-of-message rules: what a scan tests."""
        return tuple(c.patterns for rl in self.rule_lists for r in rl.eom.rules
                     for c in r.conditions if isinstance(c.patterns, ContentPatterns))

    @property
    def content_limits(self) -> ContentLimits:
        s = self.settings
        return ContentLimits(s.content_max_size, s.mime_max_depth, s.archive_max_depth,
                             s.archive_max_entries, s.archive_max_size, s.content_timeout)

    @property
    def dns_config(self) -> DnsConfig:
        s = self.settings
        return DnsConfig(s.dns_nameservers, s.dns_port, s.dns_timeout, s.dns_min_ttl,
                         s.dns_max_ttl, s.dns_negative_ttl)

    @property
    def uses_dns(self) -> bool:
        return self.settings.rdns != "off" or bool(self.tables.zones)

    def summary(self) -> list[str]:
        """What ``policy-milter check`` prints: one line per part of the policy."""
        t, s = self.tables, self.settings
        counts = (("domains", len(t.domain_list)), ("accounts", len(t.accounts)),
                  ("aliases", len(t.aliases) + len(t.catchall)), ("lists", len(t.lists)),
                  ("relay_recipients", len(t.relay_recipients) + len(t.relay_catchall)),
                  ("listeners", len(t.listeners)))
        lines = [f"rules: {self.source} ({len(self.files)} files, hash {self.digest})",
                 ", ".join(f"{table.replace('_', ' ')}: "
                           f"{t.sql[table].database.service if table in t.sql else count}"
                           for table, count in counts)]
        for rl in self.rule_lists:
            lines.append(f"{rl.name}: {len(rl.mail.rules)} rules at MAIL, "
                         f"{len(rl.rcpt.rules)} at RCPT, {len(rl.eom.rules)} at end of message")
        lines.append(f"dns lists: {len(t.zones)}, reverse DNS: {s.rdns}, "
                     f"resolver: {', '.join(s.dns_nameservers) or 'system'}")
        lines.append(f"virus scanning: {s.clamd or 'off'}, spam scoring: {s.spamd or 'off'}"
                     f", challenge-response: {s.challenge_store or 'off'}")
        lines.append("monitor mode: " + ("on" if s.monitor else "off"))
        return lines


class _Loader:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.errors = Errors()
        self.raw: dict[str, tuple[str, Line]] = {}
        self.files: list[str] = []
        self.databases: dict[str, Database] = {}

    def read_main(self, path: Path, seen: tuple[Path, ...]) -> None:
        self.files.append(str(path))
        for line in read_lines(path, str(path), self.errors):
            words = line.text.split(None, 1)
            if words[0] == "include":
                self.include(line, path, words[1:], seen + (path.resolve(),))
                continue
            name, eq, value = line.text.partition("=")
            name = name.strip()
            if eq and name.split()[:1] == ["sql"]:
                self.database(line, path, name.split()[1:], value.strip())
            elif not eq or not name.isidentifier():
                self.errors.add(line.where, "expected 'name = value' or 'include FILE'")
            elif name not in SETTING_NAMES and name not in TABLE_FILES \
                    and name not in RULE_FILES and name not in QUERIES:
                known = (*SETTING_NAMES, *TABLE_FILES, *RULE_FILES, *QUERIES)
                self.errors.add(line.where,
                                f"unknown setting '{name}'{did_you_mean(name, known)}")
            elif name in self.raw:
                self.errors.add(line.where, f"'{name}' is already set at {self.raw[name][1].where}")
            else:
                self.raw[name] = (value.strip(), line)

    def database(self, line: Line, path: Path, names: list[str], url: str) -> None:
        """``sql NAME = URL``: a database that tables may name as ``sql:NAME``."""
        if len(names) != 1:
            self.errors.add(line.where, "expected 'sql NAME = URL'")
        elif names[0] in self.databases:
            self.errors.add(line.where, f"database '{names[0]}' is already defined at "
                            f"{self.databases[names[0]].where}")
        else:
            try:
                self.databases[names[0]] = parse_database(names[0], url, line.where,
                                                          path.parent)
            except ValueError as err:
                self.errors.add(line.where, f"sql {names[0]}: {err}")

    def sql_tables(self) -> dict[str, TableSpec]:
        """The tables set to ``sql:NAME``, with their queries; a query for a table that
        is not from SQL is a mistake too."""
        specs: dict[str, TableSpec] = {}
        for table in TABLE_FILES:
            text, line = self.raw.get(table, ("", None))
            if line is None or not text.startswith("sql:"):
                continue
            name, query = text.removeprefix("sql:"), f"{table}_query"
            if table not in SQL_TABLES:
                self.errors.add(line.where, f"{table} is read from a file only; tables from "
                                f"SQL: {', '.join(SQL_TABLES)}")
            elif name not in self.databases:
                self.errors.add(line.where, f"{table} = {text}: no 'sql {name} = URL' line "
                                f"defines it{did_you_mean(name, self.databases)}")
            elif query not in self.raw:
                self.errors.add(line.where, f"{table} = {text} needs {query} = SELECT ... "
                                "WHERE ... = %s (the key is %s)")
            elif (parsed := self.query(query)) is not None:
                login = self.query(LOGIN_QUERY) if table == "accounts" else None
                specs[table] = TableSpec(table, self.databases[name], parsed, line.where, login)
        for query in QUERIES:
            table = "accounts" if query == LOGIN_QUERY else query.removesuffix("_query")
            if query in self.raw and table not in specs and table in self.raw \
                    and not self.raw[table][0].startswith("sql:"):
                self.errors.add(self.raw[query][1].where, f"{query} is set, but {table} is "
                                f"not from SQL: write {table} = sql:NAME, or remove the query")
            elif query in self.raw and table not in self.raw:
                self.errors.add(self.raw[query][1].where, f"{query} is set, but {table} is "
                                f"not: write {table} = sql:NAME, or remove the query")
        return specs

    def query(self, name: str) -> Query | None:
        if name not in self.raw:
            return None
        text, line = self.raw[name]
        try:
            return parse_query(text, line.where)
        except ValueError as err:
            self.errors.add(line.where, f"{name}: {err}")
            return None

    def include(self, line: Line, current: Path, args: list[str], seen: tuple[Path, ...]) -> None:
        if len(args) != 1:
            self.errors.add(line.where, "include takes one file name or pattern")
            return
        pattern = str(current.parent / args[0])
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        for name in matches:
            path = Path(name)
            if path.resolve() in seen:
                self.errors.add(line.where, f"include loop: {str(path)}")
            elif not path.is_file():
                self.errors.add(line.where, f"include: no such file {str(path)}")
            else:
                self.read_main(path, seen)

    def settings(self) -> tuple[Settings | None, dict[str, str]]:
        raw = {name: (text, line.where) for name, (text, line) in self.raw.items()
               if name in SETTING_NAMES}
        return parse_settings(raw, self.errors.add)

    def file_lines(self, name: str) -> tuple[list[Line], Path] | None:
        if name not in self.raw or not self.raw[name][0] or self.raw[name][0].startswith("sql:"):
            return None
        text, line = self.raw[name]
        path = Path(line.path).parent / text
        self.files.append(str(path))
        return read_lines(path, str(path), self.errors, line.where), path.parent


def load(rules_dir: str | Path) -> Policy:
    """Load ``rules_dir/policy.conf`` and everything it names; raises RuleErrors."""
    root = Path(rules_dir)
    loader = _Loader(root)
    main = root / MAIN_FILE
    if not main.is_file():
        loader.errors.add(str(main), "no such file")
        loader.errors.raise_if_any()
    loader.read_main(main, ())
    settings, where = loader.settings()
    tables = Tables(sql=loader.sql_tables())
    where.update({table: spec.where for table, spec in tables.sql.items()})
    for name in TABLE_FILES:
        got = loader.file_lines(name)
        if got is not None:
            getattr(tables, f"load_{name}")(got[0], loader.errors)
            where[name] = loader.raw[name][1].where
    rule_lists = []
    for name, default in RULE_FILES.items():
        got = loader.file_lines(name)
        if got is not None:
            parser = RuleListParser(name, default, SKIPPABLE, skippable_after, loader.errors)
            rule_lists.append(parser.parse(*got))
            where[name] = loader.raw[name][1].where
    if settings is not None and settings.challenge_store and not settings.challenge_address:
        loader.errors.add(where["challenge_store"], "challenge_store needs challenge_address "
                          "(where challenged senders answer)")
    loader.errors.raise_if_any()
    assert settings is not None
    return Policy(str(root), settings, where, tables, tuple(rule_lists), tuple(loader.files),
                  loader.errors.digest)
