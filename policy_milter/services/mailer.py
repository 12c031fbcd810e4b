"""Sending mail back through the MTA: challenges, and held messages when released."""

from __future__ import annotations

import smtplib
from typing import BinaryIO, Protocol

from .errors import DependencyError


class Mailer(Protocol):
    def send(self, sender: str, recipients: list[str], message: bytes | BinaryIO) -> None:
        """Hand one message to the MTA; DependencyError when it does not take it."""


class SmtpMailer:
    """SMTP to the MTA (by default its own port 25 on loopback).

    Released messages go through the MTA's checks again, this milter's included; the
    challenge-response check then finds the sender allowed and lets them pass.
    """

    def __init__(self, host: str, port: int, helo: str, timeout: float = 30.0) -> None:
        self.host, self.port, self.helo, self.timeout = host, port, helo, timeout

    def send(self, sender: str, recipients: list[str], message: bytes | BinaryIO) -> None:
        data = message if isinstance(message, bytes) else message.read()
        try:
            # An explicit HELO name: smtplib would otherwise ask the system resolver.
            with smtplib.SMTP(self.host, self.port, self.helo, timeout=self.timeout) as smtp:
                refused = smtp.sendmail(sender, recipients, data)
        except (smtplib.SMTPException, OSError) as err:
            raise DependencyError("smtp", f"{self.host}:{self.port}: {err}") from None
        if refused:
            raise DependencyError("smtp", f"{self.host}:{self.port} refused {refused}")
