"""The state store of one process: what ``policy-milter test`` and a milter without a
state file use.  A restart forgets everything."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator

from . import FOREVER, MAX_PERIOD, Entry


class MemoryStore:
    """Sliding-window counters and entries in this process; thread-safe for libmilter's
    threads.  ``clock`` is wall-clock time, as the stores that persist use."""

    name = "state-memory"
    address = "memory"

    def __init__(self, clock: Callable[[], float] = time.time, horizon: int = MAX_PERIOD) -> None:
        self._clock = clock
        self._horizon = horizon  # the longest window kept
        self._events: dict[str, deque[tuple[float, int]]] = {}
        self._entries: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

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

    def _expire(self, events: deque[tuple[float, int]], now: float) -> None:
        while events and events[0][0] <= now - self._horizon:
            events.popleft()

    def get(self, key: str) -> str | None:
        with self._lock:
            return self._live(key)

    def put(self, key: str, value: str, ttl: float = FOREVER) -> None:
        with self._lock:
            self._entries[key] = (value, self._expiry(ttl))

    def add(self, key: str, value: str, ttl: float = FOREVER) -> str:
        with self._lock:
            current = self._live(key)
            if current is not None:
                return current
            self._entries[key] = (value, self._expiry(ttl))
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

    def _expiry(self, ttl: float) -> float:
        return self._clock() + ttl if ttl else FOREVER

    def _live_item(self, key: str) -> tuple[str, float] | None:
        item = self._entries.get(key)
        if item is not None and item[1] and item[1] <= self._clock():
            del self._entries[key]
            return None
        return item

    def _live(self, key: str) -> str | None:
        item = self._live_item(key)
        return None if item is None else item[0]
