"""The outside world the checks depend on, each behind a small interface.

Tests and benchmarks swap implementations; a failing service raises DependencyError,
which the engine turns into the configured failure action.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .state import MemoryRateStore, RateStore


class DependencyError(Exception):
    """A service could not answer.  ``entry`` names the catalogue reply for tempfail."""

    def __init__(self, service: str, message: str, entry: str = "state_tempfail") -> None:
        super().__init__(f"{service}: {message}")
        self.service = service
        self.entry = entry


@dataclass
class Services:
    rates: RateStore = field(default_factory=MemoryRateStore)
