"""The challenge-response store: lifecycle, persistence, concurrency, failures, streaming."""

from __future__ import annotations

import io
import os
import re
import stat
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from policy_milter.services.challenges import CHUNK, Held, SqliteChallengeStore
from policy_milter.services.errors import DependencyError
from policy_milter.services.state import RedisServer as Address
from policy_milter.services.state.redis import RedisStore
from tests.support.redis import RedisServer

RCPT = "Boss@Example.COM"
SENDER = "Stranger@Elsewhere.Example"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteChallengeStore]:
    s = SqliteChallengeStore(tmp_path / "cr")
    yield s
    s.close()


def msg(text: str) -> io.BytesIO:
    return io.BytesIO(text.encode())


def content(store: SqliteChallengeStore, held: Held) -> bytes:
    with store.open_message(held) as f:
        return f.read()


def spool_files(directory: Path) -> set[str]:
    return {p.name for p in (directory / "spool").iterdir()}


def test_hold_answer_release_round_trip(store: SqliteChallengeStore) -> None:
    first, new = store.hold(RCPT, SENDER, msg("one"), now=1000.0)
    assert new and re.fullmatch(r"[0-9a-f]{24,}", first.token)
    store.challenged(first.token)
    assert (first.recipient, first.sender, first.size, first.queued_at) == (
        "boss@example.com", "stranger@elsewhere.example", 3, 1000.0)
    second, new = store.hold(RCPT.lower(), SENDER.upper(), msg("two"), now=1001.0)
    assert not new and second.token == first.token
    assert store.pending() == [first, second]
    assert not store.allowed(RCPT, SENDER)

    released = store.answer(first.token.upper(), SENDER.upper())
    assert released == [first, second]
    assert store.allowed(RCPT.upper(), SENDER.lower())
    assert store.pending() == [] and store.released() == [first, second]
    assert [content(store, h) for h in released] == [b"one", b"two"]
    assert store.answer(first.token, SENDER) == []  # the token is used up

    for held in released:
        store.done(held)
    assert store.released() == [] and not first.path.exists() and not second.path.exists()


def test_one_challenge_per_pair(store: SqliteChallengeStore) -> None:
    a, new_a = store.hold(RCPT, SENDER, msg("a"))
    store.challenged(a.token)
    b, new_b = store.hold(RCPT, "other@elsewhere.example", msg("b"))
    c, new_c = store.hold("second@example.com", SENDER, msg("c"))
    d, new_d = store.hold(RCPT, SENDER, msg("d"))
    assert (new_a, new_b, new_c, new_d) == (True, True, True, False)
    assert len({a.token, b.token, c.token}) == 3 and d.token == a.token
    assert len({a.id, b.id, c.id, d.id}) == 4
    assert all(re.fullmatch(r"[0-9a-f]{32}", h.id) for h in (a, b, c, d))

    store.answer(a.token, SENDER)
    e, new_e = store.hold(RCPT, SENDER, msg("e"))  # the caller should have checked allowed()
    assert new_e and e.token != a.token


def test_a_withheld_challenge_can_still_go_out_later(store: SqliteChallengeStore) -> None:
    """No challenge sent for the pair (the sender could not be trusted): the next held
    message of the pair may still send it, with the same token."""
    first, unchallenged = store.hold(RCPT, SENDER, msg("forged?"))
    later, still = store.hold(RCPT, SENDER, msg("genuine"))
    assert unchallenged and still and later.token == first.token
    store.challenged(later.token)
    assert store.hold(RCPT, SENDER, msg("third"))[1] is False


def test_known_senders_are_those_on_an_allow_list(store: SqliteChallengeStore) -> None:
    assert not store.known(SENDER)
    held, _ = store.hold(RCPT, SENDER, msg("x"))
    store.answer(held.token, SENDER)
    assert store.known(SENDER.upper()) and not store.known("other@elsewhere.example")


def test_wrong_sender_or_unknown_token_changes_nothing(store: SqliteChallengeStore) -> None:
    held, _ = store.hold(RCPT, SENDER, msg("x"))
    assert store.answer(held.token, "intruder@elsewhere.example") == []
    assert store.answer("0" * 32, SENDER) == []
    assert store.answer("", SENDER) == []
    assert store.pending() == [held] and store.released() == []
    assert not store.allowed(RCPT, SENDER) and not store.allowed(RCPT, "intruder@elsewhere.example")
    assert store.answer(held.token, SENDER) == [held]  # the token still works


def test_state_survives_a_restart(tmp_path: Path) -> None:
    first = SqliteChallengeStore(tmp_path)
    first.allow(RCPT, "friend@elsewhere.example")
    held, _ = first.hold(RCPT, SENDER, msg("kept"))
    first.challenged(held.token)
    first.close()

    second = SqliteChallengeStore(tmp_path)
    assert second.allowed(RCPT, "Friend@Elsewhere.Example")
    assert second.pending() == [held]
    _, new = second.hold(RCPT, SENDER, msg("more"))
    assert not new  # the pending challenge survived too
    released = second.answer(held.token, SENDER)
    second.close()

    third = SqliteChallengeStore(tmp_path)  # crashed before re-injecting: nothing is lost
    assert third.released() == released and content(third, released[0]) == b"kept"
    assert third.released(min_age=60) == []  # leaves a release in progress alone
    third.close()


def test_expire_drops_old_messages_and_tokens(tmp_path: Path) -> None:
    store = SqliteChallengeStore(tmp_path)
    old, _ = store.hold(RCPT, SENDER, msg("old"), now=1000.0)
    store.challenged(old.token)
    lone, _ = store.hold(RCPT, "lone@elsewhere.example", msg("lone"), now=1001.0)
    young, new = store.hold(RCPT, SENDER, msg("young"), now=5000.0)  # same pair as old
    recent, _ = store.hold(RCPT, "recent@elsewhere.example", msg("recent"), now=5001.0)
    released = store.release(store.hold(RCPT, "slow@elsewhere.example", msg("slow"), now=1000.0)[0].id)
    assert not new and released is not None

    assert store.expire(max_age=3000.0, now=5500.0) == [old, lone]
    assert not old.path.exists() and not lone.path.exists()
    assert store.pending() == [young, recent]
    assert store.released() == [released]  # released messages are never expired
    assert store.answer(lone.token, "lone@elsewhere.example") == []  # token gone with its messages
    assert store.answer(young.token, SENDER) == [young]  # still needed by a younger message

    assert store.expire(max_age=3000.0, now=9000.0) == [recent]
    assert store.answer(recent.token, "recent@elsewhere.example") == []
    assert store.expire(max_age=3000.0, now=9000.0) == []
    assert spool_files(tmp_path) == {young.path.name, released.path.name}
    store.close()


def test_expire_sweeps_old_orphan_files(tmp_path: Path) -> None:
    store = SqliteChallengeStore(tmp_path)
    held, _ = store.hold(RCPT, SENDER, msg("kept"))
    old_orphan, tmp_orphan, fresh_orphan = (tmp_path / "spool" / n for n in ("a.eml", ".tmp-x", "b.eml"))
    for path in (old_orphan, tmp_orphan, fresh_orphan):
        path.write_bytes(b"crash leftovers")
    for path in (old_orphan, tmp_orphan, held.path):
        os.utime(path, (1000.0, 1000.0))
    assert store.expire(max_age=3600.0) == []
    assert spool_files(tmp_path) == {held.path.name, fresh_orphan.name}
    assert store.pending() == [held]
    store.close()


def test_release_and_drop_by_id(store: SqliteChallengeStore) -> None:
    a, _ = store.hold(RCPT, SENDER, msg("a"), now=1.0)
    b, _ = store.hold(RCPT, SENDER, msg("b"), now=2.0)
    c, _ = store.hold(RCPT, SENDER, msg("c"), now=3.0)

    assert store.release(a.id) == a
    assert store.release(a.id) is None and store.release("nosuchid") is None
    assert not store.allowed(RCPT, SENDER)  # releasing one message allow-lists nobody
    assert store.drop(a.id) is False  # released: owned by whoever re-injects it
    assert store.drop(b.id) is True and not b.path.exists()
    assert store.drop(b.id) is False and store.drop("nosuchid") is False
    assert store.pending() == [c] and store.released() == [a]
    assert store.answer(a.token, SENDER) == [c]
    assert a.path.exists()  # until done()


def _hold_many(store: SqliteChallengeStore, worker: int, count: int,
               results: list[tuple[Held, bool]], errors: list[BaseException]) -> None:
    try:
        for i in range(count):
            sender = f"s{(worker + i) % 4}@elsewhere.example"
            results.append(store.hold(RCPT, sender, msg(f"{sender} {worker} {i}")))
    except BaseException as err:  # noqa: BLE001 - reported by the test
        errors.append(err)


def test_concurrent_holds_from_threads_and_two_instances(tmp_path: Path) -> None:
    stores = [SqliteChallengeStore(tmp_path), SqliteChallengeStore(tmp_path)]
    results: list[tuple[Held, bool]] = []
    errors: list[BaseException] = []
    threads = [threading.Thread(target=_hold_many, args=(stores[w % 2], w, 10, results, errors))
               for w in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(results) == 320 and len({h.id for h, _ in results}) == 320
    tokens = {h.sender: h.token for h, _ in results}
    assert len(tokens) == 4 and all(h.token == tokens[h.sender] for h, _ in results)
    assert all(unchallenged for _, unchallenged in results)  # none was sent
    by_id = {h.id: h for h, _ in results}
    assert {h.id: h for h in stores[1].pending()} == by_id
    for held, _ in results:
        assert content(stores[0], held).split()[0].decode() == held.sender
    released = stores[0].answer(tokens["s0@elsewhere.example"], "s0@elsewhere.example")
    assert len(released) == 80
    for s in stores:
        s.close()


def test_concurrent_holds_from_another_process(tmp_path: Path) -> None:
    code = ("import io, sys; from pathlib import Path;"
            "from policy_milter.services.challenges import SqliteChallengeStore as S;"
            "s = S(Path(sys.argv[1]));"
            "[s.hold('boss@example.com', f's{i % 3}@x.example', io.BytesIO(b'child')) for i in range(60)]")
    child = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=REPO)
    store = SqliteChallengeStore(tmp_path)
    held = 0
    while child.poll() is None or held < 60:  # keep writing for as long as the child does
        store.hold(RCPT, f"s{held % 3}@x.example", msg("parent"))
        held += 1
    assert child.wait() == 0
    pending = store.pending()
    assert len(pending) == 60 + held and len({h.id for h in pending}) == 60 + held
    assert len({h.token for h in pending}) == 3  # one challenge per pair across both processes
    assert Counter(content(store, h) for h in pending) == {b"child": 60, b"parent": held}
    store.close()


@pytest.fixture(params=[0o022, 0o000], ids=["umask-022", "umask-000"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def store_paths(directory: Path) -> list[Path]:
    """The store's directories, its database and the database's -wal and -shm."""
    db = directory / "challenges.sqlite3"
    return [directory, directory / "spool", db, Path(f"{db}-wal"), Path(f"{db}-shm")]


def assert_private(*paths: Path) -> None:
    found = {path.name: stat.S_IMODE(path.stat().st_mode) for path in paths}
    assert found == {path.name: 0o700 if path.is_dir() else 0o600 for path in paths}


def test_tokens_and_held_mail_are_private_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    directory = tmp_path / "state" / "cr"
    store = SqliteChallengeStore(directory)
    try:
        held, _ = store.hold(RCPT, SENDER, msg("secret"))  # -wal and -shm exist from now on
        assert_private(*store_paths(directory), held.path)
    finally:
        store.close()
    assert os.umask(umask) == umask  # the process umask is as it was


def test_an_existing_store_is_made_private_when_opened(tmp_path: Path) -> None:
    directory = tmp_path / "cr"
    store = SqliteChallengeStore(directory)
    try:
        store.hold(RCPT, SENDER, msg("secret"))
        for path in store_paths(directory):  # as an older version left them under umask 022
            path.chmod(0o755 if path.is_dir() else 0o644)
        SqliteChallengeStore(directory).close()  # the first one keeps -wal and -shm open
        assert_private(*store_paths(directory))
    finally:
        store.close()


def test_broken_directory_raises_dependency_error(tmp_path: Path) -> None:
    (tmp_path / "db-is-dir" / "challenges.sqlite3").mkdir(parents=True)
    (tmp_path / "a-file").write_text("")
    for directory in (tmp_path / "db-is-dir", tmp_path / "a-file"):
        with pytest.raises(DependencyError) as info:
            SqliteChallengeStore(directory)
        assert info.value.service == "challenge-store" and info.value.entry == "state_tempfail"


def test_failures_after_opening_raise_and_keep_nothing(tmp_path: Path) -> None:
    store = SqliteChallengeStore(tmp_path)
    held, _ = store.hold(RCPT, SENDER, msg("kept"))

    store._db.execute("PRAGMA query_only = ON")  # the database refuses writes
    with pytest.raises(DependencyError):
        store.hold(RCPT, SENDER, msg("refused"))
    with pytest.raises(DependencyError):
        store.answer(held.token, SENDER)
    store._db.execute("PRAGMA query_only = OFF")
    assert spool_files(tmp_path) == {held.path.name}  # the refused message's file is gone

    held.path.rename(tmp_path / "aside")
    (tmp_path / "spool").rmdir()
    (tmp_path / "spool").write_text("")  # the spool is not a directory any more
    with pytest.raises(DependencyError):
        store.hold(RCPT, SENDER, msg("refused"))
    with pytest.raises(DependencyError):
        store.open_message(held)
    assert store.pending() == [held]
    assert not store.allowed(RCPT, SENDER)
    store.close()


class ChunkedReader(io.RawIOBase):
    """A message source that fails if anyone reads it whole."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)
        self.largest = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        assert size is not None and 0 < size <= CHUNK, f"read({size})"
        self.largest = max(self.largest, size)
        return self._data.read(size)


def test_large_message_streams_byte_for_byte(store: SqliteChallengeStore) -> None:
    data = os.urandom(5 * 1024 * 1024 + 17) + b"\r\n.\r\n\x00\xff"
    source = ChunkedReader(data)
    held, _ = store.hold(RCPT, SENDER, source)  # type: ignore[arg-type]
    assert held.size == len(data) and source.largest == CHUNK
    assert held.path.read_bytes() == data
    with store.open_message(held) as f:
        assert b"".join(iter(lambda: f.read(CHUNK), b"")) == data
    empty, _ = store.hold(RCPT, SENDER, msg(""))
    assert empty.size == 0 and content(store, empty) == b""


def test_allow_lists_are_shared_through_redis(tmp_path: Path, redis_server: RedisServer) -> None:
    """Two hosts, each with its own challenge store (held mail stays where it was held),
    sharing one Redis: a sender allowed on one, by an answer or by the admin, is allowed
    and known on the other."""
    shared = RedisStore(Address.parse(redis_server.url), "allow:")
    first = SqliteChallengeStore(tmp_path / "mx1", shared=shared)
    second = SqliteChallengeStore(tmp_path / "mx2", shared=RedisStore(
        Address.parse(redis_server.url), "allow:"))
    held, _ = first.hold(RCPT, SENDER, msg("one"))
    assert not second.allowed(RCPT, SENDER) and not second.known(SENDER)
    assert first.answer(held.token, SENDER) == [held]
    assert second.allowed(RCPT.upper(), SENDER) and second.known(SENDER.upper())
    assert not second.allowed("other@example.com", SENDER)  # the pair, not the sender alone
    second.allow("other@example.com", "friend@elsewhere.example")
    assert first.allowed("other@example.com", "friend@elsewhere.example")
    alone = SqliteChallengeStore(tmp_path / "mx3")  # not sharing: its own lists only
    assert not alone.allowed(RCPT, SENDER)
    for store in (first, second, alone):
        store.close()
