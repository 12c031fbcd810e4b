"""The loopback DNS servers that tests and benchmarks rely on answer as documented."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.resolver
import dns.reversename
import pytest

from tests.support.dnsservers import Dnsmasq, FakeDns, Rbldnsd, free_port


def resolver(port: int, lifetime: float = 2.0) -> dns.resolver.Resolver:
    """A resolver that asks only our server: never the system resolver."""
    r = dns.resolver.Resolver(configure=False)
    r.nameservers = ["127.0.0.1"]
    r.port = port
    r.lifetime = lifetime
    return r


def raw(port: int, name: str, rdtype: str = "A", timeout: float = 2.0) -> dns.message.Message:
    """The server's whole response, for what a resolver hides (rcode, authority section)."""
    query = dns.message.make_query(name, rdtype)
    return dns.query.udp(query, "127.0.0.1", port=port, timeout=timeout)


def texts(answer: dns.resolver.Answer) -> list[str]:
    return sorted(r.to_text() for r in answer)


@pytest.fixture
def fake() -> Iterator[FakeDns]:
    with FakeDns() as server:
        yield server


def test_free_port_is_bindable_for_udp_and_tcp() -> None:
    port = free_port()
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind(("127.0.0.1", port))


# --- FakeDns -----------------------------------------------------------------------------------


def test_fake_answers_records_with_their_ttl(fake: FakeDns) -> None:
    fake.add("mx.example.test", "A", "192.0.2.1", "192.0.2.2", ttl=42)
    fake.add("mx.example.test", "AAAA", "2001:db8::1")
    fake.add("1.2.0.192.in-addr.arpa", "PTR", "mx.example.test")
    fake.add("txt.example.test", "TXT", "v=spf1 -all")
    r = resolver(fake.port)
    answer = r.resolve("MX.example.test", "A")
    assert texts(answer) == ["192.0.2.1", "192.0.2.2"]
    assert answer.rrset is not None and answer.rrset.ttl == 42
    assert texts(r.resolve("mx.example.test", "AAAA")) == ["2001:db8::1"]
    assert texts(r.resolve_address("192.0.2.1")) == ["mx.example.test."]
    assert texts(r.resolve("txt.example.test", "TXT")) == ['"v=spf1 -all"']


def test_fake_follows_a_cname_it_holds(fake: FakeDns) -> None:
    fake.add("alias.example.test", "CNAME", "mx.example.test")
    fake.add("mx.example.test", "A", "192.0.2.1")
    answer = resolver(fake.port).resolve("alias.example.test", "A")
    assert texts(answer) == ["192.0.2.1"]
    assert answer.canonical_name.to_text() == "mx.example.test."


def test_fake_unknown_name_is_nxdomain_with_soa(fake: FakeDns) -> None:
    with pytest.raises(dns.resolver.NXDOMAIN):
        resolver(fake.port).resolve("nobody.example.test", "A")
    response = raw(fake.port, "nobody.example.test")
    assert response.rcode() == dns.rcode.NXDOMAIN
    assert [rr.rdtype for rr in response.authority] == [dns.rdatatype.SOA]


@pytest.mark.parametrize("soa_ttl", [17, None])
def test_fake_nxdomain_with_and_without_soa(fake: FakeDns, soa_ttl: int | None) -> None:
    fake.nxdomain("gone.example.test", soa_ttl=soa_ttl)
    with pytest.raises(dns.resolver.NXDOMAIN):
        resolver(fake.port).resolve("gone.example.test", "A")
    response = raw(fake.port, "gone.example.test", "MX")
    assert response.rcode() == dns.rcode.NXDOMAIN
    if soa_ttl is None:
        assert response.authority == []
    else:
        (soa,) = response.authority
        assert soa.ttl == soa_ttl and soa[0].minimum == soa_ttl


def test_fake_nodata_explicit_and_for_other_types(fake: FakeDns) -> None:
    fake.nodata("empty.example.test", "A", soa_ttl=None)
    fake.add("v4only.example.test", "A", "192.0.2.1")
    r = resolver(fake.port)
    for name, rdtype in [("empty.example.test", "A"), ("v4only.example.test", "AAAA")]:
        with pytest.raises(dns.resolver.NoAnswer):
            r.resolve(name, rdtype)
    empty = raw(fake.port, "empty.example.test")
    assert empty.rcode() == dns.rcode.NOERROR and empty.answer == [] and empty.authority == []
    assert [rr.rdtype for rr in raw(fake.port, "v4only.example.test", "AAAA").authority] == [
        dns.rdatatype.SOA
    ]


@pytest.mark.parametrize(
    ("method", "rcode"), [("servfail", dns.rcode.SERVFAIL), ("refuse", dns.rcode.REFUSED)]
)
def test_fake_servfail_and_refused(fake: FakeDns, method: str, rcode: dns.rcode.Rcode) -> None:
    getattr(fake, method)("broken.example.test")
    assert raw(fake.port, "broken.example.test").rcode() == rcode
    with pytest.raises(dns.resolver.NoNameservers):
        resolver(fake.port).resolve("broken.example.test", "A")


def test_fake_drop_times_out(fake: FakeDns) -> None:
    fake.drop("silent.example.test")
    started = time.monotonic()
    with pytest.raises(dns.resolver.LifetimeTimeout):
        resolver(fake.port, lifetime=0.5).resolve("silent.example.test", "A")
    assert time.monotonic() - started >= 0.5
    query = dns.message.make_query("silent.example.test", "A")
    with pytest.raises(dns.exception.Timeout):
        dns.query.tcp(query, "127.0.0.1", port=fake.port, timeout=0.3)


def test_fake_garbage_fails_to_parse_and_the_resolver_ignores_it(fake: FakeDns) -> None:
    fake.garbage("junk.example.test")
    # dnspython before 2.4 (Debian 12 has 2.3) reads its opcode as a ValueError
    with pytest.raises((dns.exception.DNSException, ValueError)) as raised:
        raw(fake.port, "junk.example.test")
    assert not isinstance(raised.value, dns.exception.Timeout)
    # dnspython's Resolver drops unparsable datagrams (spoofing defence) and waits: a timeout.
    with pytest.raises(dns.resolver.LifetimeTimeout):
        resolver(fake.port, lifetime=0.5).resolve("junk.example.test", "A")


def test_fake_delay_holds_one_answer_without_blocking_others(fake: FakeDns) -> None:
    fake.add("slow1.example.test", "A", "192.0.2.1", delay=0.3)
    fake.add("slow2.example.test", "A", "192.0.2.2", delay=0.3)
    fake.add("fast.example.test", "A", "192.0.2.3")
    r = resolver(fake.port)
    started = time.monotonic()
    r.resolve("slow1.example.test", "A")
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    with ThreadPoolExecutor(3) as pool:
        slow = [pool.submit(r.resolve, f"slow{i}.example.test", "A") for i in (1, 2)]
        fast = pool.submit(r.resolve, "fast.example.test", "A")
        assert texts(fast.result()) == ["192.0.2.3"]
        assert time.monotonic() - started < 0.25
        assert [texts(f.result()) for f in slow] == [["192.0.2.1"], ["192.0.2.2"]]
    assert 0.3 <= time.monotonic() - started < 0.6


def test_fake_zone_delay_answers_every_name_in_the_zone(fake: FakeDns) -> None:
    fake.zone_delay("slow.bl.test", 0.2, "127.0.0.2")
    fake.zone_delay("clean.bl.test", 0.2)
    fake.nxdomain("1.2.0.192.slow.bl.test")
    r = resolver(fake.port)
    names = [f"{i}.2.0.192.slow.bl.test" for i in range(2, 22)]
    started = time.monotonic()
    with ThreadPoolExecutor(len(names)) as pool:
        answers = list(pool.map(lambda n: texts(r.resolve(n, "A")), names))
    assert answers == [["127.0.0.2"]] * len(names)
    assert 0.2 <= time.monotonic() - started < 0.6
    with pytest.raises(dns.resolver.NoAnswer):
        r.resolve("2.2.0.192.slow.bl.test", "TXT")
    with pytest.raises(dns.resolver.NXDOMAIN):
        r.resolve("2.2.0.192.clean.bl.test", "A")
    started = time.monotonic()
    with pytest.raises(dns.resolver.NXDOMAIN):
        r.resolve("1.2.0.192.slow.bl.test", "A")
    assert time.monotonic() - started < 0.2


def test_fake_counts_queries(fake: FakeDns) -> None:
    fake.zone_delay("bl.test", 0.0, "127.0.0.2")
    r = resolver(fake.port)
    for name in ["2.2.0.192.bl.test", "2.2.0.192.BL.test.", "3.2.0.192.bl.test"]:
        r.resolve(name, "A")
    with pytest.raises(dns.resolver.NXDOMAIN):
        r.resolve("other.test", "A")
    assert fake.queries[:2] == [("2.2.0.192.bl.test", "A")] * 2
    assert fake.count("2.2.0.192.bl.test") == 2
    assert fake.count(suffix="bl.test") == 3
    assert fake.count() == 4
    fake.reset_counts()
    assert fake.count() == 0 and fake.queries == []


def test_fake_truncates_big_udp_answers_and_serves_tcp(fake: FakeDns) -> None:
    chunks = [f"{i}" * 200 for i in range(4)]
    fake.add("big.example.test", "TXT", *chunks)
    assert raw(fake.port, "big.example.test", "TXT").flags & dns.flags.TC
    answer = resolver(fake.port).resolve("big.example.test", "TXT")
    assert sorted(r.strings[0].decode() for r in answer) == chunks
    assert fake.queries == [("big.example.test", "TXT")] * 3  # raw UDP, resolver UDP, resolver TCP


def test_fake_stop_is_prompt_idempotent_and_frees_the_port() -> None:
    server = FakeDns().start()
    server.add("held.example.test", "A", "192.0.2.1", delay=5)
    query = dns.message.make_query("held.example.test", "A").to_wire(prepend_length=True)
    with socket.create_connection(("127.0.0.1", server.port)) as held:
        held.sendall(query)
        time.sleep(0.1)
        started = time.monotonic()
        server.stop()
        server.stop()
        assert time.monotonic() - started < 1
        assert held.recv(100) == b""  # closed without an answer
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # its side is in TIME_WAIT
            s.bind(("127.0.0.1", server.port))


# --- rbldnsd -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rbldnsd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rbldnsd]:
    zones = {
        "bl.test": (
            "ip4set",
            ":127.0.0.2:Listed $\n192.0.2.0/24\n198.51.100.7 :127.0.0.4:Other $\n",
        ),
        "dbl.test": ("dnset", ":127.0.1.2:Domain $ listed\nbad.example\n"),
    }
    with Rbldnsd(tmp_path_factory.mktemp("rbldnsd"), zones) as server:
        yield server


def test_rbldnsd_lists_an_ip4set_range_with_a_and_txt(rbldnsd: Rbldnsd) -> None:
    r = resolver(rbldnsd.port)
    answer = r.resolve("2.2.0.192.bl.test", "A")
    assert texts(answer) == ["127.0.0.2"]
    assert answer.rrset is not None and answer.rrset.ttl == 60
    assert texts(r.resolve("2.2.0.192.bl.test", "TXT")) == ['"Listed 192.0.2.2"']
    assert texts(r.resolve("7.100.51.198.bl.test", "A")) == ["127.0.0.4"]
    assert texts(r.resolve("7.100.51.198.bl.test", "TXT")) == ['"Other 198.51.100.7"']


def test_rbldnsd_negative_answers_carry_no_soa(rbldnsd: Rbldnsd) -> None:
    with pytest.raises(dns.resolver.NXDOMAIN):
        resolver(rbldnsd.port).resolve("1.0.0.10.bl.test", "A")
    response = raw(rbldnsd.port, "1.0.0.10.bl.test")
    assert response.rcode() == dns.rcode.NXDOMAIN and response.authority == []
    nodata = raw(rbldnsd.port, "2.2.0.192.bl.test", "AAAA")
    assert nodata.rcode() == dns.rcode.NOERROR and nodata.answer == [] and nodata.authority == []


def test_rbldnsd_dnset_lists_a_domain(rbldnsd: Rbldnsd) -> None:
    r = resolver(rbldnsd.port)
    assert texts(r.resolve("bad.example.dbl.test", "A")) == ["127.0.1.2"]
    assert texts(r.resolve("bad.example.dbl.test", "TXT")) == ['"Domain bad.example listed"']
    with pytest.raises(dns.resolver.NXDOMAIN):
        r.resolve("good.example.dbl.test", "A")


def test_rbldnsd_failure_raises_with_its_output(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="unknown dataset type"):
        Rbldnsd(tmp_path, {"bl.test": ("nosuchtype", "")}).start()


# --- dnsmasq -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dnsmasq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dnsmasq]:
    server = Dnsmasq(
        tmp_path_factory.mktemp("dnsmasq"),
        host_records=[("mail.example.test", "192.0.2.25"), ("v6.example.test", "2001:db8::25")],
        ptr_records=[("192.0.2.11", "forged.example.test"), ("12.2.0.192.in-addr.arpa", "x.test")],
    )
    with server:
        yield server


def test_dnsmasq_host_record_gives_a_and_ptr(dnsmasq: Dnsmasq) -> None:
    r = resolver(dnsmasq.port)
    answer = r.resolve("mail.example.test", "A")
    assert texts(answer) == ["192.0.2.25"]
    assert answer.rrset is not None and answer.rrset.ttl == 60
    assert texts(r.resolve_address("192.0.2.25")) == ["mail.example.test."]


def test_dnsmasq_ptr_only_records(dnsmasq: Dnsmasq) -> None:
    r = resolver(dnsmasq.port)
    assert texts(r.resolve_address("192.0.2.11")) == ["forged.example.test."]
    assert texts(r.resolve_address("192.0.2.12")) == ["x.test."]
    with pytest.raises(dns.resolver.NXDOMAIN):
        r.resolve("forged.example.test", "A")


def test_dnsmasq_unknown_names_are_nxdomain_without_soa(dnsmasq: Dnsmasq) -> None:
    r = resolver(dnsmasq.port)
    for name, rdtype in [("nobody.example.test", "A"), ("99.2.0.192.in-addr.arpa", "PTR")]:
        with pytest.raises(dns.resolver.NXDOMAIN):
            r.resolve(name, rdtype)
        assert raw(dnsmasq.port, name, rdtype).authority == []
    with pytest.raises(dns.resolver.NXDOMAIN):
        r.resolve_address("2001:db8::99")


def test_dnsmasq_ipv6_host_record_with_nibble_ptr(dnsmasq: Dnsmasq) -> None:
    r = resolver(dnsmasq.port)
    assert texts(r.resolve("v6.example.test", "AAAA")) == ["2001:db8::25"]
    reverse = dns.reversename.from_address("2001:db8::25")
    assert reverse.to_text().startswith("5.2.0.0.0.0.0.0")
    assert texts(r.resolve(reverse, "PTR")) == ["v6.example.test."]


def test_dnsmasq_never_forwards(dnsmasq: Dnsmasq) -> None:
    assert raw(dnsmasq.port, "www.example.com").rcode() == dns.rcode.REFUSED
