"""What the milter counts for monitoring, behind one small interface.

The engine, the log and the resolver report here; ``Metrics`` itself counts nothing, so
with metrics off (the default) a report costs one empty call.  prometheus.py keeps the
counts and serves them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .decision import Decision
    from .listen import Address
    from .stages import Stage


class Metrics:
    """Metrics off: every report is dropped."""

    def decision(self, stage: Stage, decision: Decision) -> None:
        """A decision, as logged (``event=decision``)."""

    def accepted(self, quarantined: bool) -> None:
        """A message accepted (or quarantined) at end of message."""

    def stage(self, stage: Stage, seconds: float) -> None:
        """Time the engine spent on one callback."""

    def failure(self, kind: str, check: str, service: str) -> None:
        """``kind``: dependency (a service failed), not_checked (too big or deep to check
        whole) or internal (an error of ours, answered with a tempfail)."""

    def dns(self, result: str) -> None:
        """A lookup served from the cache (hit), joined to one in flight, or sent (miss)."""

    def rules(self, directory: str, digest: str, seconds: float) -> None:
        """Rules loaded (at start or by a reload) in ``seconds``."""

    def reload_failed(self) -> None:
        """A reload kept the previous rules."""

    def sessions(self, count: Callable[[], int]) -> None:
        """Where the number of open sessions is read when metrics are collected."""

    def serve(self, address: Address) -> None:
        """Start answering scrapes at ``address`` (ListenError if it cannot)."""

    def close(self) -> None:
        """Stop answering scrapes."""


OFF = Metrics()
