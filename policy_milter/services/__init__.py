"""The outside world the checks depend on, each behind a small interface.

Tests and benchmarks swap implementations; a failing service raises DependencyError,
which the engine turns into the configured failure action.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .dns import Resolver
from .errors import DependencyError
from .state import MemoryRateStore, RateStore

__all__ = ["DependencyError", "Services"]


@dataclass
class Services:
    """What tests and benchmarks swap.  ``dns`` None: built from the policy's settings."""

    rates: RateStore = field(default_factory=MemoryRateStore)
    dns: Resolver | None = None
