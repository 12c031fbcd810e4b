"""The outside world the checks depend on, each behind a small interface.

Tests and benchmarks swap implementations; a failing service raises DependencyError,
which the engine turns into the configured failure action.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from ..log import LOGGER, fields
from ..metrics import OFF, Metrics
from .challenges import ChallengeStore
from .clamd import VirusScanner
from .dns import Resolver
from .errors import DependencyError
from .mailer import Mailer
from .spamd import SpamScanner
from .spf import SenderCheck
from .state import StateStore

__all__ = ["DependencyError", "Services", "in_background"]

_BACKGROUND = ThreadPoolExecutor(2, thread_name_prefix="background")


def _log_failure(future: Future[object]) -> None:
    error = future.exception()
    if error is not None:
        logging.getLogger(LOGGER).error(fields(event="background_error", error=repr(error)))


def in_background(work: Callable[[], object]) -> None:
    """Run ``work`` off the mail path (sending challenges, releasing held mail)."""
    _BACKGROUND.submit(work).add_done_callback(_log_failure)


@dataclass
class Services:
    """What tests and benchmarks swap; a service left None is built from the policy's
    settings (and is off when they name none)."""

    state: StateStore | None = None  # rate counters, greylisting, allow lists
    dns: Resolver | None = None
    virus: VirusScanner | None = None
    spam: SpamScanner | None = None
    challenges: ChallengeStore | None = None
    mailer: Mailer | None = None
    spf: SenderCheck | None = None
    run_later: Callable[[Callable[[], object]], None] = in_background
    last_sweep: float = 0.0  # when held challenge mail was last expired
    metrics: Metrics = OFF  # what the resolver counts (the log has its own reference)
