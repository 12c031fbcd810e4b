"""Shared fixtures: the test rules directory, and engines built from it."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from policy_milter.engine import Engine, Session
from policy_milter.rules.policy import Policy, load
from policy_milter.services import Services
from tests.support.postgres import Postgres
from tests.support.redis import RedisServer

REPO = Path(__file__).resolve().parents[1]
FIXTURE_RULES = REPO / "tests" / "fixtures" / "rules"


def copy_rules(dest: Path, source: Path = FIXTURE_RULES, **settings: str) -> Path:
    """Rules (the fixture ones unless ``source`` says) copied to ``dest``, with some
    policy.conf settings replaced."""
    shutil.copytree(source, dest)
    conf = dest / "policy.conf"
    text = conf.read_text()
    for name, value in settings.items():
        text, found = re.subn(rf"(?m)^{name}[ \t]*=.*$", f"{name} = {value}", text)
        if not found:
            text += f"{name} = {value}\n"
    conf.write_text(text)
    return dest


@pytest.fixture(scope="session")
def fixture_policy() -> Policy:
    return load(FIXTURE_RULES)


@pytest.fixture
def make_rules(tmp_path: Path) -> Callable[..., Path]:
    counter = iter(range(1000))
    return lambda **settings: copy_rules(tmp_path / f"rules{next(counter)}", **settings)


@pytest.fixture
def engine(fixture_policy: Policy) -> Engine:
    return Engine(fixture_policy, Services())


@pytest.fixture
def session(engine: Engine) -> Session:
    """A session from an outside client that greeted properly."""
    s = engine.session()
    s.connect("192.0.2.10", "mx.sender.example", "smtpd")
    s.helo("mx.sender.example", False)
    return s


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server on a loopback port (it starts in milliseconds)."""
    with RedisServer(tmp_path / "redis") as server:
        yield server


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    """A private PostgreSQL cluster holding the test rules' tables in a postfixadmin
    schema (tests/support/sqltables.py)."""
    from tests.support.sqltables import fill  # it builds its rules from this module's

    server = Postgres().start()
    with psycopg.connect(server.url, autocommit=True) as conn:
        fill(conn.execute)
    yield server
    server.remove()
