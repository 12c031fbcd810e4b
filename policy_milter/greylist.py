"""Greylisting over the state store: triplets, their delay and window, allowed clients.

A (client network, sender, recipient) triplet seen for the first time is told to retry;
a retry after ``delay`` and within ``retry_window`` of the first attempt passes, and the
triplet is then remembered for ``expire`` after its last pass.  A client network whose
triplets pass ``auto_allow`` times within ``expire`` (at most MAX_PERIOD, 7 days: the
stores keep counts no longer) is allow-listed and no longer greylisted.  Every step is a
state-store entry, so several MX hosts on one Redis share them: a sender that retries
through another MX is not greylisted again.

Entries: ``greylist:triplet:NET<TAB>SENDER<TAB>RECIPIENT`` = ``pending FIRST`` or
``passed FIRST LAST``; ``greylist:client:NET`` = ``auto WHEN`` or ``admin WHEN``; the
pass counter is ``greylist:passes:NET``.  NET is always the client's network in the
greylist's prefix (``network``), whether the milter or the admin names it.  The admin's
``policy-milter greylist`` lists, allows and drops them (``admin`` below).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_network
from typing import TYPE_CHECKING

from . import patterns
from .addresses import client_ip
from .exitcodes import EXIT_RUNTIME, EXIT_USAGE
from .services.errors import DependencyError
from .services.factory import open_state
from .services.state import FOREVER, MAX_PERIOD, StateStore
from .services.state.memory import MemoryStore

if TYPE_CHECKING:
    from .rules.policy import Policy
    from .rules.settings import Settings

TRIPLET = "greylist:triplet:"
CLIENT = "greylist:client:"
PASSES = "greylist:passes:"
SEP = "\t"


def network(address: IPv4Address | IPv6Address, v4: int, v6: int) -> str:
    """The client's network as greylisting groups it (a pool of outgoing MTAs retries
    from a neighbour): ``/v4`` of IPv4, ``/v6`` of IPv6."""
    prefix = v4 if address.version == 4 else v6
    return str(ip_network(f"{address}/{prefix}", strict=False))


def stamp(when: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))


@dataclass(frozen=True)
class Verdict:
    passed: bool
    detail: str  # for the log: why, and when a waiting triplet may pass


class Greylist:
    """The greylist of one policy's settings on one state store."""

    def __init__(self, state: StateStore, settings: Settings) -> None:
        self.state = state
        self.delay = settings.greylist_delay
        self.window = settings.greylist_retry_window
        self.expire = settings.greylist_expire
        self.auto_allow = settings.greylist_auto_allow
        # Passes are counters, and no store keeps a count longer than MAX_PERIOD.
        self.auto_allow_window = min(self.expire, MAX_PERIOD)
        self.prefixes = settings.greylist_ipv4_prefix, settings.greylist_ipv6_prefix

    def network(self, client: IPv4Address | IPv6Address) -> str:
        return network(client, *self.prefixes)

    def check(self, client: IPv4Address | IPv6Address, sender: str, recipient: str,
              now: float | None = None) -> Verdict:
        now = time.time() if now is None else now
        net = self.network(client)
        allowed = self.state.get(CLIENT + net)
        if allowed is not None:
            return Verdict(True, f"client {net} allow-listed ({allowed.split()[0]})")
        key = TRIPLET + SEP.join((net, sender or "<>", recipient))
        pending = f"pending {now!r}"
        stored = self.state.add(key, pending, self.window)
        kind, first, *_ = stored.split()
        triplet = f"triplet {net} <{sender}> <{recipient}>"
        if kind == "passed":
            how = "passed before"
        else:
            may_pass = float(first) + self.delay
            if now < may_pass:
                # ``add`` returns the very string it was given when it stored it: an equal
                # one read back is another attempt's, made in the same instant.
                seen = "first seen" if stored is pending else f"first seen {stamp(float(first))}"
                return Verdict(False, f"{triplet} {seen}; may pass from {stamp(may_pass)} "
                                      f"(in {may_pass - now:.0f} s, until "
                                      f"{stamp(float(first) + self.window)})")
            how = f"retried after {now - float(first):.0f} s"
        self.state.put(key, f"passed {first} {now!r}", self.expire)
        self._passed(net, now)
        return Verdict(True, f"{triplet} {how}")

    def _passed(self, net: str, now: float) -> None:
        """Count the pass; a network that passes often is allow-listed."""
        if not self.auto_allow:
            return
        self.state.record(PASSES + net, 1)
        if self.state.total(PASSES + net, self.auto_allow_window) >= self.auto_allow:
            self.state.put(CLIENT + net, f"auto {now!r}", self.expire)

    def allow(self, client: str, now: float | None = None) -> str:
        """Allow-list a client (an address or a network), for good; its network."""
        net = self._parse(client)
        self.state.put(CLIENT + net, f"admin {time.time() if now is None else now!r}", FOREVER)
        return net

    def drop(self, client: str) -> int:
        """Forget a client network: its allow entry and its triplets (they are greylisted
        again); how many entries went."""
        net = self._parse(client)
        keys = [CLIENT + net] + [e.key for e in self.state.entries(TRIPLET + net + SEP)]
        return sum(self.state.delete(k) for k in keys)

    def lines(self) -> list[str]:
        """One line per allowed client and per triplet, for ``greylist list``."""
        out = []
        for e in self.state.entries(CLIENT):
            kind, when = e.value.split()
            out.append(f"client {e.key.removeprefix(CLIENT)} {kind} since {stamp(float(when))}"
                       f" until {stamp(e.expires) if e.expires else 'removed'}")
        for e in self.state.entries(TRIPLET):
            net, sender, recipient = e.key.removeprefix(TRIPLET).split(SEP)
            kind, first, *last = e.value.split()
            state = f"passed {stamp(float(last[0]))}" if last else \
                f"waiting, may pass from {stamp(float(first) + self.delay)}"
            out.append(f"triplet {net} <{sender}> <{recipient}> first {stamp(float(first))}"
                       f" {state}; kept until {stamp(e.expires)}")
        return out

    def _parse(self, client: str) -> str:
        """An address, or a block in the greylist's prefix, as the key ``check`` looks up:
        read as the milter reads a client (brackets dropped, IPv4-mapped IPv6 as IPv4).
        ValueError if it is neither, or a block of another prefix (it would never match)."""
        if "/" not in client:
            address = client_ip(client)
            if address is None:
                raise ValueError(f"'{client}' does not appear to be an IPv4 or IPv6 address "
                                 "or network")
            return self.network(address)
        block = patterns.network(client)  # a PatternError is a ValueError
        prefix = self.prefixes[0] if block.version == 4 else self.prefixes[1]
        if block.prefixlen != prefix:
            raise ValueError(f"'{client}' is a /{block.prefixlen}, but the greylist groups "
                             f"IPv{block.version} clients by /{prefix} "
                             f"(greylist_ipv{block.version}_prefix): give an address or a "
                             f"/{prefix} block")
        return self.network(block.network_address)




def admin(policy: Policy, action: str, client: str | None) -> int:
    """``policy-milter greylist list | allow CLIENT | drop CLIENT``, on the milter's own
    state store (Redis, or the embedded store's file); the milter may be running."""
    if action != "list" and not client:
        print(f"policy-milter: greylist {action} needs a client address or network",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        state = open_state(policy)
        if isinstance(state, MemoryStore):
            print("policy-milter: the embedded state store has no file (state_file is empty "
                  "and STATE_DIRECTORY unset): the milter keeps its greylist in its own memory; "
                  "set state_file in policy.conf", file=sys.stderr)
            return EXIT_USAGE
        greylist = Greylist(state, policy.settings)
        if action == "list":
            print("\n".join(greylist.lines()) or "the greylist is empty")
        elif action == "allow":
            print(f"allowed {greylist.allow(client or '')}")
        else:
            print(f"dropped {greylist.drop(client or '')} entr(y/ies) of {client}")
    except ValueError as err:
        print(f"policy-milter: {err}", file=sys.stderr)
        return EXIT_USAGE
    except DependencyError as err:
        print(f"policy-milter: {err}", file=sys.stderr)
        return EXIT_RUNTIME
    state.close()
    return 0
