"""Where the milter listens: socket specs checked before anything binds, and a bind that
fails explained by its address and reason.

libmilter takes ``unix:/PATH`` (or ``local:/PATH``), ``inet:PORT@HOST`` and
``inet6:PORT@HOST``; on a failure it says only "cannot opensocket".  Everything it would
refuse, or silently take another way (a port over 65535 wraps around), is refused here
first with one line that names the address and what is wrong with it.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path

LOOPBACK = {"inet": "127.0.0.1", "inet6": "[::1]"}  # the host of inet:PORT, inet6:PORT
_HOSTNAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?")
FORMS = "unix:/PATH, inet:PORT[@HOST] or inet6:PORT[@HOST]"


class AddressError(ValueError):
    """A socket spec that cannot be listened on as written."""


class ListenError(OSError):
    """The address is well formed but cannot be listened on here (in use, no permission)."""


@dataclass(frozen=True)
class Address:
    """A parsed socket spec; ``spec`` is libmilter's form of it."""

    family: str  # unix, inet, inet6
    host: str = ""
    port: int = 0
    path: str = ""

    @property
    def spec(self) -> str:
        return f"unix:{self.path}" if self.family == "unix" else \
            f"{self.family}:{self.port}@{self.host}"

    @property
    def bare_host(self) -> str:
        return self.host.strip("[]")


def parse(text: str) -> Address:
    """``text`` as an Address; ``inet:PORT`` means loopback, where libmilter would listen
    on every interface."""
    kind, colon, rest = text.partition(":")
    if not colon or kind not in ("unix", "local", "inet", "inet6"):
        raise AddressError(f"'{text}' is not {FORMS}")
    if kind in ("unix", "local"):
        if not rest.startswith("/") or rest.endswith("/") or "\0" in rest:
            raise AddressError(f"'{text}': a unix socket needs an absolute file path")
        if len(os.fsencode(rest)) > 107:  # sizeof(sun_path) - 1 on Linux
            raise AddressError(f"'{text}': the path is longer than a unix socket allows "
                               "(107 bytes)")
        return Address("unix", path=rest)
    port_text, at, host = rest.partition("@")
    if not port_text.isdigit():
        raise AddressError(f"'{text}': '{port_text}' is not a port number")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise AddressError(f"'{text}': port {port} is outside 1-65535")
    if not at:
        host = LOOPBACK[kind]
    return Address(kind, _host(text, kind, host), port)


def _host(text: str, kind: str, host: str) -> str:
    try:
        ip = ipaddress.ip_address(host.strip("[]") if kind == "inet6" else host)
    except ValueError:
        if _HOSTNAME.fullmatch(host):
            return host
        raise AddressError(f"'{text}': '{host}' is not an IP address or host name") from None
    if (ip.version == 6) != (kind == "inet6"):
        other = f"inet6:PORT@[{ip}]" if ip.version == 6 else f"inet:PORT@{ip}"
        raise AddressError(f"'{text}': {ip} is an IPv{ip.version} address: write {other}")
    return host


def prepare(address: Address) -> None:
    """Ready a unix socket's place: make a missing directory 0750 (the owner and its group,
    the MTA's, may enter; an existing one keeps the modes its admin gave it) and make sure
    no live server holds the path, which libmilter would otherwise remove and take over."""
    if address.family != "unix":
        return
    path = Path(address.path)
    try:
        path.parent.mkdir(mode=0o750, parents=True)
        os.chmod(path.parent, 0o750)  # what the umask took away
    except FileExistsError:
        pass
    except OSError as err:
        raise ListenError(f"cannot make the socket directory {path.parent}: "
                          f"{err.strerror}") from None
    if path.is_symlink() or (path.exists() and not path.is_socket()):
        raise ListenError(f"cannot listen on {address.spec}: {path} exists and is not a "
                          "socket")
    if path.exists() and _answers(path):
        raise ListenError(f"cannot listen on {address.spec}: another process is serving it")


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False  # a stale socket from a process that is gone
    return True


def why_not(address: Address) -> str:
    """Why binding ``address`` fails, found by binding it the way libmilter does."""
    if address.family == "unix":
        family, target = socket.AF_UNIX, address.path
        path = Path(address.path)
    else:
        family = socket.AF_INET6 if address.family == "inet6" else socket.AF_INET
        target = (address.bare_host, address.port)  # type: ignore[assignment]
    with socket.socket(family) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(target)
        except socket.gaierror as err:
            return f"cannot resolve {address.host}: {err.strerror}"
        except OSError as err:
            return _reason(err)
        if family == socket.AF_UNIX:
            path.unlink(missing_ok=True)
    return "libmilter refused it (its reason goes to syslog)"


def _reason(err: OSError) -> str:
    if err.errno == errno.EADDRINUSE:
        return "the address is in use by another process"
    if err.errno == errno.EADDRNOTAVAIL:
        return "no interface of this host has that address"
    return err.strerror or str(err)
