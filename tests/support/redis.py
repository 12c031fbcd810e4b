"""A private redis-server on a loopback port: no files, no persistence, gone after stop()."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Self

from tests.support.daemon import LOOPBACK, Daemon


class RedisServer(Daemon):
    """``requirepass`` when ``password`` is given.  ``pause()``/``resume()`` stop and start
    it again on the same port, empty: a Redis that went away and came back."""

    binary = "redis-server"
    package = "redis-server"

    def __init__(self, workdir: Path, password: str = "") -> None:
        super().__init__(workdir)
        self.password = password
        self._resuming = False

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def _command(self, binary: str) -> list[str]:
        command = [binary, "--port", str(self.port), "--bind", LOOPBACK, "--save", "",
                   "--appendonly", "no", "--dir", str(self.workdir)]
        return command + (["--requirepass", self.password] if self.password else [])

    def command(self, *words: str) -> str:
        """One command over RESP; the first line of the answer."""
        with socket.create_connection((LOOPBACK, self.port), timeout=2) as sock:
            auth = ["AUTH", self.password] if self.password else []
            for command in ([auth] if auth else []) + [list(words)]:
                sock.sendall(b"".join([f"*{len(command)}\r\n".encode()] + [
                    f"${len(w.encode())}\r\n{w}\r\n".encode() for w in command]))
                answer = sock.recv(65536).decode().split("\r\n")[0]
            return answer

    def _ready(self) -> bool:
        try:
            return self.command("PING") == "+PONG"
        except OSError:
            return False

    def pause(self) -> None:
        self.stop()

    def resume(self) -> Self:
        """Start again on the same port (start() alone would choose a new one)."""
        assert self._proc is None and self.port
        self._resuming = True
        try:
            return self.start()
        finally:
            self._resuming = False

    def _port(self) -> int:
        return self.port if self._resuming else super()._port()
