"""MTA side of the milter protocol (version 6), behaving like Postfix's milter8 client.

Wire-level tests and benchmarks use this to drive a real milter process over its
socket exactly as Postfix would, so that what they observe is what production sees.
Protocol constants come from libmilter's mfdef.h/mfapi.h; the behavioural details
(what is offered, when replies are awaited, how a message is fed) follow Postfix.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import socket
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

__all__ = ["EomResult", "MilterClient", "MilterProtocolError", "MilterTimeout", "Reply",
           "split_message"]

SMFI_PROT_VERSION = 6
MILTER_CHUNK_SIZE = 65535

# Every action Postfix lets a milter request (SMFIF_ADDHDRS .. SMFIF_SETSYMLIST).
SMFIF_ALL = 0x1FF

SMFIP_NOCONNECT = 0x00000001
SMFIP_NOHELO = 0x00000002
SMFIP_NOMAIL = 0x00000004
SMFIP_NORCPT = 0x00000008
SMFIP_NOBODY = 0x00000010
SMFIP_NOHDRS = 0x00000020
SMFIP_NOEOH = 0x00000040
SMFIP_NR_HDR = 0x00000080
SMFIP_NOUNKNOWN = 0x00000100
SMFIP_NODATA = 0x00000200
SMFIP_SKIP = 0x00000400
SMFIP_RCPT_REJ = 0x00000800
SMFIP_NR_CONN = 0x00001000
SMFIP_NR_HELO = 0x00002000
SMFIP_NR_MAIL = 0x00004000
SMFIP_NR_RCPT = 0x00008000
SMFIP_NR_DATA = 0x00010000
SMFIP_NR_UNKN = 0x00020000
SMFIP_NR_EOH = 0x00040000
SMFIP_NR_BODY = 0x00080000
SMFIP_HDR_LEADSPC = 0x00100000

# Command -> (SMFIP_NO* bit: don't send it, SMFIP_NR_* bit: don't await a reply).
_STEPS: dict[bytes, tuple[int, int]] = {
    b"C": (SMFIP_NOCONNECT, SMFIP_NR_CONN),
    b"H": (SMFIP_NOHELO, SMFIP_NR_HELO),
    b"M": (SMFIP_NOMAIL, SMFIP_NR_MAIL),
    b"R": (SMFIP_NORCPT, SMFIP_NR_RCPT),
    b"T": (SMFIP_NODATA, SMFIP_NR_DATA),
    b"L": (SMFIP_NOHDRS, SMFIP_NR_HDR),
    b"N": (SMFIP_NOEOH, SMFIP_NR_EOH),
    b"B": (SMFIP_NOBODY, SMFIP_NR_BODY),
    b"U": (SMFIP_NOUNKNOWN, SMFIP_NR_UNKN),
    b"E": (0, 0),  # end of message can be neither declined nor left unanswered
}

# What each command and action bit is called (mfdef.h; the actions as milter.py names them).
STEP_NAMES = {b"C": "connect", b"H": "helo", b"M": "mail", b"R": "rcpt", b"T": "data",
              b"L": "header", b"N": "eoh", b"B": "body", b"U": "unknown", b"E": "eom"}
ACTION_NAMES = ("addheader", "chgbody", "addrcpt", "delrcpt", "chgheader", "quarantine",
                "chgfrom", "addrcpt_par", "setsymlist")  # SMFIF_ADDHDRS = 1 << 0 onwards

# Postfix 3.7 with milter_protocol=6 offers every step it can skip plus SKIP,
# RCPT_REJ and HDR_LEADSPC: all protocol bits libmilter defines (SMFI_CURR_PROT).
OFFERED_PROTOCOL = (
    sum(no | nr for no, nr in _STEPS.values()) | SMFIP_SKIP | SMFIP_RCPT_REJ | SMFIP_HDR_LEADSPC
)

# SMFIM_* index (mfapi.h) -> command whose macros the setsymlist list restricts.
_MACRO_STAGES = b"CHMRTEN"

_SIMPLE_REPLIES = {
    b"c": "continue",
    b"a": "accept",
    b"r": "reject",
    b"t": "tempfail",
    b"d": "discard",
    b"s": "skip",
    # Obsolete connection failure and internal shutdown: Postfix answers the SMTP
    # client with a temporary failure either way.
    b"f": "tempfail",
    b"4": "tempfail",
}

# libmilter never sends a packet above its 1 MB data size limit; a larger length
# means the peer is not speaking milter at all.
_MAX_PACKET = 1024 * 1024 + 1

_REPLYCODE = re.compile(r"([45])\d\d[ -]\1")
_ENHANCED = re.compile(r"([45]\.\d{1,3}\.\d{1,3})(?: |$)")
_HEADER = re.compile(rb"([!-9;-~]+)[ \t]*:(.*)", re.DOTALL)

Macros = Mapping[str, str] | None


class MilterTimeout(TimeoutError):
    """The milter did not answer (or accept data) within the client's timeout."""


class MilterProtocolError(Exception):
    """The milter closed the connection or sent something the protocol does not allow."""


@dataclass(frozen=True)
class Reply:
    """The milter's verdict on one MTA event."""

    action: str  # continue accept reject tempfail discard skip replycode noreply skipped
    code: str = ""
    enhanced: str = ""
    text: str = ""

    @property
    def line(self) -> str:
        """The SMTP reply line for replycode, otherwise the action name."""
        if self.action != "replycode":
            return self.action
        return " ".join(part for part in (self.code, self.enhanced, self.text) if part)

    @property
    def rejected(self) -> bool:
        return self.action == "reject" or (self.action == "replycode" and self.code[:1] == "5")

    @property
    def tempfailed(self) -> bool:
        return self.action == "tempfail" or (self.action == "replycode" and self.code[:1] == "4")

    @property
    def passed(self) -> bool:
        return self.action in ("continue", "accept", "noreply", "skipped", "skip")


@dataclass
class EomResult:
    """The final verdict plus the message modifications requested before it, in order."""

    reply: Reply
    modifications: list[tuple[str, tuple]]


class MilterClient:
    """One MTA-to-milter session, driven command by command like Postfix does it.

    Declined steps (SMFIP_NO*) are not sent and return Reply('skipped'); steps the
    milter will not answer (SMFIP_NR_*) are sent without waiting and return
    Reply('noreply').  After a SKIP reply, further events of that type return
    Reply('skipped') until another event is sent.  With send_macros_when_skipped=True
    the macros of a declined step are still sent, as Postfix does, so the milter can
    read them later.
    """

    def __init__(
        self, address: str, timeout: float = 10.0, *, send_macros_when_skipped: bool = False
    ) -> None:
        self.address = address
        self.timeout = timeout
        self.send_macros_when_skipped = send_macros_when_skipped
        self.actions = 0
        self.protocol = 0
        self.macro_lists: dict[str, set[str]] = {}
        self._sock: socket.socket | None = None
        self._skipping: bytes | None = None  # command the milter answered with SKIP

    @property
    def steps(self) -> list[str]:
        """The commands the milter asked to be sent, after negotiation."""
        return [STEP_NAMES[cmd] for cmd, (no, _nr) in _STEPS.items()
                if not self.protocol & no]

    @property
    def action_names(self) -> list[str]:
        """The changes the milter may ask for, after negotiation."""
        return [name for bit, name in enumerate(ACTION_NAMES) if self.actions & (1 << bit)]

    # -- session ---------------------------------------------------------------

    def open(self) -> None:
        """Connect and negotiate, offering everything Postfix offers."""
        self._sock = self._connect()
        self._skipping = None
        try:
            self._negotiate()
        except BaseException:
            self._sock.close()
            self._sock = None
            raise

    def _negotiate(self) -> None:
        self._send(b"O", struct.pack(">III", SMFI_PROT_VERSION, SMFIF_ALL, OFFERED_PROTOCOL))
        cmd, data = self._recv()
        if cmd != b"O" or len(data) < 12:
            raise MilterProtocolError(f"bad option negotiation reply {cmd!r} ({len(data)} bytes)")
        version, self.actions, self.protocol = struct.unpack_from(">III", data)
        # Postfix refuses these too: it cannot honour a newer protocol or unoffered actions.
        if version > SMFI_PROT_VERSION:
            raise MilterProtocolError(f"milter speaks protocol version {version} > 6")
        if self.actions & ~SMFIF_ALL:
            raise MilterProtocolError(f"milter wants unoffered actions {self.actions:#x}")
        self.macro_lists = _parse_macro_lists(data[12:])

    def close(self) -> None:
        """Send QUIT and close; a milter that already hung up is not an error here."""
        if self._sock is None:
            return
        try:
            with contextlib.suppress(MilterProtocolError, MilterTimeout):
                self._send(b"Q")
        finally:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> MilterClient:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- SMTP events -----------------------------------------------------------

    def connect(
        self,
        hostname: str = "localhost",
        address: str | None = "127.0.0.1",
        port: int = 12345,
        family: str | None = None,
        macros: Macros = None,
    ) -> Reply:
        """Report the SMTP client connection; family is inferred from the address."""
        if family is None:
            family = "U" if address is None else str(ipaddress.ip_address(address).version)
        payload = _cstr(hostname) + family.encode("ascii")
        if family != "U":
            # Postfix sends port 0 for local (unix-domain) clients.
            payload += struct.pack(">H", port if family in "46" else 0) + _cstr(address or "")
        return self._event(b"C", payload, macros)[0]

    def helo(self, name: str, macros: Macros = None) -> Reply:
        return self._event(b"H", _cstr(name), macros)[0]

    def mail(self, sender: str, *params: str, macros: Macros = None) -> Reply:
        """MAIL FROM; sender is sent verbatim (e.g. '<a@b>'), then each ESMTP parameter."""
        return self._event(b"M", b"".join(map(_cstr, (sender, *params))), macros)[0]

    def rcpt(self, recipient: str, *params: str, macros: Macros = None) -> Reply:
        return self._event(b"R", b"".join(map(_cstr, (recipient, *params))), macros)[0]

    def data(self, macros: Macros = None) -> Reply:
        return self._event(b"T", b"", macros)[0]

    def header(self, name: str, value: str | bytes) -> Reply:
        """One header field, value sent as given (see message() for Postfix's framing)."""
        return self._event(b"L", _cstr(name) + _cstr(value))[0]

    def eoh(self, macros: Macros = None) -> Reply:
        """End of headers: libmilter ignores body and end of message until it gets this."""
        return self._event(b"N", b"", macros)[0]

    def body(self, chunk: bytes) -> Reply:
        """Send body content in protocol-sized chunks until one does not pass or says SKIP."""
        reply = Reply("skipped")
        for start in range(0, len(chunk), MILTER_CHUNK_SIZE):
            reply = self._event(b"B", chunk[start : start + MILTER_CHUNK_SIZE])[0]
            if reply.action in ("skip", "skipped") or not reply.passed:
                break
        return reply

    def eom(self, macros: Macros = None) -> EomResult:
        """End of message: collects the modification requests that precede the verdict."""
        return EomResult(*self._event(b"E", b"", macros))

    def abort(self) -> None:
        """Abandon the current message; libmilter sends no reply to this."""
        self._skipping = None
        self._send(b"A")

    def unknown(self, command: str, macros: Macros = None) -> Reply:
        return self._event(b"U", _cstr(command), macros)[0]

    def message(
        self, raw: bytes, macros: Mapping[str, Mapping[str, str]] | None = None
    ) -> Reply | EomResult:
        """Feed an RFC 5322 message (CRLF or LF) the way Postfix does after DATA.

        Headers go one by one with the single space after the colon removed (unless
        HDR_LEADSPC was negotiated) and folded lines joined by LF; then EOH, the body
        with CRLF line ends, and end of message.  macros maps 'eoh'/'eom' to the
        macros for those stages.  Returns the first reply that ends the message
        early (not passing, or accept, after which Postfix sends nothing more for
        this message), otherwise the EomResult.
        """
        stage_macros = dict(macros or {})
        if unexpected := stage_macros.keys() - {"eoh", "eom"}:
            raise ValueError(f"message() takes macros only for 'eoh' and 'eom', not {unexpected}")
        headers, body = split_message(raw, keep_space=bool(self.protocol & SMFIP_HDR_LEADSPC))
        for name, value in headers:
            if _ends_message(reply := self.header(name, value)):
                return reply
        if _ends_message(reply := self.eoh(stage_macros.get("eoh"))):
            return reply
        if body and _ends_message(reply := self.body(body)):
            return reply
        return self.eom(stage_macros.get("eom"))

    # -- protocol machinery ----------------------------------------------------

    def _event(
        self, cmd: bytes, payload: bytes, macros: Macros = None
    ) -> tuple[Reply, list[tuple[str, tuple]]]:
        """Send one event honouring SKIP, NO* and NR_* like Postfix's milter8_event()."""
        if cmd == self._skipping:
            return Reply("skipped"), []
        self._skipping = None
        no_bit, nr_bit = _STEPS[cmd]
        declined = bool(self.protocol & no_bit)
        if macros and (not declined or self.send_macros_when_skipped):
            self._send_macros(cmd, macros)
        if declined:
            return Reply("skipped"), []
        self._send(cmd, payload)
        if self.protocol & nr_bit:
            return Reply("noreply"), []
        return self._read_reply(cmd)

    def _send_macros(self, cmd: bytes, macros: Mapping[str, str]) -> None:
        """Send the caller's macros, restricted to the milter's list for this stage if any."""
        wanted = self.macro_lists.get(cmd.decode())
        if wanted is not None:
            wanted = {_bare(name) for name in wanted}
        payload = b"".join(
            _cstr(name) + _cstr(value)
            for name, value in macros.items()
            if wanted is None or _bare(name) in wanted
        )
        if payload:  # libmilter drops an empty macro packet anyway
            self._send(b"D", cmd + payload)

    def _read_reply(self, cmd: bytes) -> tuple[Reply, list[tuple[str, tuple]]]:
        modifications: list[tuple[str, tuple]] = []
        while True:
            code, data = self._recv()
            if code == b"y":
                return _parse_replycode(data), modifications
            if code in _SIMPLE_REPLIES or code == b"p":
                if data:
                    raise MilterProtocolError(f"reply {code!r} has {len(data)} unexpected bytes")
                if code == b"p":  # progress: the milter is still working on it
                    continue
                if code == b"s":
                    self._skipping = cmd
                return Reply(_SIMPLE_REPLIES[code]), modifications
            if cmd == b"E":
                _add_modification(modifications, code, data)
                continue
            raise MilterProtocolError(f"unexpected reply {code!r} to command {cmd!r}")

    def _connect(self) -> socket.socket:
        kind, _, rest = self.address.partition(":")
        try:
            if kind in ("unix", "local") and rest:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(self.timeout)
                try:
                    sock.connect(rest)
                except BaseException:
                    sock.close()
                    raise
                return sock
            if kind in ("inet", "inet6") and rest:
                port, _, host = rest.partition("@")
                if not host:
                    host, _, port = rest.rpartition(":")
                if host and port.isdigit():
                    return socket.create_connection((host.strip("[]"), int(port)), self.timeout)
        except TimeoutError as exc:
            raise MilterTimeout(f"connecting to {self.address} timed out") from exc
        raise ValueError(
            f"milter address must be unix:PATH, inet:PORT@HOST or inet:HOST:PORT: {self.address!r}"
        )

    @contextlib.contextmanager
    def _io(self, doing: str) -> Iterator[socket.socket]:
        if self._sock is None:
            raise MilterProtocolError(f"{doing}: client is not open")
        try:
            yield self._sock
        except TimeoutError as exc:
            raise MilterTimeout(f"{doing}: no progress within {self.timeout}s") from exc
        except ConnectionError as exc:
            raise MilterProtocolError(f"{doing}: {exc}") from exc

    def _send(self, cmd: bytes, payload: bytes = b"") -> None:
        with self._io(f"sending {cmd!r}") as sock:
            sock.sendall(struct.pack(">I", 1 + len(payload)) + cmd + payload)

    def _recv(self) -> tuple[bytes, bytes]:
        header = self._recv_exact(4)
        (length,) = struct.unpack(">I", header)
        if not 1 <= length <= _MAX_PACKET:
            raise MilterProtocolError(f"bad packet length {length} from milter")
        packet = self._recv_exact(length)
        return packet[:1], packet[1:]

    def _recv_exact(self, size: int) -> bytes:
        buf = bytearray()
        with self._io("reading milter reply") as sock:
            while len(buf) < size:
                chunk = sock.recv(size - len(buf))
                if not chunk:
                    raise MilterProtocolError("milter closed the connection")
                buf += chunk
        return bytes(buf)


def _cstr(value: str | bytes) -> bytes:
    """NUL-terminated protocol string; str is UTF-8 with surrogateescape, bytes as-is."""
    raw = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
    if b"\0" in raw:
        raise ValueError(f"milter protocol strings cannot contain NUL: {value!r}")
    return raw + b"\0"


def _strings(data: bytes, count: int | None = None) -> tuple[str, ...]:
    if not data.endswith(b"\0"):
        raise MilterProtocolError(f"unterminated string in milter reply: {data[:60]!r}")
    parts = tuple(s.decode("utf-8", "surrogateescape") for s in data[:-1].split(b"\0"))
    if count is not None and len(parts) != count:
        raise MilterProtocolError(f"expected {count} strings in milter reply, got {len(parts)}")
    return parts


def _bare(name: str) -> str:
    """Macro name without braces: libmilter treats '{i}' and 'i' alike."""
    return name[1:-1] if name.startswith("{") and name.endswith("}") else name


def _parse_macro_lists(data: bytes) -> dict[str, set[str]]:
    """The setsymlist part of the negotiation reply: (uint32 stage, names NUL)*."""
    lists: dict[str, set[str]] = {}
    while data:
        end = data.find(b"\0", 4)
        if len(data) < 5 or end < 0:
            raise MilterProtocolError("truncated macro list in option negotiation reply")
        (stage,) = struct.unpack_from(">I", data)
        names = set(re.split(r"[\s,]+", data[4:end].decode("ascii", "replace"))) - {""}
        # Like Postfix: ignore unknown stages; an empty list leaves the defaults.
        if stage < len(_MACRO_STAGES) and names:
            lists[chr(_MACRO_STAGES[stage])] = names
        data = data[end + 1 :]
    return lists


def _parse_replycode(data: bytes) -> Reply:
    """Validate and split an SMFIR_REPLYCODE the way Postfix does.

    Postfix refuses replies that are not '4xx/5xx' with a matching enhanced-code
    class, and turns libmilter's sendmail-style '%%' into '%' (dropping lone '%').
    """
    text = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
    if not _REPLYCODE.match(text):
        raise MilterProtocolError(f"malformed reply code from milter: {text!r}")
    text = re.sub(r"%(.?)", r"\1", text, flags=re.DOTALL)
    code, rest = text[:3], text[4:]
    enhanced = ""
    if match := _ENHANCED.match(rest):
        enhanced, rest = match.group(1), rest[match.end() :]
    return Reply("replycode", code, enhanced, rest)


def _add_modification(mods: list[tuple[str, tuple]], code: bytes, data: bytes) -> None:
    """Decode one end-of-message modification request into mods."""
    if code in (b"+", b"-", b"q"):
        name = {b"+": "addrcpt", b"-": "delrcpt", b"q": "quarantine"}[code]
        mods.append((name, _strings(data, 1)))
    elif code in (b"2", b"e"):
        mods.append(("addrcpt_par" if code == b"2" else "chgfrom", _strings(data)))
    elif code == b"h":
        mods.append(("addheader", _strings(data, 2)))
    elif code in (b"i", b"m"):
        if len(data) < 4:
            raise MilterProtocolError(f"truncated header index in reply {code!r}")
        (index,) = struct.unpack_from(">I", data)
        mods.append(("insheader" if code == b"i" else "chgheader", (index, *_strings(data[4:], 2))))
    elif code == b"b":
        # libmilter sends a replacement body in chunks; report it as one body.
        if mods and mods[-1][0] == "replbody":
            mods[-1] = ("replbody", (mods[-1][1][0] + data,))
        else:
            mods.append(("replbody", (data,)))
    else:
        raise MilterProtocolError(f"unknown reply {code!r} at end of message")


def _ends_message(reply: Reply) -> bool:
    """Whether Postfix stops feeding the message: a non-passing verdict or accept."""
    return reply.action == "accept" or not reply.passed


def split_message(raw: bytes, keep_space: bool) -> tuple[list[tuple[str, bytes]], bytes]:
    """Split raw bytes into (name, value) headers and a CRLF body, as Postfix frames them.

    A line that is neither a header nor a continuation ends the headers and starts
    the body, as it does in Postfix.
    """
    lines = raw.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    lines = [line[:-1] if line.endswith(b"\r") else line for line in lines]
    headers: list[tuple[str, bytes]] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        if line == b"":
            index += 1
            break
        if line[:1] in (b" ", b"\t") and headers:
            name, value = headers[-1]
            headers[-1] = (name, value + b"\n" + line)
        elif match := _HEADER.fullmatch(line):
            value = match.group(2)
            if not keep_space and value.startswith(b" "):
                value = value[1:]
            headers.append((match.group(1).decode("ascii"), value))
        else:
            break
        index += 1
    return headers, b"".join(line + b"\r\n" for line in lines[index:])
