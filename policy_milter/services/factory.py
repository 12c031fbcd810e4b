"""Builds the services a policy names (resolver, scanners, challenge store, mailer) and
closes them again.

A reload builds a new set next to the old one and keeps what did not change (the
resolver with its cache while the DNS settings stay, the challenge store while its
directory stays); whatever the new set does not keep is closed once the last session
that began under the old rules has ended.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..rules.tables import parse_row
from . import Services
from .challenges import ChallengeStore, SqliteChallengeStore
from .clamd import Clamd, VirusScanner
from .dns import DnsResolver, Resolver
from .mailer import Mailer, SmtpMailer
from .spamd import Spamd, SpamScanner
from .spf import SenderCheck, Spf
from .sql import Connection, SqlTable

if TYPE_CHECKING:
    from ..rules.policy import Policy


Closable = DnsResolver | SqliteChallengeStore | Connection


@dataclass(frozen=True)
class Live:
    """The service instances one loaded policy uses; None where the policy names none.
    ``owned`` are those built here (not given by a test), which ``close`` closes."""

    dns: Resolver | None = None
    virus: VirusScanner | None = None
    spam: SpamScanner | None = None
    challenges: ChallengeStore | None = None
    mailer: Mailer | None = None
    spf: SenderCheck | None = None  # whether a sender may be challenged
    tables: Mapping[str, SqlTable] = field(default_factory=dict)  # the tables from SQL
    owned: tuple[Closable, ...] = ()

    def close(self, keep: Sequence[Closable] = ()) -> None:
        """Close what this set built, but for what is in ``keep`` (still used elsewhere)."""
        for item in self.owned:
            if not any(item is k for k in keep):
                item.close()


def build(policy: Policy, given: Services, previous: Live | None = None) -> Live:
    """The services ``policy`` names; those in ``given`` (tests, benchmarks) win."""
    s = policy.settings
    dns = _resolver(policy, given, previous)
    store = _store(policy, given, previous)
    tables = _sql_tables(policy, previous)
    connections = tuple({id(t.connection): t.connection for t in tables.values()}.values())
    return Live(
        dns=dns,
        virus=given.virus or (Clamd(s.clamd, s.clamd_timeout, s.clamd_max_size)
                              if s.clamd else None),
        spam=given.spam or (Spamd(s.spamd, s.spamd_timeout, s.spamd_user) if s.spamd else None),
        challenges=store,
        mailer=given.mailer or (smtp_mailer(policy) if s.challenge_store else None),
        spf=given.spf or (Spf(policy.dns_config, s.dns_budget) if s.challenge_store else None),
        tables=tables,
        owned=tuple(x for x in (dns, store) if isinstance(x, Closable)
                    and x is not given.dns and x is not given.challenges) + connections,
    )


def smtp_mailer(policy: Policy) -> SmtpMailer:
    """The MTA that takes challenges and released mail, greeted as the challenge domain."""
    s = policy.settings
    return SmtpMailer(*s.challenge_smtp, helo=s.challenge_address.rpartition("@")[2])


def _store(policy: Policy, given: Services, previous: Live | None) -> ChallengeStore | None:
    """The store is reused across reloads while its directory stays."""
    directory = policy.settings.challenge_store
    if not directory:
        return None
    if given.challenges is not None:
        return given.challenges
    old = previous.challenges if previous is not None else None
    if isinstance(old, SqliteChallengeStore) and old.directory == Path(directory):
        return old
    return SqliteChallengeStore(Path(directory))


def _sql_tables(policy: Policy, previous: Live | None) -> dict[str, SqlTable]:
    """A table from SQL for each the policy names.  Connections are kept across reloads
    while their database and timeout stay; the caches start afresh, so that a reload
    reads the database again."""
    s = policy.settings
    kept = {(c.database, c.timeout): c for c in (previous.owned if previous else ())
            if isinstance(c, Connection)}
    tables = {}
    for name, spec in policy.tables.sql.items():
        slot = (spec.database, s.sql_timeout)
        connection = kept.setdefault(slot, Connection(spec.database, s.sql_timeout))
        tables[name] = SqlTable(spec, connection, functools.partial(parse_row, name),
                                s.sql_cache_ttl, s.sql_cache_size)
    return tables


def _resolver(policy: Policy, given: Services, previous: Live | None) -> Resolver | None:
    """The resolver, and with it its cache, is reused while the DNS settings stay."""
    if given.dns is not None or not policy.uses_dns:
        return given.dns
    old = previous.dns if previous is not None else None
    if isinstance(old, DnsResolver) and old.config == policy.dns_config:
        return old
    return DnsResolver(policy.dns_config, metrics=given.metrics)
