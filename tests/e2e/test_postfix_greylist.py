"""Greylisting through real Postfix instances, with two MX hosts sharing one real Redis:
a first attempt gets the catalogue's 4xx, a retry too early the same, a retry after the
delay is delivered once, and a retry through the other MX is not greylisted again."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from tests.conftest import copy_rules
from tests.e2e.conftest import Pair
from tests.e2e.test_postfix_envelope import command, expect, marker, message, remote
from tests.support.postfix import PostfixInstance
from tests.support.redis import RedisServer

DELAY = 2.0


def attempt(postfix: PostfixInstance, sender: str, tag: str, addr: str) -> tuple[int, bytes]:
    """One delivery attempt from ``addr``: the RCPT reply, and the message sent after it
    when it passed."""
    with remote(postfix, addr=addr) as s:
        assert command(s, f"MAIL FROM:<{sender}>")[0] == 250
        answer = command(s, "RCPT TO:<postmaster@example.com>")
        if answer[0] == 250:
            assert s.data(message(tag, sender=sender))[0] == 250
        return answer


def test_greylisting_through_two_mx_hosts(fresh_pair: Callable[..., Pair], tmp_path: Path,
                                          redis_server: RedisServer) -> None:
    rules = copy_rules(tmp_path / "rules", greylist="yes", greylist_delay=f"{DELAY:.0f}s",
                       state=redis_server.url)
    first_mx, second_mx = fresh_pair(rules=rules), fresh_pair(rules=rules)

    tag = marker()
    seen = time.monotonic()
    expect(attempt(first_mx.postfix, "a@sender.example", tag, "192.0.2.40"), "greylisted")
    expect(attempt(first_mx.postfix, "a@sender.example", tag, "192.0.2.40"), "greylisted")
    line = first_mx.milter.wait_for_log("check=greylist", event="decision")
    assert "may pass from" in line and "192.0.2.0/24" in line
    time.sleep(max(0.0, seen + DELAY + 0.2 - time.monotonic()))
    assert attempt(first_mx.postfix, "a@sender.example", tag, "192.0.2.41")[0] == 250
    assert len(first_mx.postfix.deliveries_of(tag)) == 1

    other = marker()
    seen = time.monotonic()
    expect(attempt(first_mx.postfix, "b@sender.example", other, "192.0.2.40"), "greylisted")
    time.sleep(max(0.0, seen + DELAY + 0.2 - time.monotonic()))
    assert attempt(second_mx.postfix, "b@sender.example", other, "192.0.2.40")[0] == 250
    assert len(second_mx.postfix.deliveries_of(other)) == 1
    assert first_mx.postfix.deliveries_of(other) == []


def test_redis_down_tempfails_with_the_state_entry(fresh_pair: Callable[..., Pair],
                                                   tmp_path: Path,
                                                   redis_server: RedisServer) -> None:
    rules = copy_rules(tmp_path / "rules", greylist="yes", state=redis_server.url,
                       state_timeout="0.5")
    mx = fresh_pair(rules=rules)
    redis_server.pause()
    expect(attempt(mx.postfix, "c@sender.example", marker(), "192.0.2.40"), "state_tempfail")
    line = mx.milter.wait_for_log("service=redis", event="dependency_failure")
    assert "check=greylist" in line
