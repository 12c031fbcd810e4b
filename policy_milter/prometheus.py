"""Prometheus metrics (``metrics = inet:PORT@HOST`` in policy.conf): the counts of
metrics.py kept with prometheus_client and served over HTTP at /metrics.

prometheus_client is optional; it is imported only when metrics are on.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from http.server import ThreadingHTTPServer
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import MetricsHandler

from .listen import Address, ListenError, why_not
from .metrics import Metrics

if TYPE_CHECKING:
    from .decision import Decision
    from .stages import Stage

PREFIX = "policy_milter"
# Seconds per callback: most answer in well under a millisecond; DNS and scanners take
# up to their timeouts.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
           10.0, 30.0, 60.0)


class PrometheusMetrics(Metrics):
    """Counts in a registry of its own (never the process-wide default one)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self._decisions = Counter(
            f"{PREFIX}_decisions", "Decisions by stage, outcome, catalogue entry, check and "
            "rule (file:line); monitor=yes: what a monitor-mode rule would have done",
            ["stage", "outcome", "entry", "check", "rule", "monitor"], registry=r)
        self._stage = Histogram(f"{PREFIX}_stage_seconds", "Time the policy took per "
                                "milter callback", ["stage"], buckets=BUCKETS, registry=r)
        self._failures = Counter(
            f"{PREFIX}_failures", "Checks that could not answer: a dependency failed (DNS, "
            "clamd, spamd, a store), a message too big or deep to check, an internal error",
            ["kind", "check", "service"], registry=r)
        self._dns = Counter(f"{PREFIX}_dns_lookups", "DNS lookups by how they were served: "
                            "hit (cache), joined (one in flight), miss (sent)", ["result"],
                            registry=r)
        self._sessions = Gauge(f"{PREFIX}_open_sessions", "MTA connections open",
                               registry=r)
        self._rules = Gauge(f"{PREFIX}_rules_info", "The rules in force (value 1)",
                            ["rules", "rules_hash"], registry=r)
        self._load = Gauge(f"{PREFIX}_rules_load_seconds", "Time the rules in force took to "
                           "load", registry=r)
        self._loaded = Gauge(f"{PREFIX}_rules_loaded_timestamp_seconds", "When the rules in "
                             "force were loaded (Unix time)", registry=r)
        self._reload_failures = Counter(f"{PREFIX}_reload_failures", "Reloads that kept the "
                                        "previous rules", registry=r)
        self._stages: dict[Stage, Histogram] = {}
        self._server: ThreadingHTTPServer | None = None

    def decision(self, stage: Stage, decision: Decision) -> None:
        self._decisions.labels(stage.value, decision.action.value,
                               decision.entry.name if decision.entry else "", decision.check,
                               decision.rule, "yes" if decision.monitor else "no").inc()

    def accepted(self, quarantined: bool) -> None:
        self._decisions.labels("eom", "quarantine" if quarantined else "accept", "", "", "",
                               "no").inc()

    def stage(self, stage: Stage, seconds: float) -> None:
        child = self._stages.get(stage)
        if child is None:  # looked up once per stage: labels() takes a lock and a tuple
            child = self._stages[stage] = self._stage.labels(stage.value)
        child.observe(seconds)

    def failure(self, kind: str, check: str, service: str) -> None:
        self._failures.labels(kind, check, service).inc()

    def dns(self, result: str) -> None:
        self._dns.labels(result).inc()

    def rules(self, directory: str, digest: str, seconds: float) -> None:
        self._rules.clear()
        self._rules.labels(directory, digest).set(1)
        self._load.set(seconds)
        self._loaded.set(time.time())

    def reload_failed(self) -> None:
        self._reload_failures.inc()

    def sessions(self, count: Callable[[], int]) -> None:
        self._sessions.set_function(count)

    def serve(self, address: Address) -> None:
        """Serve /metrics at ``address`` in a thread; ListenError if it cannot bind."""
        family = socket.AF_INET6 if address.family == "inet6" else socket.AF_INET
        server_class = type("_Server", (ThreadingHTTPServer,),
                            {"address_family": family, "daemon_threads": True})
        try:
            self._server = server_class((address.bare_host, address.port),
                                        MetricsHandler.factory(self.registry))
        except OSError:
            raise ListenError(f"cannot serve metrics on {address.spec}: "
                              f"{why_not(address)}") from None
        threading.Thread(target=self._server.serve_forever, name="metrics",
                         daemon=True).start()

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
