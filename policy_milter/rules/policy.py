"""Loading a rules directory into one immutable Policy, or every error it has.

The entry point is ``policy.conf``: ``name = value`` settings and ``include`` lines.
Settings name the table and rule files; every file is read, every error collected,
and nothing is returned unless all of it is right.  A running milter swaps in a new
Policy whole (SIGHUP), so a half-loaded policy never exists.
"""

from __future__ import annotations

import glob
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import ip_address
from pathlib import Path
from typing import Any

from ..patterns import AddressPatterns, DomainPatterns, NetworkPatterns, PatternError, PatternSet
from ..services.dns import DnsConfig
from .rulelist import RuleList, RuleListParser
from .source import Errors, Line, parse_bool, parse_count, parse_size, read_lines
from .tables import Tables

MAIN_FILE = "policy.conf"
# Checks a white entry (``permit skip=...``) may bypass.  Relay, recipient and protocol
# checks are never skippable: a forged sender must not open the relay.
SKIPPABLE = frozenset({"access", "filters", "local_sender", "rdns", "dnsbl", "virus", "spam",
                       "challenge"})


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
            raise ValueError(f"'{text}' is not one of: {', '.join(allowed)}")
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


def _delimiter(text: str) -> str:
    if len(text) > 1 or text.isalnum() or "@" in text:
        raise ValueError(f"'{text}' is not a single punctuation character")
    return text


# name -> (parser, default).  The defaults are what a missing setting means.
SETTINGS: dict[str, tuple[Callable[[str], Any], str]] = {
    "monitor": (parse_bool, "no"),
    "failure_action": (_choice("tempfail", "accept"), "tempfail"),
    "relay_networks": (_patterns(NetworkPatterns), "127.0.0.0/8, ::1/128"),
    "require_helo": (parse_bool, "no"),
    "reject_repeated_helo": (parse_bool, "no"),
    "check_helo_syntax": (parse_bool, "yes"),
    "disallowed_commands": (_words, ""),
    "max_recipients": (parse_count, "100"),
    "max_message_size": (parse_size, "0"),
    "local_sender_requires_auth": (parse_bool, "no"),
    "recipient_delimiter": (_delimiter, ""),
    "list_patterns": (_patterns(AddressPatterns), ""),
    # DNS: nameservers empty means the system resolver.  The budget bounds the DNS time
    # of one stage, well under the MTA's milter command timeout (Postfix: 30 s).
    "dns_nameservers": (_nameservers, ""),
    "dns_port": (_port, "53"),
    "dns_timeout": (_seconds(20), "3"),
    "dns_budget": (_seconds(25), "8"),
    "dns_min_ttl": (parse_count, "5"),
    "dns_max_ttl": (parse_count, "86400"),
    "dns_negative_ttl": (parse_count, "300"),
    "rdns": (_choice("off", "required", "forward-confirmed"), "off"),
    "rdns_generic_names": (_patterns(DomainPatterns), ""),
    "dnsbl_threshold": (parse_count, "1"),
    # Content rules parse messages up to this size; larger ones are matched on headers.
    "content_max_size": (parse_size, "10M"),
    # Virus scanning with clamd (empty: off).  Any scan that cannot say "clean" fails.
    "clamd": (_scanner_address, ""),
    "clamd_timeout": (_seconds(600), "30"),
    "clamd_max_size": (parse_size, "25M"),
    "virus_action": (_choice("reject", "discard", "quarantine"), "reject"),
    "virus_failure_action": (_choice("tempfail", "accept"), "tempfail"),
    # Spam scoring with spamd (empty: off).
    "spamd": (_scanner_address, ""),
    "spamd_timeout": (_seconds(600), "60"),
    "spamd_user": (str, ""),
    "spam_max_size": (parse_size, "2M"),
    "spam_tag_score": (_score, "5.0"),
    "spam_reject_score": (_score, "10.0"),
    "spam_subject_tag": (str, ""),
    "spam_failure_action": (_choice("accept", "tempfail"), "accept"),
    # Challenge-response (off while challenge_store is empty).
    "challenge_store": (str, ""),
    "challenge_recipients": (_patterns(AddressPatterns), ""),
    "challenge_address": (_address, ""),
    "challenge_smtp": (_host_port, "127.0.0.1:25"),
    "challenge_expire": (_duration, "7d"),
}
# Settings that name a file, and how each file is read.
TABLE_FILES = ("domains", "accounts", "aliases", "lists", "relay_recipients", "listeners",
               "dnsbl")
RULE_FILES = {"access": "access_denied", "filters": "filter_rejected"}


@dataclass(frozen=True)
class Policy:
    """Everything the engine decides from.  Never changed after load."""

    source: str
    settings: dict[str, Any]
    where: dict[str, str]  # setting name -> 'path:line', or 'default'
    tables: Tables
    rule_lists: tuple[RuleList, ...] = ()
    files: tuple[str, ...] = field(default=())

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["settings"][name]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def dns_config(self) -> DnsConfig:
        s = self.settings
        return DnsConfig(s["dns_nameservers"], s["dns_port"], s["dns_timeout"],
                         s["dns_min_ttl"], s["dns_max_ttl"], s["dns_negative_ttl"])

    @property
    def uses_dns(self) -> bool:
        return self.settings["rdns"] != "off" or bool(self.tables.zones)

    def summary(self) -> list[str]:
        """What ``policy-milter check`` prints: one line per part of the policy."""
        t = self.tables
        lines = [f"rules: {self.source} ({len(self.files)} files)",
                 f"domains: {len(t.domain_list)}, accounts: {len(t.accounts)}, "
                 f"aliases: {len(t.aliases) + len(t.catchall)}, lists: {len(t.lists)}, "
                 f"relay recipients: {len(t.relay_recipients) + len(t.relay_catchall)}, "
                 f"listeners: {len(t.listeners)}"]
        for rl in self.rule_lists:
            lines.append(f"{rl.name}: {len(rl.mail.rules)} rules at MAIL, "
                         f"{len(rl.rcpt.rules)} at RCPT, {len(rl.eom.rules)} at end of message")
        lines.append(f"dns lists: {len(t.zones)}, reverse DNS: {self.settings['rdns']}, "
                     f"resolver: {', '.join(self.settings['dns_nameservers']) or 'system'}")
        s = self.settings
        lines.append(f"virus scanning: {s['clamd'] or 'off'}, spam scoring: {s['spamd'] or 'off'}"
                     f", challenge-response: {s['challenge_store'] or 'off'}")
        lines.append("monitor mode: " + ("on" if s["monitor"] else "off"))
        return lines


class _Loader:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.errors = Errors()
        self.raw: dict[str, tuple[str, Line]] = {}
        self.files: list[str] = []

    def read_main(self, path: Path, seen: tuple[Path, ...]) -> None:
        self.files.append(str(path))
        for line in read_lines(path, str(path), self.errors):
            words = line.text.split(None, 1)
            if words[0] == "include":
                self.include(line, path, words[1:], seen + (path.resolve(),))
                continue
            name, eq, value = line.text.partition("=")
            name = name.strip()
            if not eq or not name.isidentifier():
                self.errors.add(line.where, "expected 'name = value' or 'include FILE'")
            elif name not in SETTINGS and name not in TABLE_FILES and name not in RULE_FILES:
                self.errors.add(line.where, f"unknown setting '{name}'")
            elif name in self.raw:
                self.errors.add(line.where, f"'{name}' is already set at {self.raw[name][1].where}")
            else:
                self.raw[name] = (value.strip(), line)

    def include(self, line: Line, current: Path, args: list[str], seen: tuple[Path, ...]) -> None:
        if len(args) != 1:
            self.errors.add(line.where, "include takes one file name or pattern")
            return
        pattern = str(current.parent / args[0])
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        for name in matches:
            path = Path(name)
            if path.resolve() in seen:
                self.errors.add(line.where, f"include loop: {str(path)}")
            elif not path.is_file():
                self.errors.add(line.where, f"include: no such file {str(path)}")
            else:
                self.read_main(path, seen)

    def settings(self) -> tuple[dict[str, Any], dict[str, str]]:
        values: dict[str, Any] = {}
        where: dict[str, str] = {}
        given = [n for n in self.raw if n in SETTINGS]  # in file order, for the error order
        for name in given + [n for n in SETTINGS if n not in self.raw]:
            parse, default = SETTINGS[name]
            text, line = self.raw.get(name, (default, None))
            try:
                values[name] = parse(text)
            except ValueError as err:
                self.errors.add(line.where if line else "default", f"{name}: {err}")
            where[name] = line.where if line else "default"
        return values, where

    def file_lines(self, name: str) -> tuple[list[Line], Path] | None:
        if name not in self.raw or not self.raw[name][0]:
            return None
        text, line = self.raw[name]
        path = Path(line.path).parent / text
        self.files.append(str(path))
        return read_lines(path, str(path), self.errors, line.where), path.parent


def load(rules_dir: str | Path) -> Policy:
    """Load ``rules_dir/policy.conf`` and everything it names; raises RuleErrors."""
    root = Path(rules_dir)
    loader = _Loader(root)
    main = root / MAIN_FILE
    if not main.is_file():
        loader.errors.add(str(main), "no such file")
        loader.errors.raise_if_any()
    loader.read_main(main, ())
    settings, where = loader.settings()
    tables = Tables()
    for name in TABLE_FILES:
        got = loader.file_lines(name)
        if got is not None:
            getattr(tables, f"load_{name}")(got[0], loader.errors)
            where[name] = loader.raw[name][1].where
    rule_lists = []
    for name, default in RULE_FILES.items():
        got = loader.file_lines(name)
        if got is not None:
            parser = RuleListParser(name, default, SKIPPABLE, loader.errors)
            rule_lists.append(parser.parse(*got))
    if settings.get("challenge_store") and not settings.get("challenge_address"):
        loader.errors.add(where["challenge_store"], "challenge_store needs challenge_address "
                          "(where challenged senders answer)")
    loader.errors.raise_if_any()
    return Policy(str(root), settings, where, tables, tuple(rule_lists), tuple(loader.files))
