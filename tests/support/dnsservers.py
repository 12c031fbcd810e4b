"""DNS servers on 127.0.0.1 for tests and benchmarks.

``FakeDns`` produces what real servers will not do on demand (delays, SERVFAIL, REFUSED, silence,
garbage); ``Rbldnsd`` and ``Dnsmasq`` run the real Debian daemons so DNSBL and reverse-DNS code
meets their exact answers. Every server binds a free loopback port and nothing here sends traffic
anywhere else, so tests never touch the system resolver.
"""

from __future__ import annotations

import heapq
import ipaddress
import itertools
import selectors
import socket
import threading
import time
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Self

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.CNAME
import dns.reversename
import dns.rrset
from dns.name import Name
from dns.rdatatype import RdataType

from tests.support.daemon import LOOPBACK, Daemon, bind_pair, free_port

__all__ = ["Dnsmasq", "FakeDns", "Rbldnsd", "free_port"]

GARBAGE = b"not a DNS message at all"


def _text(name: str | Name) -> str:
    """How ``FakeDns.queries`` spells a name: lowercase, no trailing dot."""
    if isinstance(name, str):
        return name.lower().rstrip(".")
    return name.to_text(omit_final_dot=True).lower()


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _rdatas(rdtype: RdataType, values: Sequence[str]) -> tuple[dns.rdata.Rdata, ...]:
    """Rdata from presentation text; a TXT value is one string unless it is already quoted."""
    if rdtype == dns.rdatatype.TXT:
        values = [v if v.startswith('"') else _quote(v) for v in values]
    return tuple(
        dns.rdata.from_text(dns.rdataclass.IN, rdtype, v, origin=dns.name.root, relativize=False)
        for v in values
    )


def _soa(zone: Name, ttl: int) -> dns.rrset.RRset:
    """A negative-answer SOA; resolvers cache the negative answer for min(ttl, minimum) = ttl."""
    rdata = f"ns.fake.invalid. hostmaster.fake.invalid. 1 3600 600 86400 {ttl}"
    return dns.rrset.from_text(zone, ttl, "IN", "SOA", rdata)


def _parent(name: Name) -> Name:
    return name if name == dns.name.root else name.parent()


@dataclass(frozen=True)
class _Rule:
    """How FakeDns answers a name (or a name and type): an rcode with records, or misbehaviour."""

    rcode: dns.rcode.Rcode = dns.rcode.NOERROR
    rdatas: tuple[dns.rdata.Rdata, ...] = ()
    ttl: int = 300
    soa_ttl: int | None = 60
    delay: float = 0.0
    behaviour: str = "answer"  # "answer", "drop" (never reply), "garbage" (non-DNS bytes)


_UNKNOWN = _Rule(rcode=dns.rcode.NXDOMAIN)


class FakeDns:
    """An authoritative-style DNS server of our own on UDP and TCP, answering set rules.

    A query is answered at once from the serving thread; a delayed UDP answer is queued for a
    sender thread, so slow answers never hold up others (benchmarks fire many parallel queries),
    and each TCP connection has a thread of its own. Unknown names get NXDOMAIN with an SOA. A
    name given records or NODATA exists: its other types get NODATA with an SOA. The last rule set
    for a name (and type) wins. UDP answers too big for the client's buffer are truncated (TC), so
    a resolver retries over TCP.
    """

    def __init__(self) -> None:
        self.port = 0
        self.queries: list[tuple[str, str]] = []
        self._names: dict[Name, dict[RdataType | None, _Rule]] = {}
        self._zones: dict[Name, tuple[RdataType, _Rule]] = {}
        self._lock = threading.Lock()
        self._conns: dict[socket.socket, threading.Thread] = {}
        self._stopped = threading.Event()
        self._due: list[tuple[float, int, bytes, object]] = []  # (when, seq, reply, address)
        self._due_cv = threading.Condition()
        self._seq = itertools.count()
        self._socks: tuple[socket.socket, ...] = ()
        self._threads: tuple[threading.Thread, ...] = ()

    # --- rules ------------------------------------------------------------------------------

    def add(self, name: str, rdtype: str, *values: str, ttl: int = 300, delay: float = 0.0) -> None:
        """Answer ``name``/``rdtype`` with ``values`` (presentation format) after ``delay`` s.

        A CNAME answers every type and is followed to records held here for the asked type.
        """
        if not values:
            raise ValueError("add() needs at least one value; use nodata() for an empty answer")
        t = dns.rdatatype.from_text(rdtype)
        self._set(name, t, _Rule(rdatas=_rdatas(t, values), ttl=ttl, delay=delay))

    def nxdomain(self, name: str, *, soa_ttl: int | None = 60) -> None:
        """NXDOMAIN for every type, with an SOA (ttl = minimum = soa_ttl) or, for None, none."""
        self._set(name, None, _Rule(rcode=dns.rcode.NXDOMAIN, soa_ttl=soa_ttl))

    def nodata(self, name: str, rdtype: str, *, soa_ttl: int | None = 60) -> None:
        """NOERROR with no records for this type, with or without an SOA as for ``nxdomain``."""
        self._set(name, dns.rdatatype.from_text(rdtype), _Rule(soa_ttl=soa_ttl))

    def servfail(self, name: str) -> None:
        self._set(name, None, _Rule(rcode=dns.rcode.SERVFAIL, soa_ttl=None))

    def refuse(self, name: str) -> None:
        self._set(name, None, _Rule(rcode=dns.rcode.REFUSED, soa_ttl=None))

    def drop(self, name: str) -> None:
        """Never answer, so the client times out."""
        self._set(name, None, _Rule(behaviour="drop"))

    def garbage(self, name: str) -> None:
        """Answer with bytes that do not parse as DNS."""
        self._set(name, None, _Rule(behaviour="garbage"))

    def zone_delay(
        self, suffix: str, delay: float, *values: str, rdtype: str = "A", ttl: int = 300
    ) -> None:
        """Answer every name under ``suffix`` after ``delay``: ``values`` for ``rdtype``, NODATA
        for other types, NXDOMAIN when no values are given (an unlisted address in a slow DNSBL).

        Rules for exact names take precedence; the longest matching suffix wins.
        """
        t = dns.rdatatype.from_text(rdtype)
        rcode = dns.rcode.NOERROR if values else dns.rcode.NXDOMAIN
        rule = _Rule(rcode=rcode, rdatas=_rdatas(t, values), ttl=ttl, delay=delay)
        with self._lock:
            self._zones[dns.name.from_text(suffix)] = (t, rule)

    def _set(self, name: str, rdtype: RdataType | None, rule: _Rule) -> None:
        """Store a rule; a rule for every type replaces the name's typed rules and vice versa."""
        key = dns.name.from_text(name)
        with self._lock:
            if rdtype is None:
                self._names[key] = {None: rule}
            else:
                rules = self._names.setdefault(key, {})
                rules.pop(None, None)
                rules[rdtype] = rule

    def _rule(self, qname: Name, qtype: RdataType) -> tuple[_Rule, Name]:
        """The rule answering qname/qtype, and the owner for a negative answer's SOA."""
        with self._lock:
            rules = self._names.get(qname)
            if rules is not None:
                cname = rules.get(dns.rdatatype.CNAME)
                return rules.get(None) or rules.get(qtype) or cname or _Rule(), _parent(qname)
            zone = max((z for z in self._zones if qname.is_subdomain(z)), key=len, default=None)
            if zone is None:
                return _UNKNOWN, _parent(qname)
            rdtype, rule = self._zones[zone]
            if rdtype != qtype and rule.rdatas:
                rule = replace(rule, rdatas=())
            return rule, zone

    # --- queries seen -----------------------------------------------------------------------

    def count(self, name: str | None = None, suffix: str | None = None) -> int:
        """Queries received for exactly ``name``, or for ``suffix`` and names under it, or all."""
        with self._lock:
            seen = [q for q, _ in self.queries]
        if name is not None:
            return seen.count(_text(name))
        if suffix is not None:
            s = _text(suffix)
            return sum(1 for q in seen if q == s or q.endswith("." + s))
        return len(seen)

    def reset_counts(self) -> None:
        with self._lock:
            self.queries.clear()

    # --- answering --------------------------------------------------------------------------

    def _reply(self, wire: bytes, udp: bool) -> tuple[bytes | None, float]:
        """The reply to one query (None: stay silent) and how long to wait before sending it."""
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None, 0.0
        if not query.question:
            return None, 0.0
        q = query.question[0]
        with self._lock:
            self.queries.append((_text(q.name), dns.rdatatype.to_text(q.rdtype)))
        rule, zone = self._rule(q.name, q.rdtype)
        if rule.behaviour == "drop":
            return None, 0.0
        if rule.behaviour == "garbage":
            return GARBAGE, rule.delay
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        response.set_rcode(rule.rcode)
        if rule.rdatas:
            response.answer = self._chain(q.name, q.rdtype, rule)
        elif rule.soa_ttl is not None:
            response.authority.append(_soa(zone, rule.soa_ttl))
        size = (response.request_payload or 512) if udp else 65535
        try:
            return response.to_wire(max_size=size), rule.delay
        except dns.exception.TooBig:  # TC and no records: the client asks again over TCP
            response.answer, response.authority = [], []
            response.flags |= dns.flags.TC
            return response.to_wire(), rule.delay

    def _chain(self, qname: Name, qtype: RdataType, rule: _Rule) -> list[dns.rrset.RRset]:
        """The answer records, following CNAMEs to records held here as authoritative servers do."""
        answer = []
        name = qname
        for _ in range(8):
            answer.append(dns.rrset.from_rdata_list(name, rule.ttl, rule.rdatas))
            first = rule.rdatas[0]
            if not isinstance(first, dns.rdtypes.ANY.CNAME.CNAME) or qtype == dns.rdatatype.CNAME:
                break
            name = first.target
            rule, _ = self._rule(name, qtype)
            if rule.behaviour != "answer" or not rule.rdatas:
                break
        return answer

    def _serve(self, udp: socket.socket, tcp: socket.socket, wake: socket.socket) -> None:
        with selectors.DefaultSelector() as sel:
            for sock in (udp, tcp, wake):
                sel.register(sock, selectors.EVENT_READ)
            while True:
                for key, _ in sel.select():
                    if key.fileobj is wake:
                        return
                    if key.fileobj is tcp:
                        conn, _ = tcp.accept()
                        thread = threading.Thread(target=self._serve_tcp, args=(conn,), daemon=True)
                        with self._lock:
                            self._conns[conn] = thread
                        thread.start()
                        continue
                    wire, addr = udp.recvfrom(65535)
                    reply, delay = self._reply(wire, udp=True)
                    if reply is None:
                        continue
                    if delay:
                        with self._due_cv:
                            due = (time.monotonic() + delay, next(self._seq), reply, addr)
                            heapq.heappush(self._due, due)
                            self._due_cv.notify()
                    else:
                        self._send(udp, reply, addr)

    def _send_due(self, udp: socket.socket) -> None:
        """Send delayed UDP answers when due: one thread however many wait, so none are late."""
        with self._due_cv:
            while not self._stopped.is_set():
                now = time.monotonic()
                while self._due and self._due[0][0] <= now:
                    _, _, reply, addr = heapq.heappop(self._due)
                    self._send(udp, reply, addr)
                self._due_cv.wait(self._due[0][0] - now if self._due else None)

    @staticmethod
    def _send(udp: socket.socket, reply: bytes, addr: object) -> None:
        try:
            udp.sendto(reply, addr)
        except OSError:  # the client's port is gone; a UDP client just times out
            pass

    def _serve_tcp(self, conn: socket.socket) -> None:
        try:
            with conn:
                while header := _recv_exact(conn, 2):
                    wire = _recv_exact(conn, int.from_bytes(header, "big"))
                    if wire is None:
                        return
                    reply, delay = self._reply(wire, udp=False)
                    if self._stopped.wait(delay):
                        return
                    if reply is None:  # drop: hold the connection silently until stop()
                        self._stopped.wait()
                        return
                    conn.sendall(len(reply).to_bytes(2, "big") + reply)
        except OSError:  # client went away, or stop() shut the connection down
            pass
        finally:
            with self._lock:
                self._conns.pop(conn, None)

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> Self:
        udp, tcp = bind_pair()
        udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)  # bursts of parallel queries
        tcp.listen(64)
        wake_r, wake_w = socket.socketpair()
        self.port = udp.getsockname()[1]
        self._socks = (udp, tcp, wake_r, wake_w)
        self._stopped.clear()
        self._threads = (
            threading.Thread(target=self._serve, args=(udp, tcp, wake_r), daemon=True),
            threading.Thread(target=self._send_due, args=(udp,), daemon=True),
        )
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        """Stop answering; pending delayed answers are never sent and held connections close."""
        if not self._threads:
            return
        self._stopped.set()
        self._socks[3].send(b"x")
        with self._due_cv:
            self._due.clear()
            self._due_cv.notify()
        for thread in self._threads:
            thread.join(5)
        self._threads = ()
        with self._lock:
            conns = list(self._conns.items())
        for conn, thread in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            thread.join(5)
        for sock in self._socks:
            sock.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _recv_exact(conn: socket.socket, n: int) -> bytes | None:
    """Exactly n bytes from a TCP stream, or None at its end."""
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


class _DnsDaemon(Daemon):
    """A real DNS daemon: ready once every probe query is answered."""

    start_timeout = 10.0

    @abstractmethod
    def _probes(self) -> list[tuple[str, str]]:
        """Queries that get NOERROR or NXDOMAIN once everything is loaded."""

    def _ready(self) -> bool:
        return all(self._answers(name, rdtype) for name, rdtype in self._probes())

    def _answers(self, name: str, rdtype: str) -> bool:
        query = dns.message.make_query(name, rdtype)
        try:
            r = dns.query.udp(query, LOOPBACK, port=self.port, timeout=0.2)
        except (dns.exception.DNSException, OSError):
            return False
        return r.rcode() in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN)


class Rbldnsd(_DnsDaemon):
    """The real rbldnsd serving DNSBL/RHSBL zones, so lookups meet its exact answers.

    ``zones`` maps a zone to (dataset type such as 'ip4set' or 'dnset', file content); the files
    are written to ``workdir`` as ``ZONE.TYPE``. rbldnsd chroots into ``workdir`` and reads them as
    user rbldns, so ``workdir`` is made world-readable. A zone whose file does not load answers
    SERVFAIL, which start() reports as an error.
    """

    binary = "rbldnsd"
    package = "rbldnsd"

    def __init__(self, workdir: Path, zones: dict[str, tuple[str, str]], ttl: int = 60) -> None:
        super().__init__(workdir)
        self.zones = zones
        self.ttl = ttl

    def _configure(self) -> None:
        self.workdir.chmod(0o755)
        for zone, (dataset, content) in self.zones.items():
            path = self.workdir / f"{zone}.{dataset}"
            path.write_text(content)
            path.chmod(0o644)

    def _command(self, binary: str) -> list[str]:
        specs = [f"{zone}:{dataset}:{zone}.{dataset}" for zone, (dataset, _) in self.zones.items()]
        return [binary, "-n", "-q", "-u", "rbldns", "-r", str(self.workdir),
                "-b", f"{LOOPBACK}/{self.port}", "-t", str(self.ttl), *specs]  # fmt: skip

    def _probes(self) -> list[tuple[str, str]]:
        return [(f"probe.{zone}", "A") for zone in self.zones]


def _reverse_name(name_or_ip: str) -> str:
    try:
        ipaddress.ip_address(name_or_ip)
    except ValueError:
        return name_or_ip
    return dns.reversename.from_address(name_or_ip).to_text(omit_final_dot=True)


class Dnsmasq(_DnsDaemon):
    """The real dnsmasq serving A/AAAA records with their PTRs, for reverse-DNS tests.

    ``host_records`` (name, ip) give A or AAAA plus the matching PTR; ``ptr_records`` (reverse name
    or ip, name) give a PTR alone. It has no upstream: names it does not hold under
    ``local_domains``, in-addr.arpa and ip6.arpa get NXDOMAIN, any other name REFUSED. ``ttl`` is
    its --local-ttl (dnsmasq's own default, 0, would defeat any cache).  ``forward`` maps zones
    to loopback ports it passes their queries to (DNS lists served by rbldnsd), so that one
    resolver address serves a whole test, as a site's own resolver would.  ``txt_records``
    (name, text) give TXT records: SPF policies (a comma in text starts a second string).
    """

    binary = "dnsmasq"
    package = "dnsmasq-base"

    def __init__(
        self,
        workdir: Path,
        host_records: Sequence[tuple[str, str]] = (),
        ptr_records: Sequence[tuple[str, str]] = (),
        local_domains: tuple[str, ...] = ("test",),
        ttl: int = 60,
        forward: dict[str, int] | None = None,
        txt_records: Sequence[tuple[str, str]] = (),
    ) -> None:
        super().__init__(workdir)
        self.forward = forward or {}
        self.txt_records = txt_records
        self.host_records = host_records
        self.ptr_records = ptr_records
        self.local_domains = local_domains
        self.ttl = ttl

    def _command(self, binary: str) -> list[str]:
        return [
            binary, "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
            f"--port={self.port}", f"--listen-address={LOOPBACK}", "--bind-interfaces",
            "--log-facility=-", f"--pid-file={self.workdir / 'dnsmasq.pid'}",
            f"--local-ttl={self.ttl}",
            *(f"--local=/{d}/" for d in (*self.local_domains, "in-addr.arpa", "ip6.arpa")),
            *(f"--host-record={name},{ip}" for name, ip in self.host_records),
            *(f"--ptr-record={_reverse_name(rev)},{name}" for rev, name in self.ptr_records),
            *(f"--txt-record={name},{text}" for name, text in self.txt_records),
            *(f"--server=/{zone}/{LOOPBACK}#{port}" for zone, port in self.forward.items()),
        ]  # fmt: skip

    def _probes(self) -> list[tuple[str, str]]:
        return [("dnsmasq-ready.in-addr.arpa", "PTR")]
