"""The state store of one process: what ``policy-milter test`` and a milter without a
state file use.  A restart forgets everything."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator

from . import FOREVER, MAX_PERIOD, SWEEP_EVERY, Entry


class MemoryStore:
    """Sliding-window counters and entries in this process; thread-safe for libmilter's
    threads.  ``clock`` is wall-clock time, as the stores that persist use."""

    name = "state-memory"
    address = "memory"
    across_hosts = False

    def __init__(self, clock: Callable[[], float] = time.time, horizon: int = MAX_PERIOD) -> None:
        self._clock = clock
        self._horizon = horizon  # the longest window kept
        self._events: dict[str, deque[tuple[float, int]]] = {}
        self._entries: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()
        self._swept = 0.0

    def total(self, key: str, window: float) -> int:
        now = self._clock()
        with self._lock:
            events = self._events.get(key)
            if not events:
                return 0
            self._expire(events, now)
            return sum(n for t, n in events if t > now - window)

    def record(self, key: str, amount: int) -> None:
        now = self._clock()
        with self._lock:
            events = self._events.setdefault(key, deque())
            self._expire(events, now)
            events.append((now, amount))
            self._sweep(now)

    def _expire(self, events: deque[tuple[float, int]], now: float) -> None:
        while events and events[0][0] <= now - self._horizon:
            events.popleft()

    def get(self, key: str) -> str | None:
        with self._lock:
            return self._live(key)

    def put(self, key: str, value: str, ttl: float = FOREVER) -> None:
        now = self._clock()
        with self._lock:
            self._sweep(now)
            self._entries[key] = (value, self._expiry(ttl, now))

    def add(self, key: str, value: str, ttl: float = FOREVER) -> str:
        now = self._clock()
        with self._lock:
            self._sweep(now)
            current = self._live(key)
            if current is not None:
                return current
            self._entries[key] = (value, self._expiry(ttl, now))
            return value

    def delete(self, key: str) -> bool:
        with self._lock:
            return self._live(key) is not None and self._entries.pop(key, None) is not None

    def entries(self, prefix: str) -> Iterator[Entry]:
        with self._lock:
            found = [Entry(k, v[0], v[1]) for k in list(self._entries)
                     if k.startswith(prefix) and (v := self._live_item(k)) is not None]
        return iter(sorted(found))

    def close(self) -> None:
        """Nothing to release."""

    def problem(self) -> str:
        return ""

    @staticmethod
    def _expiry(ttl: float, now: float) -> float:
        return now + ttl if ttl else FOREVER

    def _sweep(self, now: float) -> None:
        """Now and then (every write asks; the lock is held), forget expired entries and
        counters whose records are all past the longest window: what is never read again
        (a first-seen triplet that never retries, a client seen once) must go too."""
        if now - self._swept < SWEEP_EVERY:
            return
        self._swept = now
        for key in [k for k, (_, expires) in self._entries.items() if expires and expires <= now]:
            del self._entries[key]
        for key, events in list(self._events.items()):
            self._expire(events, now)
            if not events:
                del self._events[key]

    def _live_item(self, key: str) -> tuple[str, float] | None:
        item = self._entries.get(key)
        if item is not None and item[1] and item[1] <= self._clock():
            del self._entries[key]
            return None
        return item

    def _live(self, key: str) -> str | None:
        item = self._live_item(key)
        return None if item is None else item[0]
