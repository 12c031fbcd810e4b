"""Spam scoring through spamd's SPAMC/1.5 protocol (the SYMBOLS command).

spamd reads exactly Content-length bytes, so the size is sent first and the message follows
in bounded pieces from its file.  The score, spamd's own threshold and the rule names come
back; anything else (an error code, a missing Spam header, a cut reply) raises
DependencyError, so a broken spamd never scores a message 0.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from .errors import DependencyError
from .sockets import Connection, blocks, parse_address, printable

CHUNK = 65536
_STATUS = re.compile(r"SPAMD/\d+\.\d+ (\d+) (.*)")
_SPAM = re.compile(r"(?:True|False|Yes|No) ; (-?\d+(?:\.\d+)?) / (-?\d+(?:\.\d+)?)")
_PONG = re.compile(rb"SPAMD/\d+\.\d+ 0 PONG\r\n")
_USER = re.compile(r"[!-~]*")  # one header value: no spaces, controls or line breaks


@dataclass(frozen=True)
class SpamResult:
    score: float
    threshold: float  # spamd's own required score
    symbols: tuple[str, ...]


class SpamScanner(Protocol):
    def check(self, message: BinaryIO, size: int) -> SpamResult:
        """Score the next ``size`` bytes of ``message``; DependencyError on failure."""


class Spamd:
    """A spamd daemon at 'tcp:HOST:PORT' or 'unix:/PATH'; ``user`` picks its per-user settings."""

    def __init__(self, address: str, timeout: float = 60.0, user: str = "") -> None:
        if not _USER.fullmatch(user):
            raise ValueError(f"spamd user {user!r}: printable ASCII without spaces only")
        self.address = address
        self.timeout = timeout
        self.user = user
        self._endpoint = parse_address(address)

    def check(self, message: BinaryIO, size: int) -> SpamResult:
        header = f"SYMBOLS SPAMC/1.5\r\nContent-length: {size}\r\n"
        if self.user:
            header += f"User: {self.user}\r\n"
        with Connection("spamd", self._endpoint, self.timeout) as conn:
            conn.send(header.encode() + b"\r\n")
            for block in blocks(message, size, CHUNK, "spamd"):
                conn.send(block)
            conn.end_request()
            return _parse(conn, conn.reply())

    def ping(self) -> bool:
        """True if spamd answers PONG: for health checks, never raises."""
        return not self.problem()

    def problem(self, timeout: float | None = None) -> str:
        """Why spamd does not answer PING now, or '' when it does (start-up warnings)."""
        try:
            with Connection("spamd", self._endpoint, timeout or self.timeout) as conn:
                conn.send(b"PING SPAMC/1.5\r\n\r\n")
                conn.end_request()
                reply = conn.reply()
        except DependencyError as err:
            return err.message
        return "" if _PONG.fullmatch(reply) else f"it answered PING with '{printable(reply)}'"


def _parse(conn: Connection, reply: bytes) -> SpamResult:
    """'SPAMD/1.1 0 EX_OK', headers ('Spam: True ; 1000.0 / 5.0'), a blank line, the symbols."""
    if not reply:
        raise conn.error("connection closed without a reply")
    head, blank, body = reply.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("ascii", "replace").split("\r\n")
    status = _STATUS.fullmatch(status_line)
    if status is None:
        raise conn.error(f"reply not understood: {printable(reply)!r}")
    if status[1] != "0":
        raise conn.error(f"spamd answered {printable(status_line)!r}")
    if not blank:
        raise conn.error("reply ended inside its headers")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    spam = _SPAM.fullmatch(headers.get("spam", ""))
    if spam is None:
        raise conn.error(f"no Spam header understood in {printable(head)!r}")
    length = headers.get("content-length", str(len(body)))
    if length != str(len(body)):
        raise conn.error(f"reply cut short: {len(body)} of {printable(length)} bytes of symbols")
    text = body.decode("ascii", "replace")
    symbols = tuple(printable(s.strip()) for s in text.split(",") if s.strip())
    return SpamResult(float(spam[1]), float(spam[2]), symbols)
