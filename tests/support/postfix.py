"""A private Postfix instance on 127.0.0.1, wired to a milter, for end-to-end tests.

``PostfixInstance`` builds a config directory of its own from ``contrib/postfix/main.cf`` and
``contrib/postfix/master.cf`` used verbatim: their lines are copied as they are, and only what a
test needs is appended or filled in (loopback ports for the service names, paths, the SASL
database, where mail is delivered).  The SMTP services run chrooted in the queue directory as
contrib's master.cf says, and reach the milter through contrib's own ``smtpd_milters =
unix:policy-milter/milter.sock``: the milter listens in ``milter_directory`` (the queue
directory's ``policy-milter``), as contrib/systemd runs it.  It runs as ``postfix -c DIR``
beside the system instance, which it never touches.

Of what lives outside the queue directory, smtpd needs in its chroot only the sasldb, read at
each AUTH (``SASLDB``, kept inside): its maps, the SASL configuration and plugins are opened
before it enters the chroot, it logs through postlogd's socket in the queue directory, and it
looks up no names here (numeric addresses, no DNS, no TLS).  The /etc files Debian's postfix
service copies into a system instance's chroot (resolv.conf, hosts, services, nsswitch.conf,
localtime) serve DNS, service names and the time zone of Received: dates: none is copied.

No parameter is set twice in main.cf: Postfix would warn "overriding earlier entry" from every
process, postconf run and ``postfix`` command, and those warnings go to postlogd over a unix
datagram socket whose queue (10 datagrams here) fills before the master has started postlogd,
so the master blocks for good in its first log call.  A test changes an smtpd setting of
contrib's with ``smtpd_options`` (``-o { name = value }`` on the services) instead.

Nothing leaves the machine: every listener is on a free loopback port, Postfix does no DNS
(``smtp_dns_support_level = disabled``, ``smtpd_peername_lookup = no``, an explicit
``myhostname``), and every accepted message is delivered by ``virtual(8)`` into one Maildir that
the test reads (``delivered()``), whatever its recipient's domain.  A remote client is simulated
with XCLIENT from 127.0.0.1.

A missing binary raises (naming the Debian package): a test never skips a component silently.
"""

from __future__ import annotations

import email
import email.policy
import grp
import os
import pwd
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Self

from tests.support.dnsservers import free_port

REPO = Path(__file__).resolve().parents[2]
CONTRIB = REPO / "contrib" / "postfix"
LOOPBACK = "127.0.0.1"
BINARIES = {  # binary -> Debian package
    "postfix": "postfix",
    "postconf": "postfix",
    "saslpasswd2": "sasl2-bin",
}
SASL_PLUGINS = {  # Cyrus SASL plugin -> Debian package
    "libsasldb.so": "libsasl2-modules-db",  # a dependency of libsasl2-2, hence of postfix
    "libplain.so": "libsasl2-modules",
    "liblogin.so": "libsasl2-modules",
}
SASL_PLUGIN_DIRS = ("/usr/lib/x86_64-linux-gnu/sasl2", "/usr/lib/aarch64-linux-gnu/sasl2",
                    "/usr/lib/sasl2")
SASL_REALM = "mx.test.example"

# The sasldb, relative to the queue directory: smtpd opens it at each AUTH, in its chroot
# there, and Cyrus looks at it before the chroot too, when the queue directory is smtpd's
# working directory.  Not in etc/: postfix-script warns of a file there that differs from the
# one of the same name in /etc (a chroot copy out of date).
SASLDB = "sasl/sasldb2"

# The services every Postfix needs besides contrib's SMTP listeners (Postfix's stock master.cf,
# minus relay/lmtp delivery and the pipe examples), every one of them without chroot.  virtual(8)
# delivers any recipient at all into the one Maildir: its static map is given to it alone, so
# smtpd still judges recipients by the site's own maps (``mailboxes``).  smtp(8) is there for a
# transport_maps of ``static:smtp:[127.0.0.1]:PORT`` (a loopback sink; no DNS for a literal).
BASE_MASTER_CF = """\
# service type  private unpriv  chroot  wakeup  maxproc command + args
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
virtual   unix  -       n       n       -       -       virtual
  -o virtual_mailbox_maps=static:Maildir/
smtp      unix  -       -       n       -       -       smtp
"""


def _binary(name: str) -> str:
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    found = shutil.which(name, path=path)
    if found is None:
        raise FileNotFoundError(f"{name} not installed (Debian package {BINARIES[name]})")
    return found


def _check_sasl_plugins() -> None:
    for plugin, package in SASL_PLUGINS.items():
        if not any(Path(d, plugin).exists() for d in SASL_PLUGIN_DIRS):
            raise FileNotFoundError(f"Cyrus SASL plugin {plugin} not installed "
                                    f"(Debian package {package})")


def _parameters(main_cf: str) -> list[str]:
    """The parameter names a main.cf sets."""
    return re.findall(r"(?m)^([A-Za-z0-9_]+)\s*=", main_cf)


def _master_services(text: str, ports: Mapping[str, int], options: Mapping[str, str]) -> str:
    """contrib's master.cf with each listener's service name made a loopback port, and
    ``options`` added as ``-o`` lines after the service's own.

    Only the first field (service) of a service line changes; comments, option lines and the
    rest of each line (its chroot column too) stay as they are.
    """
    out: list[str] = []
    seen: set[str] = set()
    service = re.compile(r"(\S+)(\s.*)")  # name, the rest
    own: set[str] = set()
    extra = [f"  -o {{ {name} = {value} }}" for name, value in options.items()]

    def close_service() -> None:
        if not seen:
            return
        if own & set(options):
            raise ValueError(f"contrib master.cf already sets {sorted(own & set(options))}")
        at = len(out)
        while at and (not out[at - 1].strip() or out[at - 1].startswith("#")):
            at -= 1  # after the service's last option line, before the comments that follow
        out[at:at] = extra

    for line in text.splitlines():
        m = service.fullmatch(line)
        if m and line[:1] not in ("#", " ", "\t"):
            close_service()
            name = m.group(1)
            if name not in ports:
                raise ValueError(f"contrib master.cf service {name!r} has no test port")
            seen.add(name)
            own = set()
            line = f"{LOOPBACK}:{ports[name]}{m.group(2)}"
        elif line[:1] in (" ", "\t"):
            own.update(re.findall(r"-o\s+\{?\s*([A-Za-z0-9_]+)\s*=", line))
        out.append(line)
    close_service()
    if seen != set(ports):
        raise ValueError(f"contrib master.cf lacks services {sorted(set(ports) - seen)}")
    return "\n".join(out) + "\n"


@dataclass
class Delivered:
    """One delivered copy: virtual(8) writes one file per recipient, with Delivered-To."""

    path: Path
    message: EmailMessage

    @property
    def recipient(self) -> str:
        return str(self.message["Delivered-To"])

    @property
    def sender(self) -> str:
        return str(self.message["Return-Path"]).strip("<>")


class PostfixInstance:
    """A private Postfix: ``smtpd`` (port 25's role) and ``submission`` on loopback ports.

    By default smtpd uses contrib's ``smtpd_milters`` as written: the milter must listen on
    ``milter_socket``, in ``milter_directory`` (which the postfix group may enter) inside the
    queue directory, the chroot.  ``milter_socket`` given is another milter socket spec, set
    with ``-o smtpd_milters`` on both SMTP services (a TCP one, a unix socket under the queue
    directory, or ``""`` for none).  ``users`` maps SASL logins to passwords, stored in a sasldb
    under ``SASL_REALM`` (which is also ``myhostname``).  ``mailboxes`` and ``relay_recipients``
    are what Postfix itself knows of the site's addresses (``virtual_mailbox_maps`` and
    ``relay_recipient_maps`` lines), ``local_domains`` and ``relay_domains`` its address
    classes.  ``extra_main_cf`` adds or replaces test values; ``smtpd_options`` go to both SMTP
    services as ``-o``, after contrib's own, and so do those ``extra_main_cf`` entries that
    contrib's main.cf sets (they then apply to smtpd only).
    """

    def __init__(
        self,
        workdir: Path,
        milter_socket: str | None = None,
        *,
        users: Mapping[str, str] | None = None,
        local_domains: Sequence[str] = (),
        mailboxes: Sequence[str] = (),
        relay_domains: Sequence[str] = (),
        relay_recipients: Sequence[str] = (),
        extra_main_cf: Mapping[str, str] | None = None,
        smtpd_options: Mapping[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.queue = workdir / "queue"
        self.milter_directory = self.queue / "policy-milter"
        self.milter_socket = (f"unix:{self.milter_directory / 'milter.sock'}"
                              if milter_socket is None else milter_socket)
        self.users = dict(users or {})
        self.local_domains = list(local_domains)
        self.mailboxes = list(mailboxes)
        self.relay_domains = list(relay_domains)
        self.relay_recipients = list(relay_recipients)
        # A contrib parameter in extra_main_cf becomes an smtpd option: never set twice.
        contrib = set(_parameters((CONTRIB / "main.cf").read_text()))
        extra = dict(extra_main_cf or {})
        self.extra_main_cf = {k: v for k, v in extra.items() if k not in contrib}
        own = {} if milter_socket is None else {"smtpd_milters": milter_socket}
        self.smtpd_options = {**own, **{k: v for k, v in extra.items() if k in contrib},
                              **(smtpd_options or {})}
        self.config = workdir / "etc"
        self.data = workdir / "data"
        self.mail = workdir / "mail"
        self.maildir = self.mail / "Maildir"
        self.maillog = workdir / "log" / "maillog"
        self.sasldb = self.queue / SASLDB
        self.ports: dict[str, int] = {}
        self._master_pid: int | None = None

    # --- configuration ----------------------------------------------------------------------

    def _main_cf(self) -> str:
        pf = pwd.getpwnam("postfix")
        w = self.workdir
        values = {
            "compatibility_level": "3.6",
            "config_directory": str(self.config),
            "queue_directory": str(self.queue),
            "data_directory": str(self.data),
            "maillog_file_prefixes": str(w),
            "maillog_file": str(self.maillog),
            # Loopback only, and no DNS: no name of our own to look up, no client name
            # lookups (XCLIENT supplies the client's name), no SMTP client DNS at all.
            "inet_interfaces": "loopback-only",
            "inet_protocols": "ipv4",
            "myhostname": SASL_REALM,
            "mydomain": "test.example",
            "myorigin": "$myhostname",
            "mydestination": "",
            "mynetworks": "127.0.0.0/8",
            "smtpd_peername_lookup": "no",
            "smtp_dns_support_level": "disabled",
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "biff": "no",
            "smtpd_authorized_xclient_hosts": "127.0.0.0/8",
            # What Postfix knows of the site: its own address classes and recipient maps, so
            # that contrib's settings are what lets the milter answer for unknown users.
            "virtual_mailbox_domains": ", ".join(self.local_domains),
            "virtual_mailbox_maps": f"texthash:{self.config / 'mailboxes'}",
            "relay_domains": ", ".join(self.relay_domains),
            "relay_recipient_maps": (f"texthash:{self.config / 'relay_recipients'}"
                                     if self.relay_recipients else ""),
            # Every accepted message, whatever its domain, goes to virtual(8) and the Maildir.
            "transport_maps": "static:virtual",
            "virtual_mailbox_base": str(self.mail),
            "virtual_uid_maps": f"static:{pf.pw_uid}",
            "virtual_gid_maps": f"static:{pf.pw_gid}",
            "virtual_minimum_uid": str(min(pf.pw_uid, 100)),
            # Cyrus SASL from $config_directory/sasl/smtpd.conf (Debian ignores
            # cyrus_sasl_config_path).  No local domain: Cyrus then looks a bare login up
            # under the server name Postfix gives it ($myhostname, SASL_REALM) and reports it
            # as it was typed, so {auth_authen} is the bare login ("alice").  With
            # smtpd_sasl_local_domain set it would be "alice@REALM".
            "smtpd_sasl_type": "cyrus",
            "smtpd_sasl_path": "smtpd",
            "smtpd_sasl_local_domain": "",
            "smtpd_tls_security_level": "none",
            "smtpd_tls_auth_only": "no",
            **self.extra_main_cf,
        }
        contrib = (CONTRIB / "main.cf").read_text()
        twice = set(values) & set(_parameters(contrib))
        if twice:
            raise ValueError(f"contrib/postfix/main.cf already sets {sorted(twice)}: "
                             "change them with smtpd_options")
        test = "".join(f"{name} = {value}\n" for name, value in values.items())
        return (f"{contrib.rstrip()}\n\n# --- test instance {w} (appended by "
                f"tests/support/postfix.py) ---\n{test}")

    def _master_cf(self) -> str:
        contrib = (CONTRIB / "master.cf").read_text()
        return BASE_MASTER_CF + "\n" + _master_services(contrib, self.ports, self.smtpd_options)

    def _write_config(self) -> None:
        pf = pwd.getpwnam("postfix")
        postfix_gid = grp.getgrnam("postfix").gr_gid
        for d in (self.config, self.config / "sasl", self.sasldb.parent, self.maillog.parent):
            d.mkdir(parents=True, exist_ok=True)
        for d in (self.data, self.mail):
            d.mkdir(exist_ok=True)
            os.chown(d, pf.pw_uid, postfix_gid)
            d.chmod(0o700)
        self.ports = {"smtp": free_port(), "submission": free_port()}
        (self.config / "main.cf").write_text(self._main_cf())
        (self.config / "master.cf").write_text(self._master_cf())
        (self.config / "mailboxes").write_text("".join(f"{a} OK\n" for a in self.mailboxes))
        (self.config / "relay_recipients").write_text(
            "".join(f"{a} OK\n" for a in self.relay_recipients))
        (self.config / "sasl" / "smtpd.conf").write_text(
            "pwcheck_method: auxprop\n"
            "auxprop_plugin: sasldb\n"
            "mech_list: PLAIN LOGIN\n"
            f"sasldb_path: {SASLDB}\n")
        saslpasswd2 = _binary("saslpasswd2")
        self.sasldb.unlink(missing_ok=True)
        for login, password in self.users.items():
            subprocess.run([saslpasswd2, "-p", "-c", "-f", str(self.sasldb), "-u", SASL_REALM,
                            login], input=password.encode(), check=True, capture_output=True)
        if self.users:
            os.chown(self.sasldb, 0, postfix_gid)
            self.sasldb.chmod(0o640)
        # Postfix rereads a table file (main.cf too) after 300 ms naps until its mtime is in
        # the past by a second or so, lest it read a file being edited: date them back.
        past = time.time() - 60
        for path in self.config.iterdir():
            if path.is_file():
                os.utime(path, (past, past))

    def configure(self) -> Path:
        """Write the configuration directory ``start`` would, without starting Postfix;
        its path (for ``postconf -c``)."""
        self._write_config()
        return self.config

    # --- lifecycle --------------------------------------------------------------------------

    def _postfix(self, *args: str, check: bool = True,
                 timeout: float = 30) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([_binary("postfix"), "-c", str(self.config), *args],
                                capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError(f"postfix {' '.join(args)} failed ({result.returncode}):\n"
                               f"{result.stdout}{result.stderr}\n{self.log()}")
        return result

    def start(self) -> Self:
        for name in BINARIES:
            _binary(name)
        _check_sasl_plugins()
        for attempt in range(3):  # new ports if another process took ours before Postfix bound
            self._write_config()
            try:
                self._postfix("start")
                self._master_pid = self._read_master_pid()
                for port in self.ports.values():
                    self._wait_port(port)
                warnings = [line for line in self.log().splitlines() if "warning:" in line]
                if warnings:  # a configuration this suite writes must be clean
                    raise RuntimeError("postfix warns at start:\n" + "\n".join(warnings))
                return self
            except BaseException as err:
                self.stop()
                if (attempt == 2 or not isinstance(err, RuntimeError)
                        or "Address already in use" not in str(err)):
                    raise
        raise AssertionError("unreachable")

    def _read_master_pid(self, timeout: float = 10) -> int:
        pidfile = self.queue / "pid" / "master.pid"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                return int(pidfile.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                time.sleep(0.05)
        raise RuntimeError(f"no master pid in {pidfile}:\n{self.log()}")

    def _wait_port(self, port: int, timeout: float = 15) -> None:
        """Until the listener sends its 220 greeting."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((LOOPBACK, port), timeout=2) as s:
                    if s.recv(512).startswith(b"220"):
                        s.sendall(b"QUIT\r\n")
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"postfix not answering on port {port}:\n{self.log()}")

    def stop(self) -> None:
        """``postfix stop``, then SIGKILL whatever of this instance is left: the processes of
        its master's session (its pid file) and any other working in its queue directory (a
        ``master -t`` of postfix-script), never anything else."""
        pid = self._master_pid
        if pid is None and (self.queue / "pid" / "master.pid").exists():
            try:
                pid = self._read_master_pid(timeout=0.1)
            except RuntimeError:
                pid = None
        try:
            self._postfix("stop", check=False, timeout=20)
        except subprocess.TimeoutExpired:
            pass  # killed below
        deadline = time.monotonic() + 10
        while pid is not None and time.monotonic() < deadline and _alive(pid):
            time.sleep(0.05)
        for leftover in _instance_processes(pid, self.queue):
            try:
                os.kill(leftover, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._master_pid = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- what a test uses -------------------------------------------------------------------

    @property
    def master_pid(self) -> int | None:
        """The running master's pid (None once stopped): unchanged means not restarted."""
        return self._master_pid

    @property
    def smtp_port(self) -> int:
        return self.ports["smtp"]

    @property
    def submission_port(self) -> int:
        return self.ports["submission"]

    def smtp(self, port: int | None = None, timeout: float = 30) -> smtplib.SMTP:
        """A client connected to a listener (default: the port 25 one), greeting not yet sent."""
        return smtplib.SMTP(LOOPBACK, port or self.smtp_port, local_hostname="client.test",
                            timeout=timeout)

    def log(self) -> str:
        try:
            return self.maillog.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def queue_files(self) -> list[Path]:
        found: list[Path] = []
        for sub in ("maildrop", "incoming", "active", "deferred", "hold"):
            d = self.queue / sub
            if d.is_dir():
                found.extend(p for p in d.rglob("*") if p.is_file())
        return found

    def wait_idle(self, timeout: float = 20) -> None:
        """Until every accepted message has left the queue (delivered or bounced)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.queue_files():
                return
            time.sleep(0.05)
        raise AssertionError(f"queue not empty after {timeout} s: {self.queue_files()}\n"
                             + self.log()[-4000:])

    def delivered(self, wait: bool = True) -> list[Delivered]:
        """Every message delivered so far, one per recipient, oldest first."""
        if wait:
            self.wait_idle()
        new = self.maildir / "new"
        files = sorted(new.iterdir(), key=lambda p: (p.stat().st_mtime, p.name)) \
            if new.is_dir() else []
        return [Delivered(p, email.message_from_bytes(p.read_bytes(), policy=email.policy.default))
                for p in files]  # type: ignore[arg-type]

    def deliveries_of(self, marker: str) -> list[Delivered]:
        """The delivered copies whose Subject carries ``marker``."""
        return [d for d in self.delivered() if marker in str(d.message["Subject"])]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except (FileNotFoundError, IndexError):
        return False


def _instance_processes(master: int | None, queue: Path) -> list[int]:
    """Live processes of one Postfix instance: the master (a session leader) and its session,
    and whatever has the instance's queue directory as its working directory."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            state, _, _, session = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:4]
            if state == "Z":
                continue
            if master is not None and int(session) == master:
                found.append(int(entry.name))
            elif Path(os.readlink(entry / "cwd")) == queue.resolve():
                found.append(int(entry.name))
        except (OSError, ValueError):
            continue
    return found


def reply(response: tuple[int, bytes]) -> tuple[int, str, str]:
    """(code, enhanced code, text) of an smtplib response; multi-line texts joined by spaces."""
    code, raw = response
    text = raw.decode("utf-8", "replace").replace("\n", " ")
    m = re.match(r"([245]\.\d{1,3}\.\d{1,3}) (.*)", text, re.S)
    if m is None:
        return code, "", text
    return code, m.group(1), m.group(2)
