"""Every reply policy-milter can send, by name: the single source of reply text.

Rule files, checks and the adapter refer to entries by name; nothing else spells out
a reply.  Rows 1-34 follow the seed FAQ, in its order (tests/fixtures/seed_rows.tsv
keeps its rows and cites it); the temporary failures are ours.  The table is validated
when this module is imported, so a malformed entry stops the program before it can
reach an MTA.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from .stages import Stage

ANY_STAGE = frozenset(Stage)
_MAX_REPLY_LINE = 510  # RFC 5321 4.5.3.1.5: 512 octets including CRLF
_MAX_DETAIL = 200
_ENH = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})")
_UNSAFE = re.compile(r"[^\x20-\x7e]")


class Kind(Enum):
    """How an entry reaches the world."""

    REPLY = "reply"  # an SMTP reply the milter sends through the MTA
    OUTCOME = "outcome"  # no reply: the text only goes to the log (discard, challenge)
    MTA_SIDE = "mta-side"  # the MTA answers itself; documented, never sent by the milter


@dataclass(frozen=True)
class Entry:
    """One catalogue row: reply code, enhanced code, text and where it may be used."""

    name: str
    row: int | None  # seed row number, None for our own (temporary failures)
    code: str
    enhanced: str
    text: str
    stages: frozenset[Stage]
    kind: Kind = Kind.REPLY

    @property
    def temporary(self) -> bool:
        return self.code.startswith("4")

    def reply_line(self, detail: str = "") -> str:
        """The reply as the client reads it: code, enhanced code and text, space-separated."""
        return " ".join(p for p in (self.code, self.enhanced, self.message(detail)) if p)

    def message(self, detail: str = "") -> str:
        """Reply text, optionally followed by sanitised detail (a virus name, a list)."""
        if not detail:
            return self.text
        clean = _UNSAFE.sub("?", detail)[:_MAX_DETAIL]
        return f"{self.text} ({clean})"

    def setreply_args(self, detail: str = "") -> tuple[str, str, str]:
        """Arguments for libmilter's ``smfi_setreply``: ``%`` doubled, as it requires."""
        return self.code, self.enhanced, self.message(detail).replace("%", "%%")


def _entry(name: str, row: int | None, code: str, enhanced: str, text: str,
           *stages: Stage, kind: Kind = Kind.REPLY) -> Entry:
    return Entry(name, row, code, enhanced, text, frozenset(stages) or ANY_STAGE, kind)


S = Stage
_ROWS = (
    _entry("command_unrecognized", 1, "500", "5.5.1", "Command unrecognized", S.UNKNOWN),
    _entry("domain_required", 2, "501", "5.5.2", "Domain name required", S.MAIL, S.RCPT),
    _entry("unbalanced", 3, "501", "5.5.2", "Unbalanced", S.HELO, S.MAIL, S.RCPT),
    _entry("syntax_error", 4, "501", "5.5.4", "Syntax error in parameters scanning",
           S.HELO, S.MAIL, S.RCPT),
    _entry("helo_requires_domain", 5, "501", "5.5.1", "HELO/EHLO requires domain address", S.HELO),
    _entry("auth_cancelled", 6, "501", "5.0.0", "Authentication cancelled", kind=Kind.MTA_SIDE),
    _entry("auth_failed", 7, "501", "5.7.0", "Authentication failed", kind=Kind.MTA_SIDE),
    _entry("not_allowed_to_send", 8, "501", "5.7.1", "You are not allowed to send.", S.MAIL),
    _entry("operation_not_supported", 9, "502", "5.5.1", "Sorry, we do not support this operation",
           S.UNKNOWN),
    _entry("bad_sequence", 10, "503", "5.5.1", "Incorrect command sequence",
           S.RCPT, S.DATA, S.EOM),
    _entry("auth_already_done", 11, "503", "5.5.1", "Authentication already done",
           kind=Kind.MTA_SIDE),
    _entry("helo_required", 12, "503", "5.5.1", "HELO/EHLO command required", S.MAIL),
    _entry("helo_already_specified", 13, "503", "5.5.1", "HELO/EHLO already specified", S.HELO),
    _entry("auth_type_unrecognized", 14, "504", "5.7.6", "Unrecognized authentication type",
           kind=Kind.MTA_SIDE),
    _entry("auth_required", 15, "530", "5.7.1", "Authentication required [AUTH]", S.MAIL),
    _entry("relay_denied", 16, "550", "5.7.1", "We do not relay", S.RCPT),
    _entry("account_limits", 17, "550", "5.7.1", "We do not relay, account limits apply", S.RCPT),
    _entry("local_domains_only", 18, "550", "5.7.1",
           "You have rights to send mail to local domains only", S.RCPT),
    _entry("access_denied", 19, "550", "5.7.1", "Access not allowed",
           S.CONNECT, S.HELO, S.MAIL, S.RCPT),
    _entry("permission_denied", 20, "550", "5.7.1", "Permission denied"),
    _entry("unknown_user_local", 21, "550", "5.1.1", "Unknown user local", S.RCPT),
    _entry("unknown_user_relay", 22, "550", "5.1.1", "Unknown user; rejecting", S.RCPT),
    _entry("user_not_local", 23, "551", "5.1.1", "No such user found", S.RCPT),
    _entry("no_such_list", 24, "551", "5.1.1", "No such mailing list found", S.RCPT),
    _entry("too_many_recipients", 25, "552", "5.5.3", "Too many recipients", S.RCPT),
    _entry("message_size_exceeded", 26, "554", "5.3.4",
           "Message size exceeds fixed maximum message size", S.MAIL, S.EOM),
    _entry("virus_found", 27, "554", "5.7.1", "Message cannot be accepted, virus found", S.EOM),
    _entry("content_rejected", 28, "554", "5.7.1",
           "Message cannot be accepted, content filter rejection", S.HEADER, S.BODY, S.EOM),
    _entry("spam_rejected", 29, "554", "5.7.1", "Message cannot be accepted, spam filter rejection",
           S.EOM),
    _entry("deleted_by_filter", 30, "", "", "Message deleted by filter", kind=Kind.OUTCOME),
    _entry("challenged_by_filter", 31, "", "", "Message challenged by filter", S.EOM,
           kind=Kind.OUTCOME),
    _entry("mailbox_size_exceeded", 32, "554", "5.2.2", "Maximum size exceeded.", S.RCPT, S.EOM),
    _entry("listener_size_exceeded", 33, "554", "5.3.1", "Maximum message size exceeded.",
           S.MAIL, S.EOM),
    _entry("filter_rejected", 34, "554", "5.7.1", "Message cannot be accepted, filter rejection"),
    # Temporary failures: a lookup, scanner or the milter itself could not decide.
    _entry("dns_tempfail", None, "451", "4.4.3", "Temporary DNS failure, try again later"),
    _entry("scanner_tempfail", None, "451", "4.3.0",
           "Content scanner unavailable, try again later", S.EOM),
    _entry("state_tempfail", None, "451", "4.3.0", "Temporary local problem, try again later"),
    _entry("internal_tempfail", None, "451", "4.3.0", "Internal error, try again later"),
    _entry("shutdown_tempfail", None, "451", "4.3.2", "Service shutting down, try again later",
           S.CONNECT),
    # Greylisting: a first-seen (client network, sender, recipient) is asked to retry.
    _entry("greylisted", None, "451", "4.7.1", "Greylisted, try again later", S.RCPT),
)

ENTRIES: dict[str, Entry] = {e.name: e for e in _ROWS}
_BY_REPLY: dict[str, Entry] = {e.reply_line(): e for e in _ROWS}


class UnknownEntry(KeyError):
    """A rule named a catalogue entry that does not exist."""


def get(name: str) -> Entry:
    try:
        return ENTRIES[name]
    except KeyError:
        raise UnknownEntry(name) from None


def by_reply(line: str) -> Entry | None:
    """The entry whose reply line ``line`` is: what a log line older than its ``entry=``
    field, or a reply read off the wire, says; None for one the catalogue does not have."""
    return _BY_REPLY.get(line)


def _validate(entries: tuple[Entry, ...]) -> None:
    names = [e.name for e in entries]
    if len(names) != len(set(names)):
        raise ValueError("catalogue: duplicate entry names")
    if len({e.reply_line() for e in entries}) != len(entries):
        raise ValueError("catalogue: two entries with one reply line (the log could not "
                         "tell them apart)")
    rows = [e.row for e in entries if e.row is not None]
    if sorted(rows) != list(range(1, 35)):
        raise ValueError("catalogue: seed rows must be 1..34, once each")
    for e in entries:
        if _UNSAFE.search(e.text) or not e.text:
            raise ValueError(f"catalogue {e.name}: text must be printable ASCII, one line")
        if e.kind is Kind.OUTCOME:
            if e.code or e.enhanced:
                raise ValueError(f"catalogue {e.name}: an outcome has no reply code")
            continue
        if not re.fullmatch(r"[45][0-5]\d", e.code):
            raise ValueError(f"catalogue {e.name}: reply code must be 4xx or 5xx")
        m = _ENH.fullmatch(e.enhanced)
        if not m or m.group(1) != e.code[0]:
            raise ValueError(f"catalogue {e.name}: enhanced code class must match {e.code[0]}")
        if len(e.reply_line("x" * _MAX_DETAIL)) > _MAX_REPLY_LINE:
            raise ValueError(f"catalogue {e.name}: reply too long for one SMTP line")


def markdown_table() -> str:
    """The catalogue as the README shows it (``policy-milter catalogue`` prints it)."""
    lines = ["| # | name | code | enhanced | text | stages | kind |",
             "|---|------|------|----------|------|--------|------|"]
    for e in _ROWS:
        stages = "any" if e.stages == ANY_STAGE else ", ".join(
            s.value for s in Stage if s in e.stages)
        lines.append(f"| {e.row or '-'} | `{e.name}` | {e.code or '-'} | {e.enhanced or '-'} "
                     f"| {e.text} | {stages} | {e.kind.value} |")
    return "\n".join(lines)


_validate(_ROWS)

DEFAULT_TEMPFAIL = ENTRIES["internal_tempfail"]
