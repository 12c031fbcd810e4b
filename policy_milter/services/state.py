"""Counters for per-account sending limits, behind an interface a shared store can fill."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

MAX_PERIOD = 7 * 86400  # the longest window a limit may use: counters are kept this long


class RateStore(Protocol):
    def total(self, key: str, window: int) -> int:
        """How much was recorded under ``key`` in the last ``window`` seconds."""

    def record(self, key: str, amount: int) -> None:
        """Record ``amount`` now under ``key``."""


class MemoryRateStore:
    """Sliding-window counters in this process; thread-safe for libmilter's threads."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, horizon: int = MAX_PERIOD) -> None:
        self._clock = clock
        self._horizon = horizon  # the longest window kept
        self._events: dict[str, deque[tuple[float, int]]] = {}
        self._lock = threading.Lock()

    def total(self, key: str, window: int) -> int:
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
