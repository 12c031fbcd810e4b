"""Messages built the way an attacker would build them to slip past content rules.

Shared by the unit tests of the content pass, the hostile-input battery over the milter
protocol, and the soak benchmark.
"""

from __future__ import annotations

import io
import tarfile
import zipfile
from email.message import EmailMessage


def zipped(*entries: tuple[str, bytes] | str) -> bytes:
    """A zip of ``entries``: (name, content), or a bare name holding b"MZ"."""
    data = io.BytesIO()
    with zipfile.ZipFile(data, "w", zipfile.ZIP_DEFLATED) as archive:
        for entry in entries:
            name, content = (entry, b"MZ") if isinstance(entry, str) else entry
            archive.writestr(name, content)
    return data.getvalue()


def tarred(*entries: tuple[str, bytes]) -> bytes:
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as archive:
        for name, content in entries:
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    return data.getvalue()


def nested_zips(depth: int, inner: str = "evil.exe") -> bytes:
    """``inner`` at the bottom of ``depth`` zips, each inside the one before."""
    data = zipped(inner)
    for level in range(depth - 1):
        data = zipped((f"level{level}.zip", data))
    return data


def with_attachment(data: bytes, filename: str, ctype: str = "application/octet-stream",
                    text: str = "see attached", subject: str = "files") -> bytes:
    msg = EmailMessage()
    msg["Subject"] = subject
    msg.set_content(text)
    maintype, subtype = ctype.split("/")
    msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return msg.as_bytes()


def nested_multiparts(depth: int) -> bytes:
    """``depth`` multiparts, each inside the one before, a text at the bottom."""
    head = b"".join(b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i)
                    for i in range(depth))
    tail = b"".join(b"\r\n--b%d--\r\n" % i for i in reversed(range(depth)))
    return b"Subject: deep\r\n" + head + b"Content-Type: text/plain\r\n\r\ndeep text" + tail


def nested_messages(depth: int) -> bytes:
    """``depth`` attached messages, each inside the one before."""
    head = b"Content-Type: message/rfc822\r\n\r\n" * depth
    return b"Subject: deep\r\n" + head + b"Subject: bottom\r\n\r\ndeep text\r\n"


def after_many_fields(count: int, field: bytes) -> bytes:
    """``field`` after ``count`` other header fields."""
    filler = b"".join(b"X-Filler-%d: x\r\n" % i for i in range(count))
    return filler + field + b"\r\n\r\nhi\r\n"
