"""Services live as long as a plan uses them: reused across reloads while their settings
stay, closed once the last session of the rules that replaced them has ended."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from policy_milter.engine import Engine
from policy_milter.rules.policy import load
from policy_milter.services import DependencyError, Services
from policy_milter.services.challenges import SqliteChallengeStore
from policy_milter.services.dns import DnsResolver
from tests.support.redis import RedisServer

DNS = dict(rdns="required", dns_nameservers="127.0.0.1", dns_port="9")


def shut(resolver: object) -> bool:
    assert isinstance(resolver, DnsResolver)
    return resolver._pool._shutdown  # type: ignore[attr-defined]


def test_a_replaced_resolver_is_shut_down_after_its_last_session(
        make_rules: Callable[..., Path]) -> None:
    engine = Engine(load(make_rules(**DNS)))
    first = engine.plan.live.dns
    session = engine.session()
    engine.reload(load(make_rules(dns_timeout="2", **DNS)))
    second = engine.plan.live.dns
    assert second is not first
    assert not shut(first)  # the open session may still look something up
    session.close()
    assert shut(first) and not shut(second)
    assert engine.open_sessions == 0


def test_unchanged_settings_keep_the_resolver_and_its_cache(
        make_rules: Callable[..., Path]) -> None:
    engine = Engine(load(make_rules(**DNS)))
    resolver = engine.plan.live.dns
    engine.reload(load(make_rules(max_recipients="7", **DNS)))
    engine.reload(load(make_rules(max_recipients="8", **DNS)))
    assert engine.plan.live.dns is resolver and not shut(resolver)
    engine.close()
    assert shut(resolver)


def test_a_resolver_shared_with_a_live_plan_stays_open(make_rules: Callable[..., Path]) -> None:
    """Rules 1 and 2 share a resolver; rules 3 have another.  Rules 1 ending while a
    session of rules 2 is open must not close the resolver rules 2 still uses."""
    engine = Engine(load(make_rules(**DNS)))
    one = engine.session()
    engine.reload(load(make_rules(max_recipients="7", **DNS)))
    two = engine.session()
    shared = engine.plan.live.dns
    engine.reload(load(make_rules(dns_timeout="2", **DNS)))
    one.close()
    assert not shut(shared)
    two.close()
    assert shut(shared)


def test_a_challenge_store_follows_its_directory(make_rules: Callable[..., Path],
                                                 tmp_path: Path) -> None:
    def rules(directory: str, **more: str) -> Path:
        return make_rules(challenge_store=str(tmp_path / directory),
                          challenge_address="challenge@example.com", **more)

    engine = Engine(load(rules("a")))
    store = engine.plan.live.challenges
    engine.reload(load(rules("a", max_recipients="7")))
    assert engine.plan.live.challenges is store
    engine.reload(load(rules("b")))
    assert engine.plan.live.challenges is not store and store is not None
    with pytest.raises(DependencyError, match="closed"):  # closed: it refuses every use
        store.allowed("x@example.com", "y@example.org")


def test_services_given_by_the_caller_are_never_closed(make_rules: Callable[..., Path]) -> None:
    given = DnsResolver(load(make_rules(**DNS)).dns_config)
    engine = Engine(load(make_rules(**DNS)), Services(dns=given))
    engine.reload(load(make_rules(dns_timeout="2", **DNS)))
    engine.close()
    assert not shut(given)
    given.close()


def test_the_challenge_allow_lists_are_shared_only_through_redis(
        make_rules: Callable[..., Path], tmp_path: Path, redis_server: RedisServer) -> None:
    def store(**state: str) -> object:
        engine = Engine(load(make_rules(challenge_store=str(tmp_path / "held"),
                                        challenge_address="challenge@example.com", **state)))
        challenges = engine.plan.live.challenges
        assert isinstance(challenges, SqliteChallengeStore)
        shared, live = challenges.shared, engine.plan.live.state
        engine.close()
        return shared is live if shared is not None else None

    assert store(state=redis_server.url) is True
    assert store(state_file=str(tmp_path / "state.sqlite3")) is None  # one host: no need
