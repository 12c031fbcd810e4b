"""The resolver against a DNS server on loopback: outcomes, caching, de-duplication."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import Future, wait

import pytest

from policy_milter.services.dns import Answer, DnsConfig, DnsError, DnsResolver, collect
from tests.support.dnsservers import FakeDns


@pytest.fixture
def server() -> Iterator[FakeDns]:
    with FakeDns() as fake:
        yield fake


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def resolver(server: FakeDns, clock: Clock | None = None, **config: object) -> DnsResolver:
    settings: dict[str, object] = dict(nameservers=("127.0.0.1",), port=server.port, timeout=1.0)
    settings.update(config)
    return DnsResolver(DnsConfig(**settings), clock=clock or time.monotonic)  # type: ignore[arg-type]


def get(r: DnsResolver, name: str, rdtype: str = "A") -> tuple[str, ...]:
    return collect(r.submit(name, rdtype), time.monotonic() + 5).records


def test_records_found(server: FakeDns) -> None:
    server.add("mx.example.test", "A", "192.0.2.1", "192.0.2.2")
    server.add("1.2.0.192.in-addr.arpa", "PTR", "MX.Example.Test.")
    server.add("txt.example.test", "TXT", "Listed; see", "https://bl.test/")
    r = resolver(server)
    assert sorted(get(r, "mx.example.test")) == ["192.0.2.1", "192.0.2.2"]
    assert get(r, "1.2.0.192.in-addr.arpa", "PTR") == ("mx.example.test",)
    assert sorted(get(r, "txt.example.test", "TXT")) == ["Listed; see", "https://bl.test/"]


def test_positive_answers_are_cached_for_their_ttl(server: FakeDns) -> None:
    server.add("mx.example.test", "A", "192.0.2.1", ttl=60)
    clock = Clock()
    r = resolver(server, clock)
    get(r, "mx.example.test")
    get(r, "MX.example.test.")
    assert server.count("mx.example.test") == 1
    clock.now += 61
    get(r, "mx.example.test")
    assert server.count("mx.example.test") == 2


@pytest.mark.parametrize("ttl, kept", [(1, 5), (10**6, 86400)])
def test_ttls_are_clamped(server: FakeDns, ttl: int, kept: int) -> None:
    server.add("mx.example.test", "A", "192.0.2.1", ttl=ttl)
    clock = Clock()
    r = resolver(server, clock)
    get(r, "mx.example.test")
    clock.now += kept - 0.5
    get(r, "mx.example.test")
    assert server.count("mx.example.test") == 1
    clock.now += 1
    get(r, "mx.example.test")
    assert server.count("mx.example.test") == 2


@pytest.mark.parametrize("soa_ttl, kept", [(30, 30), (None, 300)])
def test_negative_answers_are_cached_for_the_soa_time(server: FakeDns, soa_ttl: int | None,
                                                     kept: int) -> None:
    server.nxdomain("2.0.0.127.bl.test", soa_ttl=soa_ttl)
    clock = Clock()
    r = resolver(server, clock)
    assert get(r, "2.0.0.127.bl.test") == ()
    clock.now += kept - 0.5
    assert get(r, "2.0.0.127.bl.test") == ()
    assert server.count("2.0.0.127.bl.test") == 1
    clock.now += 1
    get(r, "2.0.0.127.bl.test")
    assert server.count("2.0.0.127.bl.test") == 2


def test_no_data_is_a_negative_answer(server: FakeDns) -> None:
    server.nodata("mx.example.test", "AAAA")
    assert get(resolver(server), "mx.example.test", "AAAA") == ()


@pytest.mark.parametrize("fault", ["servfail", "refuse", "drop", "garbage"])
def test_failures_raise_and_are_never_cached(server: FakeDns, fault: str) -> None:
    getattr(server, fault)("broken.example.test")
    r = resolver(server, timeout=0.5)
    for _ in range(2):
        started = time.monotonic()
        with pytest.raises(DnsError) as info:
            get(r, "broken.example.test")
        assert time.monotonic() - started < 3
        assert info.value.entry == "dns_tempfail"
    assert server.count("broken.example.test") >= 2


def test_no_server_listening() -> None:
    with FakeDns() as fake:
        port = fake.port
    r = DnsResolver(DnsConfig(nameservers=("127.0.0.1",), port=port, timeout=0.5))
    with pytest.raises(DnsError):
        get(r, "mx.example.test")


def test_identical_lookups_in_flight_are_made_once(server: FakeDns) -> None:
    server.add("slow.example.test", "A", "192.0.2.1", delay=0.3)
    r = resolver(server)
    futures = [r.submit("slow.example.test", "A") for _ in range(50)]
    wait(futures, timeout=5)
    assert {f.result().records for f in futures} == {("192.0.2.1",)}
    assert server.count("slow.example.test") == 1


def test_lookups_run_in_parallel(server: FakeDns) -> None:
    for i in range(8):
        server.add(f"n{i}.example.test", "A", "192.0.2.1", delay=0.3)
    r = resolver(server)
    started = time.monotonic()
    futures = [r.submit(f"n{i}.example.test", "A") for i in range(8)]
    assert all(collect(f, started + 5).records for f in futures)
    assert time.monotonic() - started < 0.3 * 3  # eight in sequence would take 2.4 s


def test_collect_respects_the_deadline(server: FakeDns) -> None:
    server.add("slow.example.test", "A", "192.0.2.1", delay=1.0)
    r = resolver(server, timeout=3.0)
    started = time.monotonic()
    with pytest.raises(DnsError, match="budget"):
        collect(r.submit("slow.example.test", "A"), started + 0.2)
    assert time.monotonic() - started < 0.5


def test_a_failed_lookup_is_raised_afresh() -> None:
    """The error a shared future keeps never gets the frames of the sessions that asked
    for it: each gets an error of its own.  (Raising the kept one linked every failing
    session to the next through its traceback, and the milter process never freed them.)"""
    failed: Future[Answer] = Future()
    kept = DnsError("PTR 1.2.0.192.in-addr.arpa: SERVFAIL")
    failed.set_exception(kept)
    raised = []
    for _ in range(2):
        with pytest.raises(DnsError) as caught:
            collect(failed, time.monotonic() + 1)
        raised.append(caught.value)
    assert kept.__traceback__ is None
    assert raised[0] is not kept and raised[1] is not raised[0]
    assert str(raised[0]) == str(kept)


def test_closing_with_lookups_queued_is_quiet(server: FakeDns,
                                              caplog: pytest.LogCaptureFixture) -> None:
    """close() cancels what has not started (a reload, the end of policy-milter test); a
    cancelled lookup is neither cached nor reported as a failing callback."""
    server.add("slow.example.test", "A", "192.0.2.1", delay=0.5)
    r = DnsResolver(DnsConfig(("127.0.0.1",), server.port, 1.0), workers=1)
    running = r.submit("slow.example.test", "A")
    queued = r.submit("other.example.test", "A")
    r.close()
    wait([running], timeout=5)
    assert queued.cancelled()
    assert not [rec for rec in caplog.records if "exception calling callback" in rec.message]


def test_a_cached_answer_keeps_nothing_of_the_session_that_asked(server: FakeDns) -> None:
    """The cache holds the answer, not the lookup: the callbacks a session hung on the
    lookup (the rdns prefetch's, which hold its context) are not kept with it."""
    import gc
    import weakref

    class SessionState:
        pass

    server.add("mx.example.test", "A", "192.0.2.1", ttl=3600)
    r = resolver(server)
    state = SessionState()
    kept = weakref.ref(state)
    lookup = r.submit("mx.example.test", "A")
    lookup.add_done_callback(lambda _f, s=state: s)
    wait([lookup])
    del state, lookup
    assert get(r, "mx.example.test") == ("192.0.2.1",) and server.count("mx.example.test") == 1
    deadline = time.monotonic() + 5  # the resolver's own callback may still be running
    while kept() is not None and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.01)
    assert kept() is None
