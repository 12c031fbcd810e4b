"""The baseline: a pymilter milter that accepts everything and does nothing else.

    nullmilter.py SOCKET CALLBACKS [NOREPLY]

CALLBACKS and NOREPLY are comma lists of stage names (connect, helo, mail, rcpt,
data, header, body, eom, unknown): it negotiates exactly those callbacks, the ones
in NOREPLY without replies, so that it costs what policy-milter's protocol costs
with the same negotiation and nothing for policy.
"""

from __future__ import annotations

import os
import sys

import Milter

BITS = {
    "connect": (Milter.P_NOCONNECT, Milter.P_NR_CONN),
    "helo": (Milter.P_NOHELO, Milter.P_NR_HELO),
    "mail": (Milter.P_NOMAIL, Milter.P_NR_MAIL),
    "rcpt": (Milter.P_NORCPT, Milter.P_NR_RCPT),
    "data": (Milter.P_NODATA, Milter.P_NR_DATA),
    "unknown": (Milter.P_NOUNKNOWN, Milter.P_NR_UNKN),
    "header": (Milter.P_NOHDRS, Milter.P_NR_HDR),
    "eoh": (Milter.P_NOEOH, Milter.P_NR_EOH),
    "body": (Milter.P_NOBODY, Milter.P_NR_BODY),
}


class NullMilter(Milter.Base):
    callbacks: frozenset[str] = frozenset()
    noreply: frozenset[str] = frozenset()

    def negotiate(self, opts: list[int]) -> int:
        wanted = 0
        for stage, (no_bit, no_reply_bit) in BITS.items():
            if stage not in self.callbacks:
                wanted |= no_bit
            elif stage in self.noreply:
                wanted |= no_reply_bit
        self._protocol = opts[1] & wanted
        opts[0], opts[1], opts[2], opts[3] = 0, self._protocol, 0, 0
        return Milter.CONTINUE

    def _pass(self, stage: str) -> int:
        return Milter.NOREPLY if self._protocol & BITS[stage][1] else Milter.CONTINUE

    def connect(self, hostname, family, hostaddr):  # type: ignore[no-untyped-def]
        return self._pass("connect")

    def hello(self, name):  # type: ignore[no-untyped-def]
        return self._pass("helo")

    def envfrom(self, sender, *params):  # type: ignore[no-untyped-def]
        return self._pass("mail")

    def envrcpt(self, recipient, *params):  # type: ignore[no-untyped-def]
        return self._pass("rcpt")

    def data(self):  # type: ignore[no-untyped-def]
        return self._pass("data")

    def unknown(self, command):  # type: ignore[no-untyped-def]
        return self._pass("unknown")

    def header(self, name, value):  # type: ignore[no-untyped-def]
        return self._pass("header")

    def body(self, chunk):  # type: ignore[no-untyped-def]
        return self._pass("body")

    def eom(self):  # type: ignore[no-untyped-def]
        return Milter.CONTINUE


def main() -> None:
    socket, callbacks = sys.argv[1], sys.argv[2]
    NullMilter.callbacks = frozenset(filter(None, callbacks.split(",")))
    NullMilter.noreply = frozenset(filter(None, (sys.argv[3] if len(sys.argv) > 3 else "")
                                          .split(",")))
    Milter.factory = NullMilter
    os.umask(0o111)  # a unix socket Postfix (not root) may connect to
    Milter.runmilter("nullmilter", socket, 600)


if __name__ == "__main__":
    main()
