"""Builds the services a policy names (state store, resolver, scanners, challenge store,
mailer) and closes them again.

A reload builds a new set next to the old one and keeps what did not change (the
resolver with its cache while the DNS settings stay, the challenge store while its
directory stays); whatever the new set does not keep is closed once the last session
that began under the old rules has ended.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ..rules.tables import parse_row
from . import DependencyError, Services
from .challenges import ChallengeStore, SqliteChallengeStore
from .clamd import Clamd, VirusScanner
from .dns import DnsResolver, Resolver
from .mailer import Mailer, SmtpMailer
from .spamd import Spamd, SpamScanner
from .spf import SenderCheck, Spf
from .sql import Connection, SqlTable
from .state import RedisServer, StateStore
from .state.memory import MemoryStore
from .state.sqlite import SqliteStore

if TYPE_CHECKING:
    from ..rules.policy import Policy


@runtime_checkable
class Closable(Protocol):
    def close(self) -> None:
        """Release connections, threads and files."""


STATE_FILE = "state.sqlite3"  # the embedded store's file in systemd's $STATE_DIRECTORY


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
    state: StateStore = field(default_factory=MemoryStore)
    state_config: tuple[str, ...] = ()  # what the state store was built from
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
    config = state_config(policy)
    state = given.state or (previous.state if previous is not None
                            and previous.state_config == config else open_state(policy))
    if isinstance(store, SqliteChallengeStore):  # allow lists on every host sharing Redis
        store.shared = state if state.across_hosts else None
    return Live(
        dns=dns,
        virus=given.virus or (Clamd(s.clamd, s.clamd_timeout, s.clamd_max_size)
                              if s.clamd else None),
        spam=given.spam or (Spamd(s.spamd, s.spamd_timeout, s.spamd_user) if s.spamd else None),
        challenges=store,
        mailer=given.mailer or (smtp_mailer(policy) if s.challenge_store else None),
        spf=given.spf or (Spf(policy.dns_config, s.dns_budget) if s.challenge_store else None),
        tables=tables,
        state=state,
        state_config=config,
        owned=tuple(x for x in (dns, store, state) if isinstance(x, Closable)
                    and all(x is not g for g in (given.dns, given.challenges, given.state)))
        + connections,
    )


def state_config(policy: Policy) -> tuple[str, ...]:
    """The settings a state store is built from: while they stay, a reload keeps it."""
    s = policy.settings
    return (s.state, s.state_file, str(s.state_timeout), s.state_prefix, s.state_password_file,
            os.environ.get("STATE_DIRECTORY", ""))


def state_path(policy: Policy) -> Path | None:
    """The embedded store's file: ``state_file``, else state.sqlite3 in the directory
    systemd's StateDirectory= gives (the unit's /var/lib/policy-milter), else None:
    memory only."""
    if policy.settings.state_file:
        return Path(policy.settings.state_file)
    directory = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(directory) / STATE_FILE if directory else None


def open_state(policy: Policy) -> StateStore:
    """The state store policy.conf names.  A password file that cannot be read is a
    DependencyError naming the setting (never the password)."""
    s = policy.settings
    if s.state == "embedded":
        path = state_path(policy)
        return MemoryStore() if path is None else SqliteStore(path, s.state_timeout)
    from .state.redis import RedisStore  # redis-py is needed only for a Redis store

    password = None
    if s.state_password_file:
        try:
            password = Path(s.state_password_file).read_text().strip()
        except OSError as err:
            raise DependencyError("redis", f"{policy.where['state_password_file']}: "
                                  f"cannot read the password: {err.strerror}") from None
    return RedisStore(RedisServer.parse(s.state), s.state_prefix, s.state_timeout, password)


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
