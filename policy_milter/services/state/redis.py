"""The shared state store: one Redis server for several milters and mail hosts.

Counters are sorted sets (one member per record, scored by its time), changed and read
by Lua scripts, so that a count and the trimming of its old records are one atomic step:
concurrent records from any number of hosts are never lost, and windows slide exactly
as in the embedded store.  Every key carries a time to live (counters: the longest
window), so Redis forgets what nobody uses without a sweep.  Times are the hosts' own
(keep them in step with NTP, as mail hosts are).

A server that does not answer within the timeout (connecting included) is a
DependencyError; redis-py reconnects on the next command, and for a second after a
failure the store answers at once with the same error instead of waiting again, so that
a dead server costs each session one timeout at most.  The password is read from a file
and never appears in a message or the log.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..errors import DependencyError
from . import FOREVER, MAX_PERIOD, Entry, RedisServer

SERVICE = "redis"
FAST_FAIL = 1.0  # seconds after a failure during which calls fail without trying
_RECORD = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', tonumber(ARGV[1]) - tonumber(ARGV[3]))
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2] .. ':' .. ARGV[4])
redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(ARGV[3]) * 1000))
"""
_TOTAL = """
local sum = 0
for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '+inf')) do
  sum = sum + tonumber(string.match(member, '^(%d+):'))
end
return sum
"""


class RedisStore:
    """StateStore on a Redis server; keys are ``prefix`` + the store's key."""

    name = SERVICE
    across_hosts = True

    def __init__(self, server: RedisServer, prefix: str = "policy-milter:", timeout: float = 1.0,
                 password: str | None = None, clock: Callable[[], float] = time.time,
                 horizon: int = MAX_PERIOD) -> None:
        self.server = server
        self.address = str(server)
        self.prefix = prefix
        self._clock = clock
        self._horizon = horizon
        where: dict[str, Any] = {"unix_socket_path": server.unix} if server.unix else \
            {"host": server.host, "port": server.port}
        self._redis = redis.Redis(**where, db=server.db, password=password,
                                  socket_timeout=timeout, socket_connect_timeout=timeout,
                                  retry=Retry(NoBackoff(), 0),
                                  decode_responses=True)
        self._record = self._redis.register_script(_RECORD)
        self._total = self._redis.register_script(_TOTAL)
        self._failed_at = -FAST_FAIL
        self._lock = threading.Lock()

    def total(self, key: str, window: float) -> int:
        return int(self._call("reading a counter", self._total, keys=[self.prefix + key],
                              args=[repr(self._clock() - window)]))

    def record(self, key: str, amount: int) -> None:
        self._call("counting", self._record, keys=[self.prefix + key],
                   args=[repr(self._clock()), int(amount), self._horizon, uuid.uuid4().hex])

    def get(self, key: str) -> str | None:
        value: str | None = self._call("reading an entry", self._redis.get, self.prefix + key)
        return value

    def put(self, key: str, value: str, ttl: float = FOREVER) -> None:
        self._call("writing an entry", self._redis.set, self.prefix + key, value,
                   px=_ms(ttl))

    def add(self, key: str, value: str, ttl: float = FOREVER) -> str:
        """SET NX GET would be one command, but needs Redis 7; a retry loop is enough."""
        name = self.prefix + key
        while True:
            if self._call("adding an entry", self._redis.set, name, value, px=_ms(ttl), nx=True):
                return value
            current: str | None = self._call("adding an entry", self._redis.get, name)
            if current is not None:
                return current

    def delete(self, key: str) -> bool:
        return bool(self._call("deleting an entry", self._redis.delete, self.prefix + key))

    def entries(self, prefix: str) -> Iterator[Entry]:
        match = _glob_escape(self.prefix + prefix) + "*"
        names = sorted(self._call("listing entries", lambda: list(
            self._redis.scan_iter(match=match, count=1000, _type="string"))))
        now = self._clock()
        found = []
        for name in names:
            pipe = self._redis.pipeline(transaction=False)
            pipe.get(name)
            pipe.pttl(name)
            value, ttl = self._call("listing entries", pipe.execute)
            if value is not None:
                found.append(Entry(name[len(self.prefix):], value,
                                   now + ttl / 1000 if ttl > 0 else FOREVER))
        return iter(found)

    def close(self) -> None:
        self._redis.close()

    def problem(self) -> str:
        try:
            self._redis.ping()
        except redis.RedisError as err:
            return f"{type(err).__name__}: {err}"
        return ""

    def _call(self, doing: str, command: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """One command; a failure (or one less than FAST_FAIL ago) is a DependencyError."""
        with self._lock:
            recent = time.monotonic() - self._failed_at < FAST_FAIL
        if recent:
            raise DependencyError(SERVICE, f"{doing}: {self.server} failed less than "
                                           f"{FAST_FAIL:g} s ago")
        try:
            return command(*args, **kwargs)
        except redis.RedisError as err:
            with self._lock:
                self._failed_at = time.monotonic()
            raise DependencyError(SERVICE, f"{doing} at {self.server}: "
                                           f"{type(err).__name__}: {err}") from err


def _ms(ttl: float) -> int | None:
    return max(1, round(ttl * 1000)) if ttl else None


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
