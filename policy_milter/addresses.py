"""Parsing and normalisation of the HELO, MAIL FROM and RCPT TO arguments a milter sees.

Relay decisions are built on these results, so the parser is strict and fails closed:
anything ambiguous is an ``AddressError`` whose ``kind`` names the catalogue row that
answers it, and every domain is reduced to one canonical form (lowercase A-labels) so a
rule written one way cannot be bypassed by spelling the same domain another way.
Pure functions: no I/O, no pymilter.
"""

import functools
import ipaddress
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import NoReturn

import idna

MAX_LOCAL = 64  # RFC 5321 4.5.3.1.1, octets
MAX_DOMAIN = 255  # RFC 5321 4.5.3.1.2
MAX_PATH = 256  # RFC 5321 4.5.3.1.3, including the angle brackets
MAX_LABEL = 63

ERROR_KINDS = frozenset({"unbalanced", "syntax", "no_domain"})

# Cc: C0/C1 controls and DEL; Cs: lone surrogates (undecodable bytes from the MTA);
# Zl/Zp: line and paragraph separators, which would split a log line like CR/LF.
_CONTROL_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})
_ASCII_CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # category Cc within ASCII
_ATOM = r"(?:[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]|[^\x00-\x7f\s])+"  # RFC 5321 atext + RFC 6531 UTF-8
_DOT_ATOM = re.compile(rf"{_ATOM}(?:\.{_ATOM})*")
_QUOTED = re.compile(r'"(?:[^"\\]|\\[\x20-\x7e])*"')  # RFC 5321 Quoted-string, UTF-8 allowed
_QUOTED_PAIR = re.compile(r"\\(.)")
_NEEDS_ESCAPE = re.compile(r'["\\]')
_LDH_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?")
_SOURCE_ROUTE = re.compile(r"(?:\[[^\[\]]*\]|[^\[\]:])*:")  # up to the first ':' outside [...]
_ROUTING = re.compile(r"[!%@]")
_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")  # RFC 5321 esmtp-keyword
_CLOSERS = {">": "<", "]": "[", ")": "("}
_POSTMASTER = "postmaster"
_UNSPLIT = frozenset({"postmaster", "mailer-daemon", "double-bounce"})  # never split


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def client_ip(text: str | None) -> IPAddress | None:
    """The client address as an ip_address, IPv4-mapped IPv6 unwrapped; None when unknown."""
    if not text:
        return None
    text = text.strip().removeprefix("[").removesuffix("]")
    text = text.removeprefix("IPv6:").removeprefix("ipv6:")
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        return ip.ipv4_mapped
    return ip


class AddressError(ValueError):
    """Bad HELO/MAIL/RCPT input; ``kind`` selects the reply row, the message is for the log."""

    def __init__(self, kind: str, message: str):
        if kind not in ERROR_KINDS:
            raise ValueError(f"unknown AddressError kind {kind!r}")
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Address:
    """A parsed envelope address; ``domain`` and ``route_domains`` are normalised.

    ``local`` is the whole local part; when a recipient delimiter split it (``split``),
    ``extension`` holds what followed the delimiter and ``mailbox_local`` what preceded it.
    """

    local: str
    domain: str
    route_domains: tuple[str, ...] = ()
    extension: str | None = None  # None: no delimiter in the local part

    @property
    def is_null(self) -> bool:
        return not self.local and not self.domain

    @property
    def is_literal(self) -> bool:
        return self.domain.startswith("[")

    @functools.cached_property
    def key(self) -> str:
        """Lookup key: local parts compare case-insensitively in rule files (kept: every
        check of every recipient asks)."""
        local = self.local.lower()
        return f"{local}@{self.domain}" if self.domain else local

    @property
    def mailbox_local(self) -> str:
        """The local part without its extension and delimiter."""
        if self.extension is None:
            return self.local
        return self.local[: len(self.local) - len(self.extension) - 1]

    @functools.cached_property
    def mailbox_key(self) -> str:
        """The lookup key of the mailbox: ``user+tag@domain`` -> ``user@domain``."""
        if self.extension is None:
            return self.key
        local = self.mailbox_local.lower()
        return f"{local}@{self.domain}" if self.domain else local

    def split(self, delimiters: str) -> "Address":
        """This address with its extension split off at the first of ``delimiters``,
        as Postfix's split_addr() does: reserved names (postmaster, mailer-daemon,
        double-bounce) stay whole, so do ``owner-*`` and ``*-request`` when ``-`` is a
        delimiter, and so does a local part the split would leave empty."""
        if not delimiters or self.extension is not None:
            return self
        local = self.local
        cut = -1
        for delimiter in delimiters:
            found = local.find(delimiter)
            if found >= 0 and (cut < 0 or found < cut):
                cut = found
        if cut <= 0:
            return self
        low = local.lower()
        if low in _UNSPLIT or ("-" in delimiters and (
                low.startswith("owner-") or (low.endswith("-request") and len(low) > 8))):
            return self
        return Address(local, self.domain, self.route_domains, local[cut + 1:])

    def __str__(self) -> str:
        if self.is_null:
            return "<>"
        local = self.local
        if not _DOT_ATOM.fullmatch(local):
            local = '"' + _NEEDS_ESCAPE.sub(r"\\\g<0>", local) + '"'
        return f"<{local}@{self.domain}>" if self.domain else f"<{local}>"


def check_balanced(text: str) -> bool:
    """True when <>, [], () nest properly and every double quote is closed."""
    stack: list[str] = []
    quoted = escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif quoted:
            escaped = char == "\\"
            quoted = char != '"'
        elif char == '"':
            quoted = True
        elif char in "<[(":
            stack.append(char)
        elif char in _CLOSERS and (not stack or stack.pop() != _CLOSERS[char]):
            return False
    return not quoted and not stack


def parse_path(arg: str, *, null_ok: bool) -> Address:
    """Parse a MAIL (``null_ok=True``) or RCPT argument, with or without angle brackets."""
    if _has_control(arg):
        raise AddressError("syntax", f"control character in path {arg!r}")
    if not check_balanced(arg):
        raise AddressError("unbalanced", f"unbalanced brackets or quotes in path {arg!r}")
    if arg == "<>":
        if null_ok:
            return Address("", "")
        raise AddressError("syntax", "null path <> is not allowed here")
    inner = _unbracket(arg)
    if not null_ok and inner.lower() == _POSTMASTER:  # RFC 5321 4.1.1.3
        return Address(inner, "")
    return _parse_mailbox(_strip_source_route(inner))


@functools.lru_cache(maxsize=4096)
def normalize_domain(name: str) -> str:
    """Canonical form of a domain name: lowercase A-labels without the trailing dot.

    Only ASCII and Unicode case are folded.  Anything else UTS #46 would map away
    (full-width letters, ideographic dots, soft hyphens, non-NFC, the Kelvin sign) is
    rejected, so a lookalike can never normalise into somebody else's domain.
    Cached: the same few domains come back in every session and every check.
    """
    if _has_control(name):
        _bad_domain(name, "control character")
    stripped = name.removesuffix(".")
    if not stripped:
        _bad_domain(name, "empty name")
    if stripped.isascii():  # UTS #46 only lowercases ASCII; the labels are checked below
        mapped = stripped.lower()
    else:
        mapped = _remap(stripped, name)
    domain = ".".join(_normalize_label(label, name) for label in mapped.split("."))
    if len(domain) > MAX_DOMAIN:
        _bad_domain(name, f"longer than {MAX_DOMAIN} octets")
    return domain


def _remap(stripped: str, name: str) -> str:
    """UTS #46 mapping of a non-ASCII name, refused when it is more than case folding."""
    try:
        mapped = idna.uts46_remap(stripped, std3_rules=False, transitional=False)
    except idna.IDNAError:
        _bad_domain(name, "character not allowed in domain names")
    if mapped != _fold_case(stripped):
        _bad_domain(name, "compatibility, invisible, lookalike or non-NFC characters")
    return mapped


def valid_helo(name: str) -> bool:
    """A HELO/EHLO argument must be a host name or an address literal, not a bare IP."""
    try:
        _normalize_host(name)
    except AddressError:
        return False
    return True


def parse_esmtp_params(params: Sequence[str]) -> dict[str, str | None]:
    """MAIL/RCPT ESMTP parameters as {KEYWORD: value or None}, values checked for known keys."""
    result: dict[str, str | None] = {}
    for param in params:
        key, value = _parse_param(param)
        if key in result:
            raise AddressError("syntax", f"repeated ESMTP parameter {key}")
        check = _VALUE_RULES.get(key)
        if check is not None and not check(value):
            raise AddressError("syntax", f"invalid value for ESMTP parameter {key}: {param!r}")
        result[key] = value
    return result


def declared_size(params: Mapping[str, str | None]) -> int | None:
    """The SIZE the client announced, from the result of ``parse_esmtp_params``."""
    value = params.get("SIZE")
    return None if value is None else int(value)


def _has_control(text: str) -> bool:
    if text.isascii():
        return _ASCII_CONTROL.search(text) is not None
    return any(unicodedata.category(char) in _CONTROL_CATEGORIES for char in text)


def _unbracket(arg: str) -> str:
    """The path without its angle brackets, once the whole path is within its length limit."""
    inner = arg
    if arg.startswith("<"):
        if not arg.endswith(">"):
            raise AddressError("syntax", f"text after the closing '>' in path {arg!r}")
        inner = arg[1:-1]
    if len(inner.encode()) + 2 > MAX_PATH:
        raise AddressError("syntax", f"path longer than {MAX_PATH} octets")
    return inner


def _strip_source_route(path: str) -> str:
    """Validate and drop a source route '@a,@b:' (RFC 5321 4.1.1.3: servers SHOULD ignore it)."""
    if not path.startswith("@"):
        return path
    route = _SOURCE_ROUTE.match(path)
    if route is None:
        raise AddressError("syntax", f"source route without ':' in {path!r}")
    for hop in route.group()[:-1].split(","):
        if not hop.startswith("@"):
            raise AddressError("syntax", f"malformed source route in {path!r}")
        _normalize_host(hop[1:])
    return path[route.end():]


def _parse_mailbox(mailbox: str) -> Address:
    raw_local, rest = _split_local(mailbox)
    if len(raw_local.encode()) > MAX_LOCAL:
        raise AddressError("syntax", f"local part longer than {MAX_LOCAL} octets")
    local = _local_value(raw_local)
    if not rest:
        raise AddressError("no_domain", f"address {mailbox!r} has no domain")
    domain = rest[1:]
    if "@" in domain:
        raise AddressError("syntax", f"more than one '@' in {mailbox!r}")
    return Address(local, _normalize_host(domain), _route_domains(local))


def _split_local(mailbox: str) -> tuple[str, str]:
    """Split into the local part as written and the rest, which is empty or starts with '@'."""
    if not mailbox.startswith('"'):
        local, at, domain = mailbox.partition("@")
        return local, at + domain
    quoted = _QUOTED.match(mailbox)
    if quoted is None:
        raise AddressError("syntax", f"malformed quoted local part in {mailbox!r}")
    rest = mailbox[quoted.end():]
    if rest and not rest.startswith("@"):
        raise AddressError("syntax", f"text after the quoted local part in {mailbox!r}")
    return quoted.group(), rest


def _local_value(raw: str) -> str:
    """The local part unquoted and unescaped; an empty quoted local part is refused."""
    if raw.startswith('"'):
        if raw == '""':
            raise AddressError("syntax", "empty quoted local part")
        return _QUOTED_PAIR.sub(r"\1", raw[1:-1])
    if not _DOT_ATOM.fullmatch(raw):
        raise AddressError("syntax", f"invalid local part {raw!r}")
    return raw


def _route_domains(local: str) -> tuple[str, ...]:
    """Hosts a local part routes through: bang path hops, then '%' and '@' domains.

    Whatever is not the final user is treated as a host, so a mixed or odd form yields
    extra non-local entries (fail closed) rather than fewer.
    """
    if not _ROUTING.search(local):
        return ()
    hops, bang, user_part = local.rpartition("!")
    hosts = (_ROUTING.split(hops) if bang else []) + _ROUTING.split(user_part)[1:]
    return tuple(_route_host(host) for host in hosts)


def _route_host(host: str) -> str:
    try:
        return _normalize_host(host)
    except AddressError:
        return host.lower()


def _normalize_host(text: str) -> str:
    """A domain or address literal as used in paths and HELO; 'u@192.0.2.1' needs brackets."""
    if text.startswith("["):
        return _normalize_literal(text)
    domain = normalize_domain(text)
    if domain.rpartition(".")[2].isdigit():
        _bad_domain(text, "all-numeric top-level label (an IP address must be in brackets)")
    return domain


def _normalize_literal(text: str) -> str:
    """'[192.0.2.1]' or '[IPv6:...]' in canonical form; other tags and zone ids are refused."""
    if text.endswith("]"):
        tag, colon, address = text[1:-1].partition(":")
        try:
            if not colon:
                return f"[{ipaddress.IPv4Address(tag)}]"
            if tag.lower() == "ipv6":
                return _ipv6_literal(ipaddress.IPv6Address(address))
        except ValueError:
            pass
    raise AddressError("syntax", f"invalid address literal {text!r}")


def _ipv6_literal(ip: ipaddress.IPv6Address) -> str:
    """RFC 5952 text, spelled out for IPv4-mapped addresses as str() differs by Python version."""
    if ip.scope_id is not None:
        raise ValueError("zone id in address literal")
    mapped = ip.ipv4_mapped
    return f"[ipv6:::ffff:{mapped}]" if mapped else f"[ipv6:{ip.compressed}]"


def _fold_case(name: str) -> str:
    """Lowercase per character, but keep non-ASCII letters whose lowercase is ASCII.

    The Kelvin sign is the one such letter; keeping it makes the comparison with the
    UTS #46 mapping fail, so 'K' cannot pass for 'k'.  Per character because
    str.lower() turns a final capital sigma into 'ς' where UTS #46 gives 'σ'.
    """
    return "".join(c if not c.isascii() and c.lower().isascii() else c.lower() for c in name)


def _normalize_label(label: str, name: str) -> str:
    if not label:
        _bad_domain(name, "empty label")
    if len(label) > MAX_LABEL:
        _bad_domain(name, f"label longer than {MAX_LABEL} characters")
    if not label.isascii():
        return _to_alabel(label, name)
    if not _LDH_LABEL.fullmatch(label):
        _bad_domain(name, f"label {label!r} must be letters, digits, '-', '_' "
                          "and must not start or end with '-'")
    if label.startswith("xn--"):
        _check_alabel(label, name)
    return label


def _to_alabel(label: str, name: str) -> str:
    try:
        return idna.alabel(label).decode("ascii")
    except idna.IDNAError as exc:
        _bad_domain(name, f"invalid internationalised label {label!r} ({exc})")


def _check_alabel(label: str, name: str) -> None:
    try:
        idna.ulabel(label)
    except idna.IDNAError as exc:
        _bad_domain(name, f"invalid A-label {label!r} ({exc})")


def _bad_domain(name: str, reason: str) -> NoReturn:
    raise AddressError("syntax", f"invalid domain {name!r}: {reason}")


def _parse_param(param: str) -> tuple[str, str | None]:
    """One 'KEY=VALUE' or 'KEY' with the keyword uppercased."""
    key, eq, value = param.partition("=")
    if not _KEYWORD.fullmatch(key):
        raise AddressError("syntax", f"invalid ESMTP keyword in {param!r}")
    if eq and (not value or _has_control(value) or any(c.isspace() for c in value)):
        raise AddressError("syntax", f"empty value, space or control character in {param!r}")
    return key.upper(), value if eq else None


def _matches(pattern: str) -> Callable[[str | None], bool]:
    """A value rule: present and matching, ASCII-only and case-insensitive as RFC keywords are."""
    regex = re.compile(pattern, re.ASCII | re.IGNORECASE)
    return lambda value: value is not None and regex.fullmatch(value) is not None


def _no_value(value: str | None) -> bool:
    return value is None


_DSN_EVENT = "(?:SUCCESS|FAILURE|DELAY)"
_VALUE_RULES: dict[str, Callable[[str | None], bool]] = {
    "SIZE": _matches(r"[0-9]{1,20}"),  # RFC 1870
    "BODY": _matches(r"7BIT|8BITMIME|BINARYMIME"),  # RFC 6152, RFC 3030
    "RET": _matches(r"FULL|HDRS"),  # RFC 3461
    "NOTIFY": _matches(rf"NEVER|{_DSN_EVENT}(?:,{_DSN_EVENT})*"),  # RFC 3461
    "SMTPUTF8": _no_value,  # RFC 6531
    "REQUIRETLS": _no_value,  # RFC 8689
    "MT-PRIORITY": _matches(r"[+-]?[0-9]"),  # RFC 6710
}
