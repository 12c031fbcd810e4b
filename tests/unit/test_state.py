"""The state stores keep one contract: memory, the embedded SQLite file, and a real Redis."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import pytest

from policy_milter.rules.policy import load
from policy_milter.rules.source import RuleErrors
from policy_milter.services.errors import DependencyError
from policy_milter.services.factory import open_state
from policy_milter.services.state import FOREVER, MAX_PERIOD, SWEEP_EVERY, StateStore
from policy_milter.services.state import RedisServer as Address
from policy_milter.services.state.memory import MemoryStore
from policy_milter.services.state.redis import RedisStore
from policy_milter.services.state.sqlite import SqliteStore
from tests.support.redis import RedisServer

Clock = list[float]
Make = Callable[[Callable[[], float]], StateStore]


@pytest.fixture(params=["memory", "sqlite", "redis"])
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Make]:
    """Stores of one kind on one backing (file or server), with the clock given."""
    opened: list[StateStore] = []
    server = request.getfixturevalue("redis_server") if request.param == "redis" else None

    def open_one(clock: Callable[[], float]) -> StateStore:
        store: StateStore
        if request.param == "memory":
            store = opened[0] if opened else MemoryStore(clock)  # one process: one store
        elif request.param == "sqlite":
            store = SqliteStore(tmp_path / "state.sqlite3", clock=clock)
        else:
            assert server is not None
            store = RedisStore(Address.parse(server.url), "test:", clock=clock)
        opened.append(store)
        return store

    yield open_one
    for store in opened:
        store.close()


def test_windows_slide(make: Make) -> None:
    now: Clock = [1000.0]
    store = make(lambda: now[0])
    store.record("a", 2)
    now[0] += 10
    store.record("a", 3)
    store.record("b", 7)
    assert store.total("a", 60) == 5
    now[0] += 55  # the first record is 65 s old, the second 55 s
    assert store.total("a", 60) == 3 and store.total("b", 60) == 7
    assert store.total("a", 50) == 0 and store.total("missing", 60) == 0


def test_entries_expire_and_add_keeps_the_first(make: Make) -> None:
    store = make(time.time)
    assert store.get("k") is None
    store.put("k", "one", ttl=0.3)
    assert store.get("k") == "one"
    assert store.add("k", "two", ttl=10) == "one"
    store.put("forever", "x")
    time.sleep(0.4)
    assert store.get("k") is None
    assert store.add("k", "two", ttl=10) == "two" and store.get("k") == "two"
    listed = list(store.entries("k"))
    assert [(e.key, e.value) for e in listed] == [("k", "two")]
    assert time.time() + 9 < listed[0].expires <= time.time() + 10
    assert [e.expires for e in store.entries("forever")] == [FOREVER]
    assert store.delete("k") and not store.delete("k") and store.get("k") is None


def test_concurrent_records_lose_nothing(make: Make) -> None:
    """64 threads over four stores (four connections, as four processes would have)."""
    stores = [make(time.time) for _ in range(4)]
    start = threading.Barrier(64)

    def one(i: int) -> None:
        start.wait()
        stores[i % 4].record("shared", 1)
        stores[i % 4].add("first", str(i))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(s.total("shared", 60) == 64 for s in stores)
    assert len({s.get("first") for s in stores}) == 1


def test_the_embedded_store_outlives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    store = SqliteStore(path)
    store.record("account:dora@quota.example:messages", 1)
    store.put("greylist", "passed", ttl=3600)
    store.close()
    again = SqliteStore(path)
    assert again.total("account:dora@quota.example:messages", 3600) == 1
    assert again.get("greylist") == "passed"
    assert (path.stat().st_mode & 0o777) == 0o600


def test_an_unusable_file_is_a_dependency_error(tmp_path: Path) -> None:
    (tmp_path / "state.sqlite3").write_bytes(b"not a database" * 100)
    with pytest.raises(DependencyError, match="state-sqlite: opening .*state.sqlite3"):
        SqliteStore(tmp_path / "state.sqlite3")


def test_redis_down_fails_within_the_timeout_and_comes_back(redis_server: RedisServer) -> None:
    store = RedisStore(Address.parse(redis_server.url), timeout=0.5)
    store.record("k", 1)
    redis_server.pause()
    started = time.monotonic()
    with pytest.raises(DependencyError, match=f"redis: counting at 127.0.0.1:{redis_server.port}"):
        store.record("k", 1)
    assert time.monotonic() - started < 0.6
    with pytest.raises(DependencyError, match="failed less than 1 s ago"):
        store.total("k", 60)  # at once, without waiting again
    redis_server.resume()  # empty: Redis here keeps nothing on disk
    time.sleep(1.0)
    store.record("k", 1)
    assert store.total("k", 60) == 1


def test_a_slow_redis_is_a_timeout(tmp_path: Path) -> None:
    """A server that accepts and never answers (a Redis stopped with SIGSTOP, a full
    network buffer) costs the timeout, not the kernel's."""
    import socket
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        store = RedisStore(Address.parse(f"redis://127.0.0.1:{silent.getsockname()[1]}"),
                           timeout=0.3)
        started = time.monotonic()
        with pytest.raises(DependencyError, match="Timeout"):
            store.get("k")
        assert time.monotonic() - started < 0.5


def test_redis_password_from_a_file_never_shown(tmp_path: Path,
                                                make_rules: Callable[..., Path]) -> None:
    secret = "s3cret-Pa55"
    with RedisServer(tmp_path / "redis", password=secret) as server:
        (tmp_path / "password").write_text(secret + "\n")
        good = open_state(load(make_rules(state=server.url, state_password_file=str(
            tmp_path / "password"))))
        good.put("k", "v")
        assert good.get("k") == "v"
        bad = open_state(load(make_rules(state=server.url)))
        with pytest.raises(DependencyError) as info:
            bad.get("k")
        assert secret not in str(info.value)
    missing = load(make_rules(state=server.url, state_password_file=str(tmp_path / "none")))
    with pytest.raises(DependencyError, match=r"policy.conf:\d+: cannot read the password"):
        open_state(missing)


@pytest.mark.parametrize(("value", "message"), [
    ("redis://:pw@127.0.0.1:6379/0", "no user or password in the URL"),
    ("memcached://127.0.0.1", "is not redis://HOST[:PORT][/DB]"),
    ("redis://127.0.0.1:6379/x", "is not redis://HOST[:PORT][/DB]"),
])
def test_bad_state_settings_name_their_line(make_rules: Callable[..., Path], value: str,
                                             message: str) -> None:
    with pytest.raises(RuleErrors) as info:
        load(make_rules(state=value))
    assert any("policy.conf:" in e and "state: " in e and message in e
               for e in info.value.errors), info.value.errors


def test_where_the_embedded_store_keeps_its_file(make_rules: Callable[..., Path], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    assert isinstance(open_state(load(make_rules())), MemoryStore)
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "systemd"))
    under_systemd = open_state(load(make_rules()))
    assert isinstance(under_systemd, SqliteStore)
    assert under_systemd.path == tmp_path / "systemd" / "state.sqlite3"
    named = open_state(load(make_rules(state_file=str(tmp_path / "named.sqlite3"))))
    assert isinstance(named, SqliteStore) and named.path == tmp_path / "named.sqlite3"


def test_add_returns_the_value_itself_when_it_set_it(make: Make) -> None:
    """What tells the greylist its attempt is the first: an equal value read back is
    another attempt's."""
    store = make(time.time)
    first = 1.5
    given = f"pending {first!r}"
    assert store.add("k", given, ttl=60) is given
    again = f"pending {first!r}"  # equal, not the same string
    stored = store.add("k", again, ttl=60)
    assert stored == again and stored is not again


def stored(store: StateStore, path: Path) -> tuple[int, int]:
    """How many entries and counter records the store holds, expired or not."""
    if isinstance(store, MemoryStore):
        return len(store._entries), sum(len(e) for e in store._events.values())
    with closing(sqlite3.connect(path)) as db:
        return (db.execute("SELECT COUNT(*) FROM entry").fetchone()[0],
                db.execute("SELECT COUNT(*) FROM count").fetchone()[0])


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_what_expires_is_swept_though_never_read_again(kind: str, tmp_path: Path) -> None:
    """First-seen triplets that never retry, counters of clients seen once: a write now
    and then removes them all (Redis expires keys itself)."""
    now: Clock = [1_000_000.0]
    path = tmp_path / "state.sqlite3"
    store: StateStore = MemoryStore(lambda: now[0]) if kind == "memory" else \
        SqliteStore(path, clock=lambda: now[0])
    store.put("forever", "x")  # the first write sweeps; the next is due SWEEP_EVERY on
    for i in range(500):
        store.add(f"greylist:triplet:{i}", "pending", ttl=60)  # never retried
        store.put(f"greylist:client:{i}", "auto", ttl=3600)
        store.record(f"client:{i}", 1)
    store.put("long", "y", ttl=MAX_PERIOD * 2)
    assert stored(store, path) == (1002, 500)
    now[0] += 61
    store.put("soon", "z", ttl=10)  # too soon for a sweep: the triplets are still there
    assert stored(store, path) == (1003, 500)
    now[0] += SWEEP_EVERY
    store.add("added", "w", ttl=60)  # an add sweeps: the triplets and "soon" go
    assert stored(store, path) == (500 + 3, 500)
    now[0] += 3600
    store.put("put", "v")  # so does a put: the clients and "added" go
    assert stored(store, path) == (3, 500)
    assert [e.key for e in store.entries("")] == ["forever", "long", "put"]
    now[0] += MAX_PERIOD
    store.record("client:new", 1)  # so does a record: the counts are past the longest window
    assert stored(store, path) == (3, 1)
    assert store.total("client:new", 60) == 1 and store.get("long") == "y"
    store.close()
