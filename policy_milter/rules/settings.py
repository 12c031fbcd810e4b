"""The settings of ``policy.conf``: one typed, frozen object.

Each field carries the parser of its text and its default, so the list of settings,
their types and their defaults are one declaration.  Code reads ``settings.NAME``:
a misspelt name is an attribute error that the type check in the test suite reports,
never a lookup that fails when a message reaches that line.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from ipaddress import ip_address
from typing import Any

from .. import catalogue, listen
from ..catalogue import Entry, Kind
from ..listen import Address
from ..patterns import AddressPatterns, DomainPatterns, NetworkPatterns, PatternError, PatternSet
from ..services.state import RedisServer
from ..stages import Stage
from .source import parse_bool, parse_count, parse_rate, parse_size, unknown_entry

INHERIT = ""  # a *_failure_action left empty follows failure_action


def _patterns(kind: Callable[[], PatternSet[None]]) -> Callable[[str], PatternSet[None]]:
    def parse(text: str) -> PatternSet[None]:
        patterns = kind()
        for item in filter(None, (p.strip() for p in text.split(","))):
            try:
                patterns.add(item, None)
            except PatternError as err:
                raise ValueError(str(err)) from None
        return patterns
    return parse


def _words(text: str) -> frozenset[str]:
    return frozenset(w.upper() for w in text.replace(",", " ").split())


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text.lower() not in allowed:
            shown = ", ".join(a or "(empty)" for a in allowed)
            raise ValueError(f"'{text}' is not one of: {shown}")
        return text.lower()
    return parse


def _nameservers(text: str) -> tuple[str, ...]:
    servers = tuple(w for w in text.replace(",", " ").split())
    for server in servers:
        try:
            ip_address(server)
        except ValueError:
            raise ValueError(f"'{server}' is not an IP address") from None
    return servers


def _seconds(limit: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text.removesuffix("s"))
        except ValueError:
            raise ValueError(f"'{text}' is not a number of seconds") from None
        if not 0 < value <= limit:
            raise ValueError(f"'{text}' must be more than 0 and at most {limit:g} seconds")
        return value
    return parse


def _port(text: str) -> int:
    port = parse_count(text)
    if not 0 < port < 65536:
        raise ValueError(f"'{text}' is not a port number")
    return port


def _scanner_address(text: str) -> str:
    if text and not re.fullmatch(r"tcp:[^:\s]+:\d{1,5}|unix:/\S+", text):
        raise ValueError(f"'{text}' is not tcp:HOST:PORT or unix:/PATH")
    return text


def _address(text: str) -> str:
    if text and not re.fullmatch(r"[^@\s+]+@[^@\s]+", text):
        raise ValueError(f"'{text}' is not a plain address like challenge@example.com")
    return text.lower()


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"'{text}' is not HOST:PORT")
    return host.strip("[]"), int(port)


def parse_workers(text: str) -> int:
    """A number of worker processes, 1 to 256, or auto (one per core)."""
    if text.lower() == "auto":
        return os.cpu_count() or 1
    count = int(text) if text.isdigit() else 0
    if not 1 <= count <= 256:
        raise ValueError(f"'{text}' is not a number of workers (1-256) or auto")
    return count


def _metrics_address(text: str) -> Address | None:
    if not text:
        return None
    try:
        address = listen.parse(text)
    except listen.AddressError as err:
        raise ValueError(str(err)) from None
    if address.family == "unix":
        raise ValueError(f"'{text}': metrics are served over HTTP: inet:PORT[@HOST] or "
                         "inet6:PORT[@HOST]")
    return address


def _state(text: str) -> str:
    """``embedded``, or the Redis server several milters share."""
    if text.lower() == "embedded":
        return "embedded"
    RedisServer.parse(text)  # ValueError says what is wrong
    return text


def _duration(text: str) -> float:
    m = re.fullmatch(r"(\d+)([smhd]?)", text)
    if not m:
        raise ValueError(f"'{text}' is not a duration (like 7d, 12h, 30m)")
    return int(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def _score(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"'{text}' is not a score (a number like 5.0)") from None


def _delimiters(text: str) -> str:
    """Postfix's recipient_delimiter: one or more characters, any of which starts the
    extension.  Letters, digits, '@' and white space would split ordinary names."""
    if any(c.isalnum() or c.isspace() or c in '@"\\' or not c.isprintable() for c in text):
        raise ValueError(f"'{text}' is not a set of punctuation characters (like + or +-)")
    return "".join(dict.fromkeys(text))


def _bounded(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = parse_count(text)
        if not low <= value <= high:
            raise ValueError(f"'{text}' must be from {low} to {high}")
        return value
    return parse


def _unscannable(text: str) -> Entry | None:
    """``accept`` (None: pass, marked) or ``reject [ENTRY]`` (a 5xx sendable at end of
    message; ``content_rejected`` by default)."""
    verb, *rest = text.split()
    if verb.lower() == "accept" and not rest:
        return None
    if verb.lower() != "reject" or len(rest) > 1:
        raise ValueError(f"'{text}' is not 'accept', 'reject' or 'reject ENTRY'")
    name = rest[0] if rest else "content_rejected"
    try:
        entry = catalogue.get(name)
    except catalogue.UnknownEntry:
        raise ValueError(unknown_entry(name)) from None
    if entry.kind is not Kind.REPLY or entry.temporary or Stage.EOM not in entry.stages:
        raise ValueError(f"'{name}' is not a 5xx reply the milter can send at end of message "
                         "(a message too big to scan stays too big: never a 4xx)")
    return entry


def _setting(parse: Callable[[str], Any], default: str) -> Any:
    return field(metadata={"parse": parse, "default": default})


_failure = _choice(INHERIT, "tempfail", "accept")


@dataclass(frozen=True)
class Settings:
    """Every policy.conf setting, parsed.  The field order is the file's documentation order."""

    monitor: bool = _setting(parse_bool, "no")
    failure_action: str = _setting(_choice("tempfail", "accept"), "tempfail")
    relay_networks: NetworkPatterns[None] = _setting(_patterns(NetworkPatterns),
                                                     "127.0.0.0/8, ::1/128")
    require_helo: bool = _setting(parse_bool, "no")
    reject_repeated_helo: bool = _setting(parse_bool, "no")
    check_helo_syntax: bool = _setting(parse_bool, "yes")
    disallowed_commands: frozenset[str] = _setting(_words, "")
    max_recipients: int = _setting(parse_count, "100")
    max_message_size: int = _setting(parse_size, "0")
    local_sender_requires_auth: bool = _setting(parse_bool, "no")
    recipient_delimiter: str = _setting(_delimiters, "")
    list_patterns: AddressPatterns[None] = _setting(_patterns(AddressPatterns), "")
    # DNS: nameservers empty means the system resolver.  The budget bounds the DNS time
    # of one stage, well under the MTA's milter command timeout (Postfix: 30 s).
    dns_nameservers: tuple[str, ...] = _setting(_nameservers, "")
    dns_port: int = _setting(_port, "53")
    dns_timeout: float = _setting(_seconds(20), "3")
    dns_budget: float = _setting(_seconds(25), "8")
    dns_min_ttl: int = _setting(parse_count, "5")
    dns_max_ttl: int = _setting(parse_count, "86400")
    dns_negative_ttl: int = _setting(parse_count, "300")
    dns_failure_action: str = _setting(_failure, INHERIT)
    rdns: str = _setting(_choice("off", "required", "forward-confirmed"), "off")
    rdns_generic_names: DomainPatterns[None] = _setting(_patterns(DomainPatterns), "")
    dnsbl_threshold: int = _setting(parse_count, "1")
    # Content rules: the decoded text body rules read (all text parts together), how
    # deep MIME may nest, archives inside archives, their entries and unpacked bytes,
    # and the time one message's pass may take.  Past any of them: not fully checked.
    content_max_size: int = _setting(parse_size, "10M")
    mime_max_depth: int = _setting(_bounded(1, 100), "100")
    archive_max_depth: int = _setting(_bounded(1, 20), "4")
    archive_max_entries: int = _setting(_bounded(1, 1_000_000), "10000")
    archive_max_size: int = _setting(parse_size, "50M")
    content_timeout: float = _setting(_seconds(300), "20")
    # A message a scanner cannot check whole (too big, or over the scanner's own limits).
    unscannable_action: Entry | None = _setting(_unscannable, "accept")
    # Virus scanning with clamd (empty: off).
    clamd: str = _setting(_scanner_address, "")
    clamd_timeout: float = _setting(_seconds(600), "30")
    clamd_max_size: int = _setting(parse_size, "25M")
    virus_action: str = _setting(_choice("reject", "discard", "quarantine"), "reject")
    virus_failure_action: str = _setting(_failure, INHERIT)
    # Spam scoring with spamd (empty: off).
    spamd: str = _setting(_scanner_address, "")
    spamd_timeout: float = _setting(_seconds(600), "60")
    spamd_user: str = _setting(str, "")
    spam_max_size: int = _setting(parse_size, "2M")
    spam_tag_score: float = _setting(_score, "5.0")
    spam_reject_score: float = _setting(_score, "10.0")
    spam_subject_tag: str = _setting(str, "")
    spam_failure_action: str = _setting(_failure, INHERIT)
    # Challenge-response (off while challenge_store is empty).
    challenge_store: str = _setting(str, "")
    challenge_recipients: AddressPatterns[None] = _setting(_patterns(AddressPatterns), "")
    challenge_address: str = _setting(_address, "")
    challenge_smtp: tuple[str, int] = _setting(_host_port, "127.0.0.1:25")
    challenge_expire: float = _setting(_duration, "7d")
    # At most this many challenges per client address and per sender domain.
    challenge_limit: tuple[int, int] = _setting(parse_rate, "10/1h")
    # Processes serving the socket (auto: one per core); more than one needs a shared store.
    workers: int = _setting(parse_workers, "1")
    # Prometheus metrics at http://HOST:PORT/metrics (empty: off; needs prometheus_client).
    metrics: Address | None = _setting(_metrics_address, "")
    # Tables from SQL (TABLE = sql:NAME): seconds one query may take, connecting included;
    # how long an answer ("no such row" too) is kept, and how many are kept per table.
    sql_timeout: float = _setting(_seconds(20), "2")
    sql_cache_ttl: int = _setting(parse_count, "60")
    sql_cache_size: int = _setting(_bounded(1, 10_000_000), "10000")
    # The state store (rate counters, greylisting, challenge allow lists): embedded, a
    # SQLite file (empty: $STATE_DIRECTORY/state.sqlite3 under systemd, else memory
    # only), or redis://HOST:PORT/DB shared by several milters.
    state: str = _setting(_state, "embedded")
    state_file: str = _setting(str, "")
    state_timeout: float = _setting(_seconds(30), "1")
    state_prefix: str = _setting(str, "policy-milter:")
    state_password_file: str = _setting(str, "")
    # Greylisting: a first-seen (client network, sender, recipient) triplet is told to
    # retry; a retry after the delay and within the window passes.
    greylist: bool = _setting(parse_bool, "no")
    greylist_delay: float = _setting(_duration, "5m")
    greylist_retry_window: float = _setting(_duration, "2d")
    greylist_expire: float = _setting(_duration, "35d")
    greylist_auto_allow: int = _setting(parse_count, "5")
    greylist_ipv4_prefix: int = _setting(_bounded(8, 32), "24")
    greylist_ipv6_prefix: int = _setting(_bounded(16, 128), "64")

    def failure_setting(self, setting: str) -> str:
        """The setting that decides what a dependency failure means for a check governed
        by ``setting``: itself, or ``failure_action`` when it is left empty."""
        return setting if getattr(self, setting) else "failure_action"

    def failure(self, setting: str) -> str:
        """What a dependency failure means for a check governed by ``setting``."""
        action: str = getattr(self, self.failure_setting(setting))
        return action


NAMES = tuple(f.name for f in fields(Settings))
FAILURE_SETTINGS = frozenset(n for n in NAMES if n.endswith("failure_action"))


def parse(raw: Mapping[str, tuple[str, str]], report: Callable[[str, str], None]
          ) -> tuple[Settings | None, dict[str, str]]:
    """Settings from ``{name: (text, 'path:line')}``; missing ones take their default.
    Every bad value is reported; the Settings come back only when all of them parsed."""
    values: dict[str, Any] = {}
    where: dict[str, str] = {}
    given = [n for n in raw if n in NAMES]  # in file order, for the error order
    ok = True
    for name in given + [n for n in NAMES if n not in raw]:
        spec = next(f for f in fields(Settings) if f.name == name).metadata
        text, at = raw.get(name, (spec["default"], "default"))
        try:
            values[name] = spec["parse"](text)
        except ValueError as err:
            report(at, f"{name}: {err}")
            ok = False
        where[name] = at
    return (Settings(**values) if ok else None), where
