"""The golden envelope sessions over the milter protocol, from a milter process whose
tables come from a real PostgreSQL server (tests/support/sqltables.py): the replies the
flat files give (tests/milter/test_wire.py).  A database that stops mid-run is
tests/unit/test_sql_tables.py's."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.milter.conftest import MilterProcess, start_milter
from tests.milter.test_wire import replay
from tests.support import golden
from tests.support.golden import SESSIONS
from tests.support.postgres import Postgres
from tests.support.sqltables import sql_rules


@pytest.fixture(scope="module")
def sql_milter(postgres: Postgres, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[MilterProcess]:
    workdir = tmp_path_factory.mktemp("sql-milter")
    process = start_milter(sql_rules(workdir / "rules", postgres.url), workdir)
    yield process
    assert process.stop() == 0


@pytest.mark.parametrize("session", SESSIONS.values(), ids=SESSIONS.keys())
def test_golden_session_over_the_wire_with_tables_from_sql(sql_milter: MilterProcess,
                                                           session: golden.Session) -> None:
    replay(sql_milter, session)
