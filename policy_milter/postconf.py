"""``policy-milter check --postfix``: Postfix settings that undo the milter.

Reads ``postconf -n`` and ``postconf -M`` (or a main.cf and a master.cf) and looks at
every smtpd service with the parameters it runs with: main.cf's, its own ``-o`` options
over them, Postfix's defaults under both.  Findings:

- errors, whatever ``--strict`` says, for what makes every message of a service fail or
  pass unchecked: ``smtpd_milters`` does not reach the milter's socket (compared
  normalised: ``inet:127.0.0.1:8894`` is ``inet:8894@127.0.0.1``, ``localhost`` is
  loopback, a relative ``unix:`` path is in the queue directory), or reaches it only
  outside the chroot of a chrooted smtpd (chroot ``y``; ``-`` is ``n`` since Postfix 3.0);
- warnings for the rest: a service with ``-o smtpd_milters=`` (a content filter's
  re-injection port may mean it), mail passing unchecked while the milter is away
  (``milter_default_action = accept``), a command timeout the rules' ``dns_budget`` can
  reach, Postfix size and recipient limits under the rules', and restrictions that answer
  before the milter does and so pre-empt one of its checks.

contrib/postfix/main.cf keeps ``check_client_access static:OK, reject_unauth_destination``
on purpose (Postfix insists on the second): what follows an unconditional permit in a
restriction list is never reached, so it is not flagged.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from ipaddress import ip_address
from pathlib import Path

from .addresses import client_ip
from .rules.lint import Finding, position, setting_at, size
from .rules.policy import Policy
from .rules.source import PERIOD_UNITS, Line

# Postfix 3.x's defaults of what is checked here.
DEFAULTS = {
    "queue_directory": "/var/spool/postfix",
    "smtpd_milters": "",
    "milter_default_action": "tempfail",
    "milter_command_timeout": "30s",
    "milter_macro_daemon_name": "$myhostname",
    "message_size_limit": "10240000",
    "smtpd_recipient_limit": "1000",
    "smtpd_helo_required": "no",
    "smtpd_reject_unlisted_recipient": "yes",
    "smtpd_client_restrictions": "",
    "smtpd_helo_restrictions": "",
    "smtpd_sender_restrictions": "",
    "smtpd_relay_restrictions": "permit_mynetworks, permit_sasl_authenticated, "
                                "defer_unauth_destination",
    "smtpd_recipient_restrictions": "",
}
RESTRICTION_LISTS = ("smtpd_client_restrictions", "smtpd_helo_restrictions",
                     "smtpd_sender_restrictions", "smtpd_relay_restrictions",
                     "smtpd_recipient_restrictions")
# Restrictions that answer before the milter sees the command, and what they take from it.
PRE_EMPTING = (
    (r"(reject|defer)_unauth_destination",
     "the milter's relay check (relay_denied): put check_client_access static:OK before it, "
     "as contrib/postfix/main.cf does (safe with milter_default_action = tempfail)"),
    (r"reject_unlisted_recipient|reject_unverified_recipient",
     "the milter's recipients check (unknown_user_local, unknown_user_relay): remove it"),
    (r"reject_unknown_recipient_domain",
     "the milter's relay and recipients checks (relay_denied, unknown_user_local): remove it"),
    (r"reject_non_fqdn_recipient",
     "the milter's answer to a recipient without a domain (domain_required): remove it"),
    (r"reject_unknown_(reverse_)?client_hostname",
     "the milter's rdns check, and no white entry of the rules can let a client past it: "
     "remove it and set rdns in policy.conf"),
    (r"(reject|permit)_(rbl|rhsbl|dnswl|rhswl)_\w+",
     "the milter's dnsbl check, and no white entry, monitor zone or allow zone of the rules "
     "can change its answer: remove it and list the zone in the dnsbl table"),
    (r"check_\w+_access",
     "the milter's access rules, and no white entry of the rules can change its answer: "
     "write its entries as access rules"),
)
_TAKES_ARGUMENT = re.compile(r"check_\w+|(reject|permit)_(rbl|rhsbl|dnswl|rhswl)_\w+")
_HARMLESS_MAP = re.compile(r"static:(ok|dunno|permit)", re.IGNORECASE)
_REFERENCE = re.compile(r"\$(?:\{(\w+)\}|\((\w+)\)|(\w+))")
_TIME = re.compile(r"(\d+)([smhdw]?)")
_TIME_UNITS = {"": 1, **PERIOD_UNITS, "w": 604800}
_PARAMETER = re.compile(r"([A-Za-z0-9_]+)\s*=\s*(.*)", re.S)
_WILDCARDS = {"0.0.0.0": {"127.0.0.1"}, "::": {"::1"}}


class PostfixError(Exception):
    """The Postfix configuration could not be read (the message says where)."""


@dataclass(frozen=True)
class Value:
    text: str
    where: str  # path:line, or the main.cf path for a default
    default: bool = False
    service: str = ""  # the master.cf service whose -o set it


@dataclass(frozen=True)
class Service:
    name: str
    chroot: str  # y, n or -
    command: str
    where: str
    options: dict[str, Value] = field(default_factory=dict)


@dataclass(frozen=True)
class Config:
    main: dict[str, Value]
    services: tuple[Service, ...]
    main_file: str  # where Postfix's defaults are said to be

    def get(self, name: str, service: Service | None = None) -> Value:
        """A parameter as ``service`` runs with it, ``$name`` references expanded."""
        found = (service.options.get(name) if service else None) or self.main.get(name) \
            or Value(DEFAULTS.get(name, ""), self.main_file, default=True)
        return Value(self._expand(found.text, 0), found.where, found.default, found.service)

    def _expand(self, text: str, depth: int) -> str:
        def one(match: re.Match[str]) -> str:
            name = next(g for g in match.groups() if g)
            known = self.main.get(name)
            value = known.text if known else DEFAULTS.get(name)
            return match.group(0) if value is None or depth > 10 else self._expand(value, depth + 1)
        return _REFERENCE.sub(one, text)


# --- reading ------------------------------------------------------------------------------

def logical_lines(text: str, label: str) -> list[Line]:
    """Postfix's form: blank lines and lines whose first non-blank is ``#`` are skipped (a
    ``#`` elsewhere is text), and a line that starts with white space continues."""
    lines: list[Line] = []
    for number, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        if raw[0] in " \t" and lines:
            lines[-1] = Line(label, lines[-1].number, f"{lines[-1].text} {raw.strip()}")
        else:
            lines.append(Line(label, number, raw.strip()))
    return lines


def tokens(text: str, commas: bool = False) -> list[str]:
    """Words split at white space (and commas), a ``{ ... }`` group being one word however
    it nests, as Postfix splits master.cf arguments and parameter lists."""
    found, word, depth = [], "", 0
    for ch in text:
        depth += (ch == "{") - (ch == "}")
        if depth == 0 and (ch.isspace() or commas and ch == ","):
            if word:
                found.append(word)
            word = ""
        else:
            word += ch
    return found + [word] if word else found


def _main(lines: list[Line]) -> dict[str, Value]:
    params = {}
    for line in lines:
        m = _PARAMETER.fullmatch(line.text)
        if m is None:
            raise PostfixError(f"{line.where}: not a main.cf line (name = value)")
        params[m.group(1)] = Value(m.group(2).strip(), line.where)  # the last one counts
    return params


def _services(lines: list[Line]) -> tuple[Service, ...]:
    services = []
    for line in lines:
        words = tokens(line.text)
        if len(words) < 8:
            raise PostfixError(f"{line.where}: not a master.cf service line "
                               "(service type private unpriv chroot wakeup maxproc command)")
        options = {}
        for flag, option in zip(words[8:], words[9:]):
            if flag == "-o":
                inner = option[1:-1].strip() if option.startswith("{") else option
                name, _, value = inner.partition("=")
                options[name.strip()] = Value(value.strip(), line.where, service=words[0])
        services.append(Service(words[0], words[4], words[7], line.where, options))
    return tuple(services)


def read_files(paths: list[str]) -> Config:
    """A main.cf and a master.cf (or saved ``postconf -n`` and ``-M``), told apart by
    their lines; a missing one is Postfix's defaults, or no service at all."""
    main: dict[str, Value] = {}
    services: tuple[Service, ...] = ()
    main_file = "main.cf"
    for path in paths:
        try:
            lines = logical_lines(Path(path).read_text(encoding="utf-8"), path)
        except (OSError, UnicodeDecodeError) as err:
            raise PostfixError(f"{path}: cannot read: {err}") from None
        if lines and _PARAMETER.fullmatch(lines[0].text):
            main, main_file = _main(lines), path
        else:
            services = _services(lines)
    return Config(main, services, main_file)


def run_postconf(config_dir: str | None) -> Config:
    """``postconf -n`` and ``-M`` of the configuration in ``config_dir`` (Postfix's own
    when None), each value placed at its line in the files postconf read."""
    command = ["postconf", *(["-c", config_dir] if config_dir else [])]

    def output(*args: str) -> str:
        try:
            done = subprocess.run([*command, *args], capture_output=True, text=True,
                                  timeout=60, check=False)
        except OSError as err:
            raise PostfixError(f"cannot run postconf: {err}") from None
        if done.returncode != 0:
            raise PostfixError(f"{' '.join(command + list(args))} failed: {done.stderr.strip()}")
        return done.stdout

    directory = Path(output("-h", "config_directory").strip())
    main_file, master_file = str(directory / "main.cf"), str(directory / "master.cf")
    main = _main(logical_lines(output("-n"), main_file))
    services = _services(logical_lines(output("-M"), master_file))
    try:
        main_at = {n: v.where for n, v in _main(_file_lines(main_file)).items()}
        master_at = {s.name: s.where for s in _services(_file_lines(master_file))}
    except (OSError, UnicodeDecodeError, PostfixError):
        main_at, master_at = {}, {}  # the file postconf read is not ours to read: no lines
    main = {n: Value(v.text, main_at.get(n, main_file)) for n, v in main.items()}
    services = tuple(_placed(s, master_at.get(s.name, master_file)) for s in services)
    return Config(main, services, main_file)


def _file_lines(path: str) -> list[Line]:
    return logical_lines(Path(path).read_text(encoding="utf-8"), path)


def _placed(service: Service, where: str) -> Service:
    options = {n: Value(v.text, where, service=v.service) for n, v in service.options.items()}
    return Service(service.name, service.chroot, service.command, where, options)


# --- sockets ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Endpoint:
    """A milter socket, normalised: ``unix`` with an absolute path, or ``inet`` with a
    host (an address as Python writes it, or a lower-case name) and a port."""

    kind: str
    path: str = ""
    host: str = ""
    port: int = 0

    def reaches(self, milter: Endpoint) -> bool:
        if self.kind != milter.kind:
            return False
        if self.kind == "unix":
            return self.path == milter.path
        return self.port == milter.port and bool(_addresses(self.host) & _listening(milter.host))


def milter_endpoint(spec: str) -> Endpoint:
    """The milter's ``--socket``: ``inet:PORT@HOST``, ``inet6:PORT@HOST``, ``unix:/PATH``."""
    kind, _, rest = spec.partition(":")
    if kind in ("unix", "local"):
        return Endpoint("unix", path=os.path.normpath(rest))
    port, _, host = rest.partition("@")
    return Endpoint("inet", host=_host(host), port=int(port))


def postfix_endpoint(address: str, queue: str, chroot: bool) -> Endpoint | None:
    """A Postfix milter address as the smtpd that uses it reaches it: a relative unix path
    is in the queue directory, an absolute one too when smtpd runs chrooted there."""
    kind, _, rest = address.partition(":")
    if kind.lower() in ("unix", "local") and rest:
        path = rest if rest.startswith("/") and not chroot else os.path.join(queue, rest.lstrip("/"))
        return Endpoint("unix", path=os.path.normpath(path))
    host, _, port = rest.rpartition(":")
    if kind.lower() == "inet" and host and port.isdigit():
        return Endpoint("inet", host=_host(host), port=int(port))
    return None


def postfix_form(milter: Endpoint, queue: str) -> str:
    """How smtpd_milters names the milter's socket (relative to the queue directory when
    it is in it, which a chrooted smtpd reads the same)."""
    if milter.kind == "unix":
        inside = os.path.commonpath([milter.path, queue]) == os.path.normpath(queue)
        return f"unix:{os.path.relpath(milter.path, queue) if inside else milter.path}"
    host = min(_WILDCARDS.get(milter.host, {milter.host}))
    return f"inet:{f'[{host}]' if ':' in host else host}:{milter.port}"


def _host(text: str) -> str:
    """An address as the milter reads a client's (IPv4-mapped as IPv4), else the name."""
    ip = client_ip(text)
    return str(ip) if ip is not None else text.strip().strip("[]").lower()


def _addresses(host: str) -> set[str]:
    """The addresses a host stands for: ``localhost`` is loopback (RFC 6761)."""
    return {"127.0.0.1", "::1"} if host == "localhost" or host.endswith(".localhost") else {host}


def _listening(host: str) -> set[str]:
    """The addresses that surely reach a milter listening on ``host``."""
    return _addresses(host) | _WILDCARDS.get(host, set())


def _uncertain(end: Endpoint, milter: Endpoint) -> bool:
    """Whether an inet address on the milter's port may reach it or not, as far as the
    text says: a host name, or any address when the milter listens on every interface."""
    if end.kind != "inet" or milter.kind != "inet" or end.port != milter.port:
        return False
    try:
        ip_address(end.host)
    except ValueError:
        return _addresses(end.host) == {end.host}
    return milter.host in _WILDCARDS


# --- findings -----------------------------------------------------------------------------

def check(policy: Policy, socket: str, files: list[str], config_dir: str | None) -> list[Finding]:
    """The findings about the Postfix in ``files``, or the one postconf reads."""
    if files and config_dir:
        raise PostfixError("--postfix-config DIR is for postconf: give it no FILE")
    config = read_files(files) if files else run_postconf(config_dir)
    return findings(config, policy, milter_endpoint(socket), socket)


def findings(config: Config, policy: Policy, milter: Endpoint, socket: str) -> list[Finding]:
    """Every finding, each once (a main.cf line shared by several services is one)."""
    smtpd: list[Service | None] = [s for s in config.services if s.command == "smtpd"]
    found: dict[Finding, None] = {}
    for service in smtpd or [None]:
        found.update(dict.fromkeys(_service(config, policy, service, milter, socket)))
    return sorted(found, key=position)


def _label(value: Value) -> str:
    """How a finding names a parameter: with its service when master.cf set it."""
    return f"service {value.service}: " if value.service else ""


def _service(config: Config, policy: Policy, service: Service | None, milter: Endpoint,
             socket: str) -> Iterator[Finding]:
    yield from _milters(config, policy, service, milter, socket)
    yield from _limits(config, policy, service)
    yield from _restrictions(config, policy, service)


def _milters(config: Config, policy: Policy, service: Service | None, milter: Endpoint,
             socket: str) -> Iterator[Finding]:
    queue = config.get("queue_directory").text
    chroot = service is not None and service.chroot == "y"
    value = config.get("smtpd_milters", service)
    entries = [tokens(e[1:-1], commas=True) if e.startswith("{") else [e]
               for e in tokens(value.text, commas=True)]
    write = f"write smtpd_milters = {postfix_form(milter, queue)} (the milter's --socket {socket})"
    if not entries and value.service:
        yield Finding(value.where, f"{_label(value)}-o smtpd_milters= turns the milter off: mail "
                      "this service receives passes unchecked; remove the override, unless the "
                      "service only takes mail back from a content filter")
        return
    if not entries:
        yield Finding(value.where, f"smtpd_milters is empty"
                      f"{' (Postfix default)' if value.default else ''}: every message passes "
                      f"unchecked; {write}", fatal=True)
        return
    reached = next((e for e in entries if (end := postfix_endpoint(e[0], queue, chroot))
                    and end.reaches(milter)), None)
    if reached is None:
        yield _unreached(value, service, [e[0] for e in entries], queue, milter, write)
        return
    yield from _milter_settings(config, policy, service, dict(
        s.partition("=")[::2] for s in reached[1:]), value)


def _unreached(value: Value, service: Service | None, addresses: list[str], queue: str,
               milter: Endpoint, write: str) -> Finding:
    """Why no milter of smtpd_milters is the policy milter: a chroot between them, a host
    the text cannot place, or another socket."""
    unchrooted = [(a, end) for a in addresses
                  if (end := postfix_endpoint(a, queue, False)) is not None]
    outside = [a for a, end in unchrooted if end.reaches(milter)]
    names = [a for a, end in unchrooted if _uncertain(end, milter)]
    said = f"{_label(value)}smtpd_milters = {value.text}"
    if outside and service is not None:
        inside = os.path.join(queue, outside[0].partition(":")[2].lstrip("/"))
        return Finding(service.where, f"service {service.name} runs chrooted in {queue} "
                       f"(master.cf chroot column), where {outside[0]} is {inside}, not the "
                       "milter's socket: every message it receives fails or passes unchecked; "
                       "set its chroot column to n, or run the milter with a socket in the "
                       f"queue directory (--socket unix:{queue}/policy-milter/milter.sock, "
                       "smtpd_milters = unix:policy-milter/milter.sock)", fatal=True)
    if names:
        return Finding(value.where, f"{said}: check cannot tell whether {names[0]} reaches "
                       f"the milter; {write}")
    return Finding(value.where, f"{said} does not reach the milter's socket: every message "
                   "gets milter_default_action (tempfailed, or passed unchecked under accept); "
                   f"{write}", fatal=True)


def _milter_settings(config: Config, policy: Policy, service: Service | None,
                     own: dict[str, str], milters: Value) -> Iterator[Finding]:
    """The milter's default action and command timeout: its own ``{ ... }`` settings in
    smtpd_milters, else the service's, else main.cf's, else Postfix's."""
    def setting(name: str) -> tuple[str, str, Value]:
        """Its value, how a finding quotes it, and where it is set."""
        if name in own:
            text = own[name].strip()
            return text, f"{name}={text} in smtpd_milters", milters
        value = config.get(f"milter_{name}", service)
        return value.text, f"milter_{name} = {value.text}", value

    text, said, value = setting("default_action")
    if text.lower() == "accept":
        yield Finding(value.where, f"{_label(value)}{said}: while the milter is away or slow, "
                      "mail passes unchecked; write tempfail (Postfix's default): clients retry")
    text, said, value = setting("command_timeout")
    seconds = _seconds(text)
    budget = policy.settings.dns_budget
    if seconds is None:
        yield Finding(value.where, f"{_label(value)}{said} is not a Postfix time (like 30s)")
    elif seconds <= budget:
        yield Finding(value.where, f"{_label(value)}{said} is not above the rules' dns_budget = "
                      f"{budget:g} s ({setting_at(policy, 'dns_budget')}): Postfix gives up on the "
                      "milter while it waits for DNS, and milter_default_action answers; write "
                      "30s (Postfix's default)")


def _seconds(text: str) -> int | None:
    m = _TIME.fullmatch(text.lower())
    return int(m.group(1)) * _TIME_UNITS[m.group(2)] if m else None


def _limits(config: Config, policy: Policy, service: Service | None) -> Iterator[Finding]:
    """Postfix's size and recipient limits answer before the milter's: they must stay
    above the rules' (of the listener this service is, by milter_macro_daemon_name)."""
    s, t = policy.settings, policy.tables

    def applies(value: int, setting: str) -> bool:
        """A table's limit above the server's never applies (lint says so): only the
        limits that can refuse count here."""
        server: int = getattr(s, setting)
        return not server or value <= server

    listener = t.listeners.get(config.get("milter_macro_daemon_name", service).text.lower())
    sizes = [(s.max_message_size, f"max_message_size = {size(s.max_message_size)} "
                                  f"({setting_at(policy, 'max_message_size')})")]
    sizes += [(getattr(o.limits, a), f"{a}={size(getattr(o.limits, a))} ({o.where})")
              for o in t.limited() for a in ("max_size", "max_receive_size")
              if applies(getattr(o.limits, a), "max_message_size")]
    if listener is not None and applies(listener.max_size, "max_message_size"):
        sizes.append((listener.max_size, f"max_size={size(listener.max_size)} ({listener.where})"))
    counts = [(s.max_recipients, f"max_recipients = {s.max_recipients} "
                                 f"({setting_at(policy, 'max_recipients')})")]
    counts += [(o.limits.max_recipients, f"max_recipients={o.limits.max_recipients} ({o.where})")
               for o in t.limited() if applies(o.limits.max_recipients, "max_recipients")]
    for name, rules, reply in (
            ("message_size_limit", sizes, '"552 5.3.4 Message size exceeds fixed limit"'),
            ("smtpd_recipient_limit", counts, '"452 4.5.3 Error: too many recipients"')):
        value = config.get(name, service)
        largest, what = max(rules, key=lambda r: r[0])
        if not value.text.isdigit():
            yield Finding(value.where, f"{_label(value)}{name} = {value.text} is not a number")
        elif largest and 0 < int(value.text) <= largest:
            yield Finding(value.where, f"{_label(value)}{name} = {value.text}"
                          f"{' (Postfix default)' if value.default else ''} is not above the "
                          f"rules' {what}: Postfix answers first ({reply}), and the milter's "
                          f"reply never reaches the client; write a {name} above {largest}")


def _restrictions(config: Config, policy: Policy, service: Service | None) -> Iterator[Finding]:
    helo = config.get("smtpd_helo_required", service)
    if helo.text.lower() == "yes" and policy.settings.require_helo:
        yield Finding(helo.where, f"{_label(helo)}smtpd_helo_required = yes: Postfix answers MAIL "
                      "FROM without a greeting itself, before the milter's helo_required "
                      "(require_helo = yes); write smtpd_helo_required = no")
    unlisted = config.get("smtpd_reject_unlisted_recipient", service)
    if unlisted.text.lower() == "yes":
        yield Finding(unlisted.where, f"{_label(unlisted)}smtpd_reject_unlisted_recipient = yes"
                      f"{' (Postfix default)' if unlisted.default else ''}: Postfix refuses the "
                      "recipients its own maps do not list, before the milter's recipients "
                      "check (unknown_user_local, unknown_user_relay); write "
                      "smtpd_reject_unlisted_recipient = no")
    for name in RESTRICTION_LISTS:
        value = config.get(name, service)
        words = iter(tokens(value.text, commas=True))
        for word in words:
            argument = next(words, "") if _TAKES_ARGUMENT.fullmatch(word.lower()) else ""
            harmless = _HARMLESS_MAP.fullmatch(argument)
            if word.lower() == "permit" or word.lower() == "check_client_access" and harmless:
                break  # nothing after an unconditional permit is reached
            why = next((why for pattern, why in PRE_EMPTING
                        if re.fullmatch(pattern, word.lower())), None)
            if why is not None and not harmless:
                yield Finding(value.where, f"{_label(value)}{name}: {word} {argument}".rstrip()
                              + f"{' (Postfix default)' if value.default else ''} answers before "
                              f"the milter and pre-empts {why}")
