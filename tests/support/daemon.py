"""Running a real server for a test: the life cycle every wrapper in tests/support shares."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Self

LOOPBACK = "127.0.0.1"


def bind_pair() -> tuple[socket.socket, socket.socket]:
    """A UDP and a TCP socket bound to one free loopback port, since DNS needs both."""
    for _ in range(50):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind((LOOPBACK, 0))
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # closed conns in TIME_WAIT
        try:
            tcp.bind((LOOPBACK, udp.getsockname()[1]))
        except OSError:
            udp.close()
            tcp.close()
            continue
        return udp, tcp
    raise OSError("no loopback port is free for both UDP and TCP")


def free_port() -> int:
    """A loopback port free for UDP and TCP right now, for a server that binds it itself."""
    udp, tcp = bind_pair()
    port: int = udp.getsockname()[1]
    udp.close()
    tcp.close()
    return port


class Daemon(ABC):
    """A real daemon in its own process group, on a free loopback port: started, probed until
    it answers, stopped.  A missing binary or a daemon that will not serve raises, with its
    output: no test skips silently."""

    binary = ""
    package = ""
    start_timeout = 30.0
    stop_signal = signal.SIGTERM  # what makes it stop at once, sessions still open

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = 0
        self.output = workdir / f"{self.binary}.out"  # stdout and stderr
        self._proc: subprocess.Popen[bytes] | None = None

    def _port(self) -> int:
        """The port to serve on: a free loopback one."""
        return free_port()

    def _configure(self) -> None:
        """Write what the daemon reads, for the port just chosen."""

    @abstractmethod
    def _command(self, binary: str) -> list[str]: ...

    @abstractmethod
    def _ready(self) -> bool: ...

    def start(self) -> Self:
        path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
        binary = shutil.which(self.binary, path=path)
        if binary is None:
            raise FileNotFoundError(f"{self.binary} not installed (Debian package {self.package})")
        self.workdir.mkdir(parents=True, exist_ok=True)
        for _ in range(3):  # a new port if another process took ours before the daemon bound it
            self.port = self._port()
            self._configure()
            with open(self.output, "wb") as out:
                self._proc = subprocess.Popen(self._command(binary), stdin=subprocess.DEVNULL,
                                              stdout=out, stderr=subprocess.STDOUT,
                                              start_new_session=True)
            if self._wait_ready():
                return self
        self._proc = None
        raise RuntimeError(f"{self.binary} exited at start:\n{self.output.read_text()}")

    def _wait_ready(self) -> bool:
        """True once it answers, False if it died; raises if it never answers."""
        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return False
            if self._ready():
                return True
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.binary} not answering after {self.start_timeout} s:\n"
                           f"{self.output.read_text()}")

    def stop(self) -> None:
        """SIGTERM to the whole process group (spamd's children too), SIGKILL for stragglers."""
        if self._proc is None:
            return
        group = self._proc.pid  # start_new_session: the daemon leads its own group
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, self.stop_signal)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(15)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
        self._proc.wait()
        self._proc = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
