"""Telling systemd how the service stands (``Type=notify``): READY once the socket is
bound, RELOADING and READY around a reload, STOPPING when it leaves.

The protocol is one datagram to the unix socket named by ``$NOTIFY_SOCKET`` (``@`` for
the abstract namespace), sd_notify(3); with no such variable nothing is sent.
"""

from __future__ import annotations

import os
import socket


def notify(*states: str) -> bool:
    """Send ``states`` (``READY=1``, ``STATUS=...``); False when not run by systemd or
    the message could not go (the service still works, systemd just waits)."""
    target = os.environ.get("NOTIFY_SOCKET", "")
    if not target.startswith(("/", "@")):
        return False
    address = "\0" + target[1:] if target.startswith("@") else target
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.sendto("\n".join(states).encode(), address)
        except OSError:
            return False
    return True
