"""Tables from SQL: a real PostgreSQL server and an SQLite file holding the test rules'
tables in a postfixadmin schema give the answers the flat files give, through
``Directory`` and the golden sessions; a database that fails or stops gets a tempfail
that the log names, and answers again when it is back; bad settings fail at load with
path:line, and ``check`` reports a query the database refuses."""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from policy_milter.addresses import parse_path
from policy_milter.decision import Action
from policy_milter.engine import Engine
from policy_milter.log import LOGGER, DecisionLog
from policy_milter.rules import lint
from policy_milter.rules.policy import Policy, load
from policy_milter.rules.source import RuleErrors
from policy_milter.services import Services
from policy_milter.services.health import unreachable
from policy_milter.services.sql import Connection, SqlTable, parse_query
from policy_milter.rules.tables import parse_row
from tests.conftest import REPO
from tests.support import golden
from tests.support.golden import SESSIONS
from tests.support.postgres import Postgres
from tests.support.sqltables import fill, sql_rules, sqlite_database, statements
from tests.unit.test_golden import play

BACKENDS = ("postgresql", "sqlite")


@pytest.fixture(scope="module")
def urls(postgres: Postgres, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    db = sqlite_database(tmp_path_factory.mktemp("sqlite") / "mail.db")
    return {"postgresql": postgres.url, "sqlite": f"sqlite:{db}"}


@pytest.fixture(scope="module")
def sql_policies(urls: dict[str, str], tmp_path_factory: pytest.TempPathFactory
                 ) -> dict[str, Policy]:
    return {name: load(sql_rules(tmp_path_factory.mktemp(name) / "rules", url))
            for name, url in urls.items()}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("session", SESSIONS.values(), ids=SESSIONS.keys())
def test_golden_session_with_tables_from_sql(sql_policies: dict[str, Policy], backend: str,
                                             session: golden.Session) -> None:
    s = Engine(sql_policies[backend], Services()).session()
    s.connect(session.addr, session.hostname, session.listener)
    for step in session.steps:
        session.check(step, play(s, session, step))
    s.close()


def _addresses() -> list[str]:
    """Every key of the tables, as written and as a client may write it (an extension,
    capitals, U-labels), and addresses the tables do not have."""
    keys = [str(args[0]) for sql, args in statements() if "INSERT INTO domain" not in sql]
    keys += [f"someone@{args[0]}" for sql, args in statements() if "INSERT INTO domain" in sql]
    out = ["nobody@example.com", "x@sub.example.com", "info@bücher.example",
           "ALICE+tag@Example.COM", "a@unknown.example"]
    for key in keys:
        local, _, domain = key.rpartition("@")
        out += [key if local else f"anyone{key}",
                f"{local or 'anyone'}+ext@{domain.upper()}"]
    return out


def _facts(engine: Engine, address: str, recipient: bool) -> tuple[Any, ...]:
    resolved = engine.plan.directory.resolve(address, parse_path(address, null_ok=False), {},
                                             recipient=recipient)
    bare = [dataclasses.replace(x, where="") if dataclasses.is_dataclass(x) else x
            for x in (resolved.domain, resolved.account, resolved.alias, resolved.mailing_list,
                      resolved.catchall, resolved.relay_listed)]
    return (*bare, tuple((hop.name, hop.entry and dataclasses.replace(hop.entry, where=""))
                         for hop in resolved.routes))


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_address_resolves_as_the_files_resolve_it(
        fixture_policy: Policy, sql_policies: dict[str, Policy], backend: str) -> None:
    flat, sql = Engine(fixture_policy), Engine(sql_policies[backend])
    for address in _addresses():
        for recipient in (False, True):
            assert _facts(sql, address, recipient) == _facts(flat, address, recipient), address
    for login in ("alice", "intern", "rater", "ALICE", "postmaster@example.com", "nobody"):
        sender = flat.plan.directory.resolve("<>", parse_path("<>", null_ok=True), {},
                                             recipient=False)
        want = flat.plan.directory.sending(login, sender)
        got = sql.plan.directory.sending(login, sender)
        assert [x and dataclasses.replace(x, where="") for x in got] == \
            [x and dataclasses.replace(x, where="") for x in want], login


def test_the_comparison_can_fail(fixture_policy: Policy, tmp_path: Path) -> None:
    """A database missing one mailbox answers otherwise: the tests above would see it."""
    db = sqlite_database(tmp_path / "mail.db")
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM mailbox WHERE username = 'carol@example.com'")
    conn.close()
    sql = Engine(load(sql_rules(tmp_path / "rules", f"sqlite:{db}")))
    assert _facts(sql, "carol@example.com", True) != _facts(Engine(fixture_policy),
                                                            "carol@example.com", True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_envelope_text_never_becomes_sql(fixture_policy: Policy,
                                         sql_policies: dict[str, Policy], backend: str) -> None:
    """Quotes, SQL and percent signs in an address are only a key that no row has."""
    sql, flat = Engine(sql_policies[backend]), Engine(fixture_policy)
    for rcpt in ("\"x' OR '1'='1\"@example.com", "\"x'; DROP TABLE mailbox; --\"@example.com",
                 "a%s@example.com", "a%%b@example.com", "alice@example.com"):
        got, want = _rcpt(sql, rcpt), _rcpt(flat, rcpt)
        assert (got.action, got.entry) == (want.action, want.entry), rcpt
    assert _rcpt(sql, "\"x' OR '1'='1\"@example.com").entry.name == "unknown_user_local"
    assert _rcpt(sql, "carol@example.com").action is Action.CONTINUE  # the table is there


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def records() -> Iterator[Records]:
    handler = Records()
    logger = logging.getLogger(LOGGER)
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


def _rcpt(engine: Engine, address: str) -> Any:
    s = engine.session()
    s.connect("10.1.0.5", "client.example.com", "smtpd")
    s.helo("client.example.com", False)
    try:
        mail = s.mail("<x@sender.example>", [], "", "Q")
        return mail if mail.stops else s.rcpt(f"<{address}>", [], "Q")
    finally:
        s.close()


def test_a_database_that_stops_and_comes_back(tmp_path: Path, records: Records) -> None:
    """Stopped mid-run: what is cached still answers, the rest gets a tempfail that the
    log names (never unknown_user); started again, lookups reconnect by themselves."""
    server = Postgres().start()
    try:
        with psycopg.connect(server.url, autocommit=True) as conn:
            fill(conn.execute)
        rules = sql_rules(tmp_path / "rules", server.url)
        engine = Engine(load(rules), Services(), DecisionLog())
        assert _rcpt(engine, "alice@example.com").action is Action.CONTINUE
        server.stop()
        assert _rcpt(engine, "alice@example.com").action is Action.CONTINUE  # cached
        for address in ("carol@example.com", "nobody@example.com"):
            failed = _rcpt(engine, address)
            assert failed.action is Action.TEMPFAIL, address
            assert failed.entry is not None and failed.entry.name == "state_tempfail"
        line = next(r for r in records.lines if "event=dependency_failure" in r)
        conf = (rules / "policy.conf").read_text().splitlines()
        assert "check=tables service=sql:mail" in line and "action=tempfail" in line
        assert f"rule={rules}/policy.conf:{conf.index('accounts = sql:mail') + 1}" in line
        server.start()
        assert _rcpt(engine, "carol@example.com").action is Action.CONTINUE
        assert _rcpt(engine, "nobody@example.com").entry.name == "unknown_user_local"
    finally:
        server.remove()


SLOW = {"postgresql": "SELECT 'local' FROM pg_sleep(5) WHERE %s <> ''",
        "sqlite": "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) "
                  "SELECT 'local' FROM n WHERE x = 0 AND %s <> ''"}


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_query_is_bounded_by_sql_timeout(urls: dict[str, str], backend: str,
                                           tmp_path: Path) -> None:
    engine = Engine(load(sql_rules(tmp_path / "rules", urls[backend], sql_timeout="0.5",
                                   domains_query=SLOW[backend])))
    started = time.monotonic()
    decision = _rcpt(engine, "alice@example.com")
    assert decision.action is Action.TEMPFAIL and time.monotonic() - started < 3
    assert _rcpt(engine, "alice@example.com").action is Action.TEMPFAIL  # failures not cached


@pytest.mark.parametrize("query, detail", [
    ("SELECT 'local' FROM domain WHERE %s <> ''", "9 rows for 'sender.example'"),
    ("SELECT 'nowhere' FROM domain WHERE domain = %s", "unknown domain kind 'nowhere'"),
])
def test_rows_that_are_no_table_line_tempfail(urls: dict[str, str], tmp_path: Path,
                                              records: Records, query: str, detail: str) -> None:
    engine = Engine(load(sql_rules(tmp_path / "rules", urls["sqlite"], domains_query=query)))
    assert _rcpt(engine, "alice@example.com").action is Action.TEMPFAIL
    assert any("event=dependency_failure" in line and detail in line for line in records.lines)


def test_answers_and_their_absence_are_cached_for_the_ttl(tmp_path: Path) -> None:
    db = sqlite_database(tmp_path / "mail.db")
    policy = load(sql_rules(tmp_path / "rules", f"sqlite:{db}"))
    spec = policy.tables.sql["accounts"]
    now = [0.0]
    table = SqlTable(spec, Connection(spec.database, 2), lambda k, t, w: parse_row(
        "accounts", k, t, w), ttl=60, size=100, clock=lambda: now[0])
    assert table.get("new@example.com") is None
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO mailbox (username, domain, local_part) "
                     "VALUES ('new@example.com', 'example.com', 'new')")
    conn.close()
    now[0] = 59
    assert table.get("new@example.com") is None and table.lookups == 1
    now[0] = 61
    assert table.get("new@example.com") is not None and table.lookups == 2


BASE = "sql mail = sqlite:mail.db\naccounts = sql:mail\n"


@pytest.mark.parametrize("conf, line, complaint", [
    ("sql mail = mysql://x/y\n", 1, "is not sqlite:PATH or postgresql://"),
    ("sql = sqlite:x\n", 1, "expected 'sql NAME = URL'"),
    ("sql mail = sqlite:a\nsql mail = sqlite:b\n", 2, "already defined at"),
    (BASE, 2, "accounts = sql:mail needs accounts_query"),
    ("accounts = sql:mial\naccounts_query = SELECT '' WHERE %s = ''\n", 1,
     "no 'sql mial = URL' line defines it"),
    (BASE + "accounts_query = SELECT '' FROM mailbox WHERE username = 'alice'\n", 3,
     "it needs exactly one"),
    (BASE + "accounts_query = SELECT '' FROM mailbox WHERE username = %s OR login = %s\n", 3,
     "the query has 2 %s"),
    (BASE + "accounts_query = SELECT '' FROM mailbox WHERE username = '%s'\n", 3,
     "write %s without quotes"),
    (BASE + "accounts_query = SELECT '' FROM mailbox WHERE username = '%u'\n", 3,
     "Postfix's %u, %d and the like are not expanded"),
    (BASE + "accounts_query = SELECT '' FROM mailbox WHERE username LIKE '%@x'\n", 3,
     "%% (a percent sign)"),
    ("listeners = sql:mail\nsql mail = sqlite:x\n", 1, "listeners is read from a file only"),
    ("aliases_query = SELECT goto FROM alias WHERE address = %s\n", 1,
     "aliases_query is set, but aliases is not"),
    ("sql_timeout = 0\n", 1, "sql_timeout"),
])
def test_bad_sql_settings_are_load_errors_at_their_line(tmp_path: Path, conf: str, line: int,
                                                        complaint: str) -> None:
    (tmp_path / "policy.conf").write_text(conf)
    with pytest.raises(RuleErrors) as caught:
        load(tmp_path)
    assert any(e.startswith(f"{tmp_path}/policy.conf:{line}: ") and complaint in e
               for e in caught.value.errors), caught.value.errors


def test_a_query_keeps_its_percent_signs_for_each_driver() -> None:
    query = parse_query("SELECT x FROM t WHERE a = %s AND b LIKE '%%@x'", "p:1")
    assert query.sqlite == "SELECT x FROM t WHERE a = ? AND b LIKE '%@x'"
    assert query.postgresql == query.text


def test_check_reports_a_refused_query_as_an_error(urls: dict[str, str], tmp_path: Path) -> None:
    for backend, url in urls.items():
        rules = sql_rules(tmp_path / backend, url,
                          lists_query="SELECT mode FROM no_such_table WHERE address = %s")
        policy = load(rules)
        found = [f for f in lint.check(policy) if f.fatal]
        assert [f.where for f in found] == [policy.tables.sql["lists"].query.where], backend
        assert "the database refuses the query" in found[0].message


def test_check_warns_of_a_database_that_does_not_answer(tmp_path: Path) -> None:
    rules = sql_rules(tmp_path / "rules", f"sqlite:{tmp_path}/missing.db")
    found = [f for f in lint.check(load(rules)) if "does not answer" in f.message]
    assert len(found) == 1 and not found[0].fatal
    assert found[0].where == f"{rules}/policy.conf:1"


def test_the_fixture_tables_fill_every_column_they_need() -> None:
    """The schema's filler turns every fixture line into a row (none dropped)."""
    by_table: Callable[[str], int] = lambda t: sum(t in sql for sql, _ in statements())
    assert by_table("INTO domain ") == 9 and by_table("INTO mailbox") == 10


def _readme_block(first: str) -> list[str]:
    """The lines of the README's fenced block that starts with ``first``."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = readme.split(f"```\n{first}", 1)[1].split("```", 1)[0]
    return (first + block).splitlines()


def test_the_readme_postfixadmin_queries_read_a_postfixadmin_database(
        postgres: Postgres, tmp_path: Path) -> None:
    lines = _readme_block("sql postfix = postgresql://")
    lines[0] = f"sql postfix = {postgres.url}"
    (tmp_path / "policy.conf").write_text("\n".join([*lines, "recipient_delimiter = +"]) + "\n")
    directory = Engine(load(tmp_path)).plan.directory

    def resolve(address: str) -> Any:
        return directory.resolve(address, parse_path(address, null_ok=False), {},
                                 recipient=True)

    alice, nobody = resolve("alice+x@example.com"), resolve("nobody@example.com")
    assert alice.account is not None and alice.account.address == "alice@example.com"
    assert nobody.domain is not None and nobody.account is None and nobody.alias is None
    assert resolve("x@catchall.example").catchall
    assert resolve("abuse@example.com").alias == "postmaster@example.com"
    assert resolve("a@backup.example.org").domain.kind.value == "relay"
    assert resolve("a@elsewhere.example").domain is None


def test_run_names_a_database_that_does_not_answer_at_start(tmp_path: Path) -> None:
    rules = sql_rules(tmp_path / "rules", f"sqlite:{tmp_path}/missing.db")
    policy = load(rules)
    found = unreachable(policy, Engine(policy).plan.live)
    assert [(u.service, u.address) for u in found] == [("sql", f"sqlite:{tmp_path}/missing.db")]
    assert "unable to open" in found[0].reason


def test_a_reload_keeps_the_connection_and_empties_the_cache(urls: dict[str, str],
                                                              tmp_path: Path) -> None:
    rules = sql_rules(tmp_path / "rules", urls["sqlite"])
    engine = Engine(load(rules))
    before = engine.plan.live.tables["accounts"]
    assert _rcpt(engine, "alice@example.com").action is Action.CONTINUE
    engine.reload(load(rules))
    after = engine.plan.live.tables["accounts"]
    assert after.connection is before.connection and after is not before
    assert after.lookups == 0
