"""At start: which services the rules name do not answer now.

The milter starts all the same (each message that needs a missing service gets its
failure action); the admin reads at once which service, at which address, and why,
rather than learning it from the first tempfailed message.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import dns.exception
import dns.message
import dns.query

from .clamd import Clamd
from .dns import DnsResolver
from .mailer import SmtpMailer
from .spamd import Spamd

if TYPE_CHECKING:
    from ..rules.policy import Policy
    from .factory import Live

TIMEOUT = 3.0  # seconds a probe may take at most (less if the service's timeout is less)


@dataclass(frozen=True)
class Unreachable:
    service: str  # clamd, spamd, dns, smtp, sql, redis
    address: str
    reason: str


def unreachable(policy: Policy, live: Live, timeout: float = TIMEOUT) -> list[Unreachable]:
    """The services of ``live`` that do not answer within ``timeout``, in a stable order."""
    probes: list[tuple[str, str, Callable[[], str]]] = []
    if isinstance(live.virus, Clamd):
        probes.append(("clamd", live.virus.address,
                       _call(live.virus.problem, min(timeout, live.virus.timeout))))
    if isinstance(live.spam, Spamd):
        probes.append(("spamd", live.spam.address,
                       _call(live.spam.problem, min(timeout, live.spam.timeout))))
    if isinstance(live.dns, DnsResolver):
        # What the lists are asked about, or the root: any answer, even a refusal, shows
        # the server is there.
        name = policy.tables.zones[0].zone if policy.tables.zones else "."
        servers, port = live.dns.nameservers()
        wait = min(timeout, live.dns.config.timeout)
        probes += [("dns", f"{server}:{port}", _dns(server, port, name, wait))
                   for server in servers]
    if isinstance(live.mailer, SmtpMailer):
        host, port = live.mailer.host, live.mailer.port
        probes.append(("smtp", f"{host}:{port}", _tcp(host, port, min(timeout,
                                                                       live.mailer.timeout))))
    for connection in {id(t.connection): t.connection for t in live.tables.values()}.values():
        probes.append(("sql", connection.database.shown,
                       _call(connection.problem, min(timeout, connection.timeout))))
    probes.append((live.state.name, live.state.address, live.state.problem))
    if not probes:
        return []
    with ThreadPoolExecutor(len(probes), thread_name_prefix="probe") as pool:
        answers = list(pool.map(lambda probe: probe[2](), probes))
    return [Unreachable(service, address, reason)
            for (service, address, _), reason in zip(probes, answers) if reason]


def _call(problem: Callable[[float], str], timeout: float) -> Callable[[], str]:
    return lambda: problem(timeout)


def _dns(server: str, port: int, name: str, timeout: float) -> Callable[[], str]:
    def probe() -> str:
        try:
            dns.query.udp(dns.message.make_query(name, "SOA"), server, timeout, port)
        except dns.exception.Timeout:
            return f"no answer to SOA {name} within {timeout:g}s"
        except (dns.exception.DNSException, OSError) as err:
            return f"{type(err).__name__}: {err}"
        return ""
    return probe


def _tcp(host: str, port: int, timeout: float) -> Callable[[], str]:
    def probe() -> str:
        try:
            socket.create_connection((host, port), timeout).close()
        except OSError as err:
            return err.strerror or str(err)
        return ""
    return probe
