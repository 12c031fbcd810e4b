"""Rate counters in a shared state store, through real milter processes: two milters on
one Redis count together, a Redis that goes away gets the failure action and is used
again when it returns, and the embedded store keeps its counts across a restart."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from policy_milter.mtaclient import Reply
from tests.milter.conftest import MilterProcess
from tests.support.redis import RedisServer
from tests.support.session import assert_reply

MESSAGE = b"From: dora@quota.example\r\nSubject: hello\r\n\r\nHello.\r\n"


def send_as_dora(milter: MilterProcess) -> Reply:
    """One message from the logged-in dora@quota.example (domain limit: 2 per hour): the
    reply that ended it, or the end of message's."""
    with milter.client() as client:
        assert client.connect("mx.sender.example", "192.0.2.30", 40000,
                              macros={"{daemon_name}": "smtpd"}).passed
        assert client.helo("mx.sender.example").passed
        assert client.mail("<dora@quota.example>", macros={"{auth_authen}": "dora"}).passed
        reply = client.rcpt("<postmaster@example.com>")
        if not reply.passed:
            return reply
        assert client.data().passed
        end = client.message(MESSAGE)
        return end if isinstance(end, Reply) else end.reply


def test_two_milters_on_one_redis_enforce_one_limit(
        fresh_milter: Callable[..., MilterProcess], make_rules: Callable[..., Path],
        redis_server: RedisServer) -> None:
    rules = make_rules(state=redis_server.url, state_prefix="two-milters:")
    first, second = fresh_milter(rules), fresh_milter(rules)
    assert send_as_dora(first).passed
    assert send_as_dora(second).passed
    assert_reply(send_as_dora(first), "account_limits")  # 2 sent in all: the limit
    assert_reply(send_as_dora(second), "account_limits")
    assert redis_server.command("EXISTS", "two-milters:domain:quota.example:messages") == ":1"


def test_redis_stopped_and_started_again(fresh_milter: Callable[..., MilterProcess],
                                         make_rules: Callable[..., Path],
                                         redis_server: RedisServer) -> None:
    milter = fresh_milter(make_rules(state=redis_server.url, state_timeout="0.5"))
    assert send_as_dora(milter).passed
    redis_server.pause()
    started = time.monotonic()
    assert_reply(send_as_dora(milter), "state_tempfail")
    assert time.monotonic() - started < 3
    line = milter.wait_for_log("service=redis", event="dependency_failure")
    assert "check=limits" in line and "action=tempfail" in line
    redis_server.resume()  # empty: the counts of before are gone with it
    time.sleep(1.1)  # the store tries again a second after a failure
    assert send_as_dora(milter).passed
    assert send_as_dora(milter).passed
    assert_reply(send_as_dora(milter), "account_limits")


def test_the_embedded_store_keeps_counts_across_a_restart(
        fresh_milter: Callable[..., MilterProcess], make_rules: Callable[..., Path],
        tmp_path: Path) -> None:
    rules = make_rules(state_file=str(tmp_path / "state" / "state.sqlite3"))
    milter = fresh_milter(rules)
    assert send_as_dora(milter).passed
    assert send_as_dora(milter).passed
    assert milter.stop() == 0
    again = fresh_milter(rules)
    assert_reply(send_as_dora(again), "account_limits")


def test_a_redis_away_at_start_is_named_and_the_milter_serves(
        fresh_milter: Callable[..., MilterProcess], make_rules: Callable[..., Path],
        redis_server: RedisServer) -> None:
    redis_server.pause()
    milter = fresh_milter(make_rules(state=redis_server.url, state_timeout="0.5"))
    line = milter.wait_for_log("service=redis", event="unreachable")
    assert f"address=\"127.0.0.1:{redis_server.port} db 0\"" in line
    assert_reply(send_as_dora(milter), "state_tempfail")
