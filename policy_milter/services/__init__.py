"""The outside world the checks depend on, each behind a small interface.

Tests and benchmarks swap implementations; a failing service raises DependencyError,
which the engine turns into the configured failure action.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .clamd import VirusScanner
from .dns import Resolver
from .spamd import SpamScanner
from .errors import DependencyError
from .state import MemoryRateStore, RateStore

__all__ = ["DependencyError", "Services"]


@dataclass
class Services:
    """What tests and benchmarks swap; a service left None is built from the policy's
    settings (and is off when they name none)."""

    rates: RateStore = field(default_factory=MemoryRateStore)
    dns: Resolver | None = None
    virus: VirusScanner | None = None
    spam: SpamScanner | None = None
