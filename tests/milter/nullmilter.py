"""A minimal real pymilter milter whose behaviour the mtaclient tests steer.

Usage: nullmilter.py SOCKET_SPEC LOG_PATH [--minimal]

Every callback appends one JSON line to LOG_PATH, so tests can check what the
milter process actually received.  The full milter negotiates NODATA
(@nocallback data), NR_HELO/NR_HDR/NR_UNKN (@noreply) and a connect macro list
(@symlist); it rejects or tempfails by address, accepts at end of headers on
"X-Accept: yes", rejects or SKIPs the body on marker strings and requests every
modification at eom on "X-Test-Mods: all".  --minimal declines every optional
step, so only eom should ever reach it.
"""

import json
import sys
import threading

import Milter

_log_lock = threading.Lock()
_log_path = ""


def log(event, **fields):
    with _log_lock, open(_log_path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"event": event, **fields}) + "\n")


class FullMilter(Milter.Base):
    def __init__(self):
        self.headers = []
        self.body_bytes = b""

    def negotiate(self, opts):
        log("negotiate", actions=opts[0], protocol=opts[1])
        return super().negotiate(opts)

    def setsymlist(self, stage, *macros):
        # pymilter 1.0.5's Base.setsymlist hands bytes to the C extension, which
        # wants str; the TypeError makes negotiate() fall back to ALL_OPTS, which
        # silently drops every @symlist, @noreply and @nocallback.
        return self._ctx.setsymlist(stage, " ".join(macros))

    @Milter.symlist("j", "{daemon_name}")
    def connect(self, hostname, family, hostaddr):
        log(
            "connect",
            hostname=hostname,
            hostaddr=list(hostaddr) if isinstance(hostaddr, tuple) else hostaddr,
            j=self.getsymval("j"),
            daemon_name=self.getsymval("{daemon_name}"),
            other=self.getsymval("{other}"),
        )
        return Milter.CONTINUE

    @Milter.noreply
    def hello(self, hostname):
        log("helo", name=hostname)
        return Milter.CONTINUE

    def envfrom(self, sender, *params):
        log("mail", sender=sender, params=list(params), auth=self.getsymval("{auth_authen}"))
        self.headers, self.body_bytes = [], b""
        if sender == "<tempfail@example.com>":
            self.setreply("451", "4.7.1", "Try again later")
            return Milter.TEMPFAIL
        return Milter.CONTINUE

    def envrcpt(self, rcpt, *params):
        log("rcpt", rcpt=rcpt, params=list(params))
        local = rcpt.strip("<>").split("@")[0]
        if local == "reject":
            self.setreply("550", "5.7.1", "No such user here, 100%% sure")
            return Milter.REJECT
        if local == "plainreject":
            return Milter.REJECT
        return Milter.CONTINUE

    @Milter.nocallback
    def data(self):
        log("data")  # must never be logged: NODATA was negotiated
        return Milter.CONTINUE

    @Milter.noreply
    def unknown(self, cmd):
        log("unknown", cmd=cmd)
        return Milter.CONTINUE

    @Milter.noreply
    def header(self, name, value):
        log("header", name=name, value=value)
        self.headers.append((name, value))
        return Milter.CONTINUE

    def eoh(self):
        log("eoh", x=self.getsymval("{x}"))
        if ("X-Accept", "yes") in self.headers:
            return Milter.ACCEPT
        return Milter.CONTINUE

    def body(self, chunk):
        log("body", size=len(chunk))
        self.body_bytes += chunk
        if b"REJECTBODY" in chunk:
            self.setreply("554", "5.7.1", "Body rejected")
            return Milter.REJECT
        if b"SKIPREST" in chunk:
            return Milter.SKIP
        return Milter.CONTINUE

    def eom(self):
        log(
            "eom",
            body=self.body_bytes.decode("utf-8", "surrogateescape"),
            i=self.getsymval("i"),
            data_macro=self.getsymval("{data_macro}"),
        )
        self.progress()
        self.addheader("X-Null-Milter", "%d headers" % len(self.headers))
        if ("X-Test-Mods", "all") in self.headers:
            self.addheader("X-Top", "first", 0)
            self.chgheader("Subject", 1, "changed")
            self.addrcpt("<new@example.com>")
            self.addrcpt("<par@example.com>", "NOTIFY=NEVER")
            self.delrcpt("<b@example.com>")
            self.chgfrom("<bounce@example.com>", "SIZE=1")
            self.quarantine("held for review")
            self.replacebody(b"r" * 70000)
        return Milter.CONTINUE

    def abort(self):
        log("abort")
        return Milter.CONTINUE

    def close(self):
        log("close")
        return Milter.CONTINUE


class MinimalMilter(Milter.Base):
    """Declines every optional step; the stubs log, so a step sent anyway shows up."""

    @Milter.nocallback
    def connect(self, hostname, family, hostaddr):
        log("connect")
        return Milter.CONTINUE

    @Milter.nocallback
    def hello(self, hostname):
        log("helo")
        return Milter.CONTINUE

    @Milter.nocallback
    def envfrom(self, sender, *params):
        log("mail")
        return Milter.CONTINUE

    @Milter.nocallback
    def envrcpt(self, rcpt, *params):
        log("rcpt")
        return Milter.CONTINUE

    @Milter.nocallback
    def data(self):
        log("data")
        return Milter.CONTINUE

    @Milter.nocallback
    def unknown(self, cmd):
        log("unknown")
        return Milter.CONTINUE

    @Milter.nocallback
    def header(self, name, value):
        log("header")
        return Milter.CONTINUE

    @Milter.nocallback
    def eoh(self):
        log("eoh")
        return Milter.CONTINUE

    @Milter.nocallback
    def body(self, chunk):
        log("body")
        return Milter.CONTINUE

    def eom(self):
        log("eom", data_macro=self.getsymval("{data_macro}"))
        return Milter.CONTINUE


def main():
    global _log_path
    spec, _log_path = sys.argv[1], sys.argv[2]
    Milter.factory = MinimalMilter if "--minimal" in sys.argv[3:] else FullMilter
    Milter.runmilter("nullmilter", spec, timeout=30)


if __name__ == "__main__":
    main()
