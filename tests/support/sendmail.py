"""A private Sendmail daemon on loopback, run from Debian's packages without installing them.

Debian's sendmail packages conflict with postfix, so they are never installed: their .debs
are fetched once with ``apt-get download`` into a cache directory and unpacked there with
``dpkg -x`` (see ``ensure_sendmail``).  Each ``SendmailInstance`` then builds a sendmail.cf
with m4 from an .mc that holds contrib/sendmail/policy-milter.mc verbatim (only the milter
socket path is replaced) and runs ``sendmail -bD`` in a private mount namespace whose
/etc/hosts, /etc/nsswitch.conf and /etc/resolv.conf are the instance's own (files only,
nameserver 127.0.0.1): Sendmail resolves nothing off this machine, listens on 127.0.0.1
only, and relays what it accepts to an ``SmtpSink`` on another loopback port.

Anything missing (a download that fails, a shared library, a mount namespace) raises a
``SendmailUnavailable`` that says what to do: the tests never skip silently.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import signal
import smtplib
import socket
import socketserver
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import REPO

PACKAGES = ("sendmail-bin", "sendmail-base", "sendmail-cf", "m4", "liblockfile1", "libwrap0")
CACHE = Path(os.environ.get("POLICY_MILTER_SENDMAIL_CACHE",
                            "/var/cache/policy-milter-tests/sendmail"))
CONTRIB_MC = REPO / "contrib" / "sendmail" / "policy-milter.mc"
CONTRIB_SOCKET = "unix:/run/policy-milter/milter.sock"
# The shared libraries sendmail links from the system (sendmail-bin's other Depends).
SYSTEM_LIBRARIES = "libdb5.3 libldap-2.5-0 libnsl2 libsasl2-2 libssl3"


class SendmailUnavailable(RuntimeError):
    """Something Sendmail needs is missing; the message says what to do."""


# --- the binaries -------------------------------------------------------------

@dataclass(frozen=True)
class SendmailTree:
    """The unpacked packages."""

    root: Path

    @property
    def sendmail(self) -> Path:
        return self.root / "usr/libexec/sendmail/sendmail"

    @property
    def m4(self) -> Path:
        return self.root / "usr/bin/m4"

    @property
    def cf_dir(self) -> Path:
        return self.root / "usr/share/sendmail/cf"

    @property
    def library_path(self) -> str:
        return ":".join(str(p.parent) for p in sorted(self.root.glob("usr/lib/*/libwrap.so.0")))


def _run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    except FileNotFoundError:
        raise SendmailUnavailable(f"{cmd[0]} is needed to unpack Sendmail (a Debian machine)") from None


def download(debs: Path) -> None:
    """``apt-get download`` the packages into ``debs`` (the Debian mirror only)."""
    debs.mkdir(parents=True, exist_ok=True)
    cmd = ["apt-get", "download", *PACKAGES]
    result = _run(cmd, cwd=debs)
    if result.returncode != 0 and "Unable to locate package" in result.stderr:
        _run(["apt-get", "update", "-qq"])  # a fresh machine without package lists
        result = _run(cmd, cwd=debs)
    if result.returncode != 0:
        raise SendmailUnavailable(
            f"could not download Sendmail's packages: `cd {debs} && {' '.join(cmd)}` "
            f"failed ({result.returncode}):\n{result.stderr.strip()}\n"
            "The e2e Sendmail tests need the Debian mirror for this one download, or the "
            f".debs put in {debs} by hand.")


def ensure_sendmail(cache: Path = CACHE) -> SendmailTree:
    """The unpacked Sendmail, downloaded and unpacked into ``cache`` on first use."""
    cache.mkdir(parents=True, exist_ok=True)
    tree = SendmailTree(cache / "root")
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel test runs unpack once
        if not (cache / "root" / ".complete").exists():
            debs = cache / "debs"
            if not all(list(debs.glob(f"{p}_*.deb")) for p in PACKAGES):
                download(debs)
            staging = cache / "root.new"
            shutil.rmtree(staging, ignore_errors=True)
            for p in PACKAGES:
                deb = sorted(debs.glob(f"{p}_*.deb"))[-1]
                result = _run(["dpkg", "-x", str(deb), str(staging)])
                if result.returncode != 0:
                    raise SendmailUnavailable(f"dpkg -x {deb} failed: {result.stderr}")
            # The loader ignores LD_LIBRARY_PATH (the unpacked libwrap0) for a setgid binary.
            binary = SendmailTree(staging).sendmail
            binary.chmod(binary.stat().st_mode & ~0o6000)
            (staging / ".complete").write_text(" ".join(PACKAGES) + "\n")
            shutil.rmtree(cache / "root", ignore_errors=True)
            staging.rename(cache / "root")
    for path in (tree.sendmail, tree.m4, tree.cf_dir / "m4" / "cf.m4"):
        if not path.exists():
            raise SendmailUnavailable(f"{path} is missing: remove {cache} to unpack again")
    if shutil.which("ldd"):
        ldd = subprocess.run(["ldd", str(tree.sendmail)], capture_output=True, text=True,
                             env={**os.environ, "LD_LIBRARY_PATH": tree.library_path})
        missing = re.findall(r"^\s*(\S+) => not found", ldd.stdout, re.M)
        if missing:
            raise SendmailUnavailable(
                f"sendmail needs shared libraries that are not installed: {', '.join(missing)}"
                f" (Debian: apt-get install {SYSTEM_LIBRARIES})")
    return tree


# --- a loopback SMTP sink -------------------------------------------------------

@dataclass
class Received:
    sender: str
    recipients: list[str]
    data: bytes

    def header(self, name: str) -> list[str]:
        """Every value of header field ``name`` (unfolded)."""
        head = self.data.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
        head = re.sub(r"\r\n[ \t]+", " ", head)
        prefix = name.lower() + ":"
        return [line.split(":", 1)[1].strip() for line in head.split("\r\n")
                if line.lower().startswith(prefix)]


class _SinkHandler(socketserver.StreamRequestHandler):
    server: _SinkServer

    def reply(self, line: str) -> None:
        self.wfile.write(line.encode() + b"\r\n")
        self.wfile.flush()

    def handle(self) -> None:
        self.reply("220 sink.test ESMTP test sink")
        sender, rcpts = "", []
        while line := self.rfile.readline():
            command = line.decode("utf-8", "replace").rstrip("\r\n")
            verb = command[:4].upper()
            if verb in ("EHLO", "HELO"):
                self.reply("250 sink.test")
            elif verb == "MAIL":
                sender, rcpts = command.split(":", 1)[1].strip(), []
                self.reply("250 2.1.0 Ok")
            elif verb == "RCPT":
                rcpts.append(command.split(":", 1)[1].strip())
                self.reply("250 2.1.5 Ok")
            elif verb == "DATA":
                self.reply("354 End data with <CR><LF>.<CR><LF>")
                lines = []
                while (chunk := self.rfile.readline()) not in (b".\r\n", b".\n", b""):
                    lines.append(chunk[1:] if chunk.startswith(b"..") else chunk)
                self.server.sink.add(Received(sender, rcpts, b"".join(lines)))
                self.reply("250 2.0.0 Ok: queued")
            elif verb == "QUIT":
                self.reply("221 2.0.0 Bye")
                return
            else:  # RSET, NOOP and anything else
                self.reply("250 2.0.0 Ok")


class _SinkServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    sink: SmtpSink


class SmtpSink:
    """An SMTP server on 127.0.0.1 that keeps every message it is given."""

    def __init__(self) -> None:
        self.messages: list[Received] = []
        self._cond = threading.Condition()
        self._server = _SinkServer(("127.0.0.1", 0), _SinkHandler)
        self._server.sink = self
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def add(self, message: Received) -> None:
        with self._cond:
            self.messages.append(message)
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[Received], bool],
                 timeout: float = 15) -> list[Received]:
        """The messages that match ``predicate``, once there is at least one."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not (found := [m for m in self.messages if predicate(m)]):
                left = deadline - time.monotonic()
                if left <= 0:
                    ids = [m.header("Message-ID") for m in self.messages]
                    raise AssertionError(f"no such message reached the sink; it has {ids}")
                self._cond.wait(left)
            return found

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


# --- the daemon ------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def contrib_mc(milter_socket: str) -> str:
    """contrib/sendmail/policy-milter.mc as an admin would paste it, our socket in place."""
    text = CONTRIB_MC.read_text(encoding="utf-8")
    spec = f"S={CONTRIB_SOCKET},"
    if text.count(spec) != 1:
        raise AssertionError(f"{CONTRIB_MC} no longer has {spec!r} exactly once")
    return text.replace(spec, f"S={milter_socket},")


# The test site around the contrib lines: everything under the work directory, DNS off,
# the listener on 127.0.0.1 only, and all mail relayed to the sink.
SITE_MC = """\
divert(-1)
Site configuration of a policy-milter test instance.  Paths, ports, the sink.
divert(0)dnl
VERSIONID(`policy-milter tests')dnl
OSTYPE(`linux')dnl
define(`confDONT_BLAME_SENDMAIL', `TrustStickyBit')dnl files under /tmp
define(`QUEUE_DIR', `{dir}/queue')dnl
define(`confPID_FILE', `{dir}/sendmail.pid')dnl
define(`ALIAS_FILE', `{dir}/aliases')dnl
define(`STATUS_FILE', `{dir}/statistics')dnl
define(`confHELP_FILE', `{dir}/helpfile')dnl
define(`confCW_FILE', `{dir}/local-host-names')dnl
define(`confCR_FILE', `-o {dir}/relay-domains')dnl
define(`confCT_FILE', `-o {dir}/trusted-users')dnl
define(`confHOST_STATUS_DIRECTORY', `{dir}/host_status')dnl
define(`confDEAD_LETTER_DROP', `{dir}/dead.letter')dnl
define(`confSERVICE_SWITCH_FILE', `{dir}/service.switch')dnl hosts and aliases: files only
define(`confDONT_PROBE_INTERFACES', `True')dnl no lookups of the machine's other addresses
define(`confDOMAIN_NAME', `sendmail.test')dnl
define(`confDELIVERY_MODE', `interactive')dnl
define(`confALLOW_BOGUS_HELO', `True')dnl leave HELO syntax to the milter
define(`confTO_ICONNECT', `5s')dnl
define(`confTO_IDENT', `0')dnl no ident (RFC 1413) call back to the client
define(`confTO_CONNECT', `5s')dnl
define(`SMART_HOST', `relay:[127.0.0.1]')dnl
define(`RELAY_MAILER_ARGS', `TCP $h {sink_port}')dnl the sink's port
FEATURE(`no_default_msa')dnl no listener on port 587
FEATURE(`nocanonify')dnl
FEATURE(`accept_unresolvable_domains')dnl no DNS here: let the milter judge senders
FEATURE(`accept_unqualified_senders')dnl
DAEMON_OPTIONS(`Port={port}, Addr=127.0.0.1, Family=inet, Name={daemon_name}')dnl
"""
MAILERS_MC = "MAILER(`local')dnl\nMAILER(`smtp')dnl\n"


class SendmailInstance:
    """``sendmail -bD`` on 127.0.0.1:``port``, wired to ``milter_socket``, relaying to a sink.

    ``start()`` builds the configuration and waits for the greeting; ``stop()`` ends the
    daemon and every process it started (by their process ids).
    """

    def __init__(self, workdir: Path, milter_socket: str, *, daemon_name: str = "MTA",
                 tree: SendmailTree | None = None) -> None:
        self.workdir = workdir
        self.milter_socket = milter_socket
        self.daemon_name = daemon_name
        self.tree = tree or ensure_sendmail()
        self.sink = SmtpSink()
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.cf = workdir / "sendmail.cf"
        self.traffic = workdir / "traffic.log"  # sendmail -X: every SMTP line, both ways
        self.output = workdir / "sendmail.out"

    # configuration
    def mc_text(self) -> str:
        site = SITE_MC.format(dir=self.workdir, port=self.port, sink_port=self.sink.port,
                              daemon_name=self.daemon_name)
        return site + contrib_mc(self.milter_socket) + MAILERS_MC

    def _write_files(self) -> None:
        w = self.workdir
        w.mkdir(parents=True, exist_ok=True)
        etc = w / "etc"
        etc.mkdir(exist_ok=True)
        host = socket.gethostname().split(".")[0] or "localhost"
        (etc / "hosts").write_text(
            "127.0.0.1\tlocalhost\n"
            f"127.0.0.1\t{host}.sendmail.test {host}\n")
        (etc / "nsswitch.conf").write_text(
            "passwd: files\ngroup: files\nshadow: files\nhosts: files\n"
            "networks: files\nservices: files\nprotocols: files\n")
        (etc / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
        (w / "service.switch").write_text("hosts files\naliases files\n")
        queue = w / "queue"
        queue.mkdir(exist_ok=True)
        queue.chmod(0o700)
        (w / "host_status").mkdir(exist_ok=True)
        for name in ("local-host-names", "relay-domains", "trusted-users", "statistics"):
            (w / name).write_text("")
        (w / "aliases").write_text("postmaster: root\n")
        shutil.copy(self.tree.root / "etc/mail/helpfile", w / "helpfile")
        mc = w / "sendmail.mc"
        mc.write_text(self.mc_text())
        built = subprocess.run(
            [str(self.tree.m4), f"-D_CF_DIR_={self.tree.cf_dir}/",
             str(self.tree.cf_dir / "m4" / "cf.m4"), str(mc)],
            capture_output=True, text=True, cwd=w)
        if built.returncode != 0 or "ERROR" in built.stderr:
            raise SendmailUnavailable(f"m4 could not build {self.cf}:\n{built.stderr}")
        self.cf.write_text(built.stdout)
        self.cf.chmod(0o644)
        # newaliases: builds aliases.db so that Sendmail finds an up-to-date alias file.
        # Like every sendmail run, inside the namespace: it looks up its own name first.
        subprocess.run(self._namespace_cmd(str(self.tree.sendmail), "-bi", "-C", str(self.cf)),
                       capture_output=True, timeout=30, cwd=w)

    def _env_cmd(self, *cmd: str) -> list[str]:
        return ["env", f"LD_LIBRARY_PATH={self.tree.library_path}", *cmd]

    def _namespace_cmd(self, *cmd: str) -> list[str]:
        """``cmd`` in a private mount namespace with the instance's /etc files."""
        binds = " && ".join(
            f"mount --bind {self.workdir}/etc/{name} /etc/{name}"
            for name in ("hosts", "nsswitch.conf", "resolv.conf"))
        # An nscd would answer host lookups from outside the namespace: hide its socket.
        nscd = "if [ -d /run/nscd ]; then mount -t tmpfs tmpfs /run/nscd; fi"
        script = f"set -e; {binds}; {nscd}; exec \"$@\""
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script,
                "sendmail-ns", *self._env_cmd(*cmd)]

    # process
    def start(self, timeout: float = 20) -> SendmailInstance:
        for name in ("hosts", "nsswitch.conf", "resolv.conf"):
            if not Path("/etc", name).exists():
                raise SendmailUnavailable(f"/etc/{name} does not exist: nothing to bind over")
        if shutil.which("unshare") is None:
            raise SendmailUnavailable("unshare (util-linux) is needed to start Sendmail")
        self._write_files()
        cmd = self._namespace_cmd(str(self.tree.sendmail), "-bD", "-C", str(self.cf),
                                  "-X", str(self.traffic))
        out = open(self.output, "wb")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,
                                     stderr=subprocess.STDOUT, cwd=self.workdir,
                                     start_new_session=True)
        out.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SendmailUnavailable(
                    f"sendmail exited {self.proc.returncode} at start:\n{self.diagnostics()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as probe:
                    if probe.recv(512).startswith(b"220"):
                        return self
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise SendmailUnavailable(f"sendmail never greeted on 127.0.0.1:{self.port}:\n"
                                  f"{self.diagnostics()}")

    def diagnostics(self) -> str:
        parts = []
        for path in (self.output, self.traffic):
            if path.exists():
                parts.append(f"--- {path.name}\n" + path.read_text("utf-8", "replace")[-4000:])
        return "\n".join(parts)

    def _session_pids(self) -> list[int]:
        """Processes in the daemon's session: itself and the children serving clients."""
        assert self.proc is not None
        pids = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[3]) == self.proc.pid:  # field 6, the session id
                pids.append(int(stat.parent.name))
        return pids

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=10)
            for pid in self._session_pids():  # children still serving a client
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.sink.close()

    # clients
    def smtp(self, helo: str | None = "mx.sender.example") -> smtplib.SMTP:
        """An SMTP session to the daemon, greeted with EHLO ``helo`` unless None."""
        client = smtplib.SMTP("127.0.0.1", self.port, timeout=30)
        if helo is not None:
            code, text = client.ehlo(helo)
            if code != 250:
                client.close()
                raise AssertionError(f"EHLO {helo}: {code} {text!r}")
        return client


@contextmanager
def running(workdir: Path, milter_socket: str,
            daemon_name: str = "MTA") -> Iterator[SendmailInstance]:
    """A started ``SendmailInstance``, stopped (with its sink) at the end."""
    instance = SendmailInstance(workdir, milter_socket, daemon_name=daemon_name)
    try:
        yield instance.start()
    finally:
        instance.stop()


