"""What ``policy-milter check`` finds wrong in rules that load: mistakes of meaning.

The loader refuses what it cannot read.  These rules load, and then do what their
writer cannot have meant: a local domain that refuses every recipient, a rule that an
earlier one always answers for, a limit that never applies, a DNS list asked through a
resolver it refuses.  Each finding names the line it is about and what to write
instead.  Only what follows from the rules themselves is reported, never a guess about
the mail to come: a rule is "never decides" only when every value it matches is
provably matched by an earlier one.
"""

from __future__ import annotations

import importlib.util
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from ipaddress import ip_address
from pathlib import Path
from typing import Any

from ..patterns import AddressPatterns, IPNetwork, NetworkPatterns, PatternSet
from ..services.sql import Connection, Database, TableError
from .policy import Policy
from .rulelist import FIELDS, Condition, Rule
from .tables import Domain, DomainKind

# DNS lists with terms of use that refuse queries from shared resolvers, or answer them
# with codes that would list everyone (zones under these domains).  Spamhaus's keyed
# Data Query Service (dq.spamhaus.net) is made for any resolver and is not here.
PUBLIC_DNSBLS = (
    "spamhaus.org", "spamcop.net", "sorbs.net", "barracudacentral.org", "uceprotect.net",
    "mailspike.net", "abuseat.org", "dnswl.org", "surbl.org", "uribl.com",
    "psbl.surriel.com", "blocklist.de", "spameatingmonkey.net", "0spam.org", "manitu.net",
    "dronebl.org", "senderscore.com", "backscatterer.org", "junkemailfilter.com",
    "s5h.net", "nordspam.com", "justspam.org",
)
# Resolvers that many sites share: Google, Cloudflare, Quad9, OpenDNS, Level3,
# AdGuard, CleanBrowsing, Comodo, Yandex, DNS.WATCH.
PUBLIC_RESOLVERS = frozenset(ip_address(a) for a in (
    "8.8.8.8", "8.8.4.4", "2001:4860:4860::8888", "2001:4860:4860::8844",
    "1.1.1.1", "1.0.0.1", "1.1.1.2", "1.0.0.2", "1.1.1.3", "1.0.0.3",
    "2606:4700:4700::1111", "2606:4700:4700::1001",
    "9.9.9.9", "149.112.112.112", "9.9.9.10", "9.9.9.11", "2620:fe::fe", "2620:fe::9",
    "208.67.222.222", "208.67.220.220", "2620:119:35::35", "2620:119:53::53",
    "4.2.2.1", "4.2.2.2", "4.2.2.3", "4.2.2.4", "4.2.2.5", "4.2.2.6",
    "94.140.14.14", "94.140.15.15", "185.228.168.9", "185.228.169.9",
    "8.26.56.26", "8.20.247.20", "77.88.8.8", "77.88.8.1", "84.200.69.80", "84.200.70.40",
))
# Limits of domains and accounts that a server setting of policy.conf also bounds.
SERVER_LIMITS = (("max_recipients", "max_recipients"), ("max_size", "max_message_size"),
                 ("max_receive_size", "max_message_size"))
_UNITS = (("G", 1024**3), ("M", 1024**2), ("K", 1024))
# What a table from SQL is asked when it is checked: keys no site has.
PROBE_KEYS = {"domains": "policy-milter.invalid", "accounts": "probe@policy-milter.invalid",
              "aliases": "probe@policy-milter.invalid", "lists": "probe@policy-milter.invalid",
              "relay_recipients": "probe@policy-milter.invalid"}


@dataclass(frozen=True)
class Finding:
    """One problem: where it is (``path:line``), and what is wrong and what to write."""

    where: str
    message: str
    fatal: bool = False  # every message fails or passes unchecked: an error even unasked

    def line(self, strict: bool) -> str:
        kind = "error" if self.fatal or strict else "warning"
        return f"{self.where}: {kind}: {self.message}"


def position(finding: Finding) -> tuple[str, int]:
    """How findings sort: by file, then by line number (not as text: 9 before 10)."""
    path, _, line = finding.where.rpartition(":")
    return (path, int(line)) if line.isdigit() else (finding.where, 0)


def check(policy: Policy) -> list[Finding]:
    """Every finding about a loaded policy, in file and line order."""
    found = [*_domains_without_mailboxes(policy), *_limits(policy), *_settings(policy),
             *_host_bits(policy), *_public_lists(policy), *_sql_tables(policy)]
    for rule_list in policy.rule_lists:
        for _, index in rule_list.stages():
            found += _walk(policy, index.rules)
    return sorted(found, key=position)


def size(octets: int) -> str:
    """Octets as rule files write them: 10M rather than 10485760."""
    return next((f"{octets // n}{unit}" for unit, n in _UNITS if octets % n == 0), str(octets))


def setting_at(policy: Policy, name: str) -> str:
    """Where a setting is set, for a message: its line, or "the default"."""
    at = policy.where[name]
    return "the default" if at == "default" else at


# --- tables and settings ---------------------------------------------------------------

def _domains_without_mailboxes(policy: Policy) -> Iterator[Finding]:
    """A local domain refuses every address no account, alias or list names (and a list
    domain every address that is not a list): with none of them, every recipient.
    Mailboxes from SQL are known only when asked for: then nothing is said."""
    t = policy.tables
    if t.from_sql("accounts", "aliases", "lists"):
        return

    def domains(addresses: Iterable[str]) -> set[Domain | None]:
        return {t.canonical_domain(a.rpartition("@")[2]) for a in addresses if a}

    answer = [policy.settings.challenge_address] if policy.settings.challenge_store else []
    lists = domains([*t.lists, *answer])
    local = lists | {t.canonical_domain(d) for d in t.catchall} | domains(
        [*(a for a, account in t.accounts.items() if not account.moved), *t.aliases])
    for domain in t.domain_list:
        exact = not domain.name.startswith(".") and not any(c in domain.name for c in "*?[")
        catchall = f" ('@{domain.name} TARGET' in aliases takes them all)" if exact else ""
        if domain.kind is DomainKind.LOCAL and domain not in local:
            yield Finding(domain.where, f"local domain '{domain.name}' has no mailbox: no "
                          "account, alias or list is in it, so every recipient there is "
                          "refused (unknown_user_local); list its addresses in accounts or "
                          f"aliases{catchall}, or make it relay if another server holds its "
                          "mailboxes")
        elif domain.kind is DomainKind.LIST and domain not in lists:
            yield Finding(domain.where, f"list domain '{domain.name}' has no list in lists, so "
                          "every recipient there is refused (no_such_list); add its lists to "
                          "lists, or make it local")


def _limits(policy: Policy) -> Iterator[Finding]:
    """Of the server's, the sender's and the recipient's limits the smallest applies, so
    a domain or account limit above the server's never does."""
    s, t = policy.settings, policy.tables
    for owner in t.limited():
        for attribute, setting in SERVER_LIMITS:
            own, server = getattr(owner.limits, attribute), getattr(s, setting)
            if server and own > server:
                shown = str if attribute == "max_recipients" else size
                yield Finding(owner.where, f"{attribute}={shown(own)} is above the server's "
                              f"{setting} = {shown(server)} ({setting_at(policy, setting)}), "
                              f"which refuses first: this limit never applies; lower it, or "
                              f"raise {setting}")
    for listener in t.listeners.values():
        if s.max_message_size and listener.max_size > s.max_message_size:
            yield Finding(listener.where, f"max_size={size(listener.max_size)} is above the "
                          f"server's max_message_size = {size(s.max_message_size)} "
                          f"({setting_at(policy, 'max_message_size')}): every listener "
                          "refuses what is bigger than that, this one too; lower it, or raise "
                          "max_message_size")


def _settings(policy: Policy) -> Iterator[Finding]:
    s, where = policy.settings, policy.where
    if s.spam_tag_score > s.spam_reject_score:
        at = where["spam_tag_score"]
        yield Finding(at if at != "default" else where["spam_reject_score"],
                      f"spam_tag_score = {s.spam_tag_score:g} is above spam_reject_score = "
                      f"{s.spam_reject_score:g}: mail that scores so high is refused, so none "
                      "is ever tagged; make spam_tag_score the lower one")
    if s.dnsbl_threshold == 0:
        yield Finding(where["dnsbl_threshold"], "dnsbl_threshold = 0: a score of 0 reaches it, "
                      "so a listing in any zone refuses, monitor zones and weight=0 ones too; "
                      "write 1 (one listing refuses) or more")
    if s.challenge_store and not Path(s.challenge_store).is_absolute():
        yield Finding(where["challenge_store"], f"challenge_store '{s.challenge_store}' is a "
                      "relative path: it is taken from the milter's working directory (/ "
                      "under systemd), not from the rules directory; write an absolute path "
                      "(/var/lib/policy-milter is contrib/systemd's StateDirectory)")
    if s.greylist and s.greylist_retry_window <= s.greylist_delay:
        at = where["greylist_retry_window"]
        yield Finding(at if at != "default" else where["greylist_delay"],
                      f"greylist_retry_window ({s.greylist_retry_window:g} s) is not longer "
                      f"than greylist_delay ({s.greylist_delay:g} s): a retry passes only "
                      "after the delay and within the window, so no greylisted sender ever "
                      "passes; make the window longer (the defaults: 2d and 5m)", fatal=True)
    yield from _metrics(policy)


def _metrics(policy: Policy) -> Iterator[Finding]:
    address, at = policy.settings.metrics, policy.where["metrics"]
    if address is None:
        return
    if importlib.util.find_spec("prometheus_client") is None:
        yield Finding(at, "metrics need the Python package prometheus_client, which is not "
                      "installed: the milter would not start (pip install prometheus-client; "
                      "Debian: python3-prometheus-client)", fatal=True)
    try:
        loopback = ip_address(address.bare_host).is_loopback
    except ValueError:
        loopback = address.host == "localhost"
    if not loopback:
        yield Finding(at, f"metrics = {address.spec} answers every host that reaches it, "
                      "with counts of your mail by rule and reply; serve them on "
                      "loopback (inet:PORT) unless a firewall keeps others out")


def _sql_tables(policy: Policy) -> Iterator[Finding]:
    """Each table from SQL asked once, for a key no site has: a query the database
    refuses would tempfail every message (an error); a database that does not answer
    from here may from the milter's host, or later (a warning)."""
    tables = policy.tables.sql
    connections = {db: Connection(db, policy.settings.sql_timeout)
                   for db in {spec.database for spec in tables.values()}}
    away: set[Database] = set()
    try:
        for name, spec in tables.items():
            for query in filter(None, (spec.query, spec.login_query)):
                if spec.database in away:
                    break
                try:
                    connections[spec.database].rows(query, PROBE_KEYS[name])
                except TableError as err:
                    if err.bad_query:
                        yield Finding(query.where, f"{name}: the database refuses the "
                                      f"query: {err.message}", fatal=True)
                    else:
                        yield Finding(spec.database.where, f"database {spec.database.name} "
                                      f"({spec.database.shown}) does not answer: "
                                      f"{err.message}; until it does, every address its "
                                      "tables decide gets a tempfail (state_tempfail)")
                        away.add(spec.database)
    finally:
        for connection in connections.values():
            connection.close()


def _host_bits(policy: Policy) -> Iterator[Finding]:
    """A block such as 192.0.2.1/24 is read as 192.0.2.0/24: its writer may have meant
    the one address."""
    def said(where: str, what: str, masked: Iterable[tuple[str, IPNetwork]]) -> Iterator[Finding]:
        for text, net in masked:
            yield Finding(where, f"{what}: '{text}' has host bits set, so it means {net}; "
                          f"write {net}, or {text.partition('/')[0]} for the one address")

    yield from said(policy.where["relay_networks"], "relay_networks",
                    policy.settings.relay_networks.masked)
    for rule_list in policy.rule_lists:
        for _, index in rule_list.stages():
            for rule in index.rules:
                for condition in rule.conditions:
                    if isinstance(condition.patterns, NetworkPatterns):
                        yield from said(rule.where, "client", condition.patterns.masked)
    for zone in policy.tables.zones:
        yield from said(zone.where, "codes", zone.codes.masked)


def _public_lists(policy: Policy) -> Iterator[Finding]:
    servers = policy.settings.dns_nameservers
    public = [server for server in servers if ip_address(server) in PUBLIC_RESOLVERS]
    if servers and not public:
        return
    through = f"the public resolver {', '.join(public)} (dns_nameservers)" if public else \
        "the system resolver (dns_nameservers is empty), often a shared one"
    for zone in policy.tables.zones:
        if any(zone.zone == d or zone.zone.endswith(f".{d}") for d in PUBLIC_DNSBLS):
            yield Finding(zone.where, f"{zone.zone} is a public DNS list asked through "
                          f"{through}: public lists refuse queries from shared resolvers, or "
                          "answer them with codes that list everyone; set dns_nameservers to "
                          "a resolver of your own (an unbound on 127.0.0.1, say)")


# --- rule lists ------------------------------------------------------------------------

def _walk(policy: Policy, rules: list[Rule]) -> list[Finding]:
    """One stage's rules: those that never match, and those an earlier rule always
    answers for (in a walk the first matching rule decides, whatever its action, even
    ``monitor``: the rules after it are not asked)."""
    found, dead = [], set()
    for number, rule in enumerate(rules):
        why = _contradiction(rule) or _relay_first(policy, rule)
        if why:
            found.append(Finding(rule.where, f"this rule never matches: {why}"))
            dead.add(number)
    earlier = _Candidates(rules)
    for number, rule in enumerate(rules):
        first = None if number in dead else next(
            (i for i in earlier(rule) if i < number and i not in dead
             and _covers(rules[i], rule)), None)
        if first is not None:
            found.append(Finding(rule.where, f"this rule never decides: the rule at "
                                 f"{rules[first].where} matches all it matches and comes "
                                 "first (the first match ends the walk, whatever its action); "
                                 "move this rule above that one, or remove it"))
    return found


def _covers(first: Rule, later: Rule) -> bool:
    """Whether ``first`` matches whenever ``later`` does: each of its conditions covers
    one of the later rule's (which must all hold for it to match)."""
    return all(any(_condition_covers(a, b) for b in later.conditions) for a in first.conditions)


def _condition_covers(a: Condition, b: Condition) -> bool:
    if a.field != b.field:
        return False
    if isinstance(a.patterns, PatternSet):
        return isinstance(b.patterns, PatternSet) and a.patterns.covers(b.patterns)
    if a.patterns is None:
        return a.wanted == b.wanted
    return set(b.texts) <= set(a.texts)  # content: only the same patterns prove it


def _contradiction(rule: Rule) -> str:
    for i, a in enumerate(rule.conditions):
        for b in rule.conditions[i + 1:]:
            if a.field != b.field:
                continue
            if a.patterns is None and a.wanted != b.wanted or isinstance(
                    a.patterns, PatternSet) and isinstance(b.patterns, PatternSet) \
                    and a.patterns.disjoint(b.patterns):
                return (f"its {a.field} conditions exclude each other, and all of a rule's "
                        "conditions must hold; keep one of them, or write two rules")
    return ""


def _relay_first(policy: Policy, rule: Rule) -> str:
    """A recipient condition only on domains that are not ours, for clients that are
    neither authenticated nor in relay_networks: the relay check, which runs first and
    which nothing skips, refuses every such recipient (unless monitor = yes)."""
    relay = policy.settings.relay_networks
    untrusted = any(c.field == "authenticated" and not c.wanted for c in rule.conditions) and (
        not relay or any(isinstance(c.patterns, NetworkPatterns) and c.patterns.disjoint(relay)
                         for c in rule.conditions))
    if policy.settings.monitor or not untrusted:
        return ""
    for condition in rule.conditions:
        patterns = condition.patterns
        domains = patterns.domains() if condition.field == "recipient" and isinstance(
            patterns, AddressPatterns) else None
        if domains and not any(_ours(policy, d) for d in domains):
            return (f"its recipients are in {', '.join(sorted(domains))}, not a domain of "
                    "ours, and its clients neither authenticated nor in relay_networks: the "
                    "relay check refuses them first (relay_denied); add the domain to "
                    "domains, or remove the rule")
    return ""


def _ours(policy: Policy, domain: str) -> bool:
    """Whether mail for the domain is handled here (domains from SQL: assumed)."""
    if policy.tables.from_sql("domains"):
        return True
    entry = policy.tables.canonical_domain(domain)
    return entry is not None and entry.ours


class _Candidates:
    """The rules that could cover a given one, without comparing every pair.  A rule
    that covers another matches every value the other matches: for each field it has, it
    matches an example value of the other's conditions on that field (or, when those are
    globs alone, it at least has a condition on the field)."""

    def __init__(self, rules: list[Rule]) -> None:
        self.fields = [len({c.field for c in rule.conditions}) for rule in rules]
        self.with_field: dict[str, set[int]] = defaultdict(set)
        self.indexes: dict[str, Any] = {}  # field -> a pattern set of rule numbers
        self.texts: dict[tuple[str, str], set[int]] = defaultdict(set)
        for number, rule in enumerate(rules):
            for condition in rule.conditions:
                self.with_field[condition.field].add(number)
                if isinstance(condition.patterns, PatternSet):
                    index = self.indexes.setdefault(condition.field, FIELDS[condition.field]())
                    for text in condition.texts:
                        index.add(text, number)
                else:
                    for key in _keys(condition):
                        self.texts[(condition.field, key)].add(number)

    def __call__(self, rule: Rule) -> list[int]:
        by_field: dict[str, set[int]] = defaultdict(set)
        for condition in rule.conditions:
            by_field[condition.field] |= self._matching(condition)
        hits = Counter(number for numbers in by_field.values() for number in numbers)
        return sorted(number for number, count in hits.items() if count == self.fields[number])

    def _matching(self, condition: Condition) -> set[int]:
        """The rules with a condition on its field that could cover it."""
        if not isinstance(condition.patterns, PatternSet):
            return self.texts[(condition.field, _keys(condition)[0])]
        example = condition.patterns.example()
        if example is None:
            return self.with_field[condition.field]
        return set(self.indexes[condition.field].find(example))


def _keys(condition: Condition) -> tuple[str, ...]:
    """How a condition without a pattern set is compared: its texts, or its yes/no."""
    return (str(condition.wanted),) if condition.patterns is None else condition.texts
