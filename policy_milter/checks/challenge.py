"""Row 31: challenge-response for protected recipients.

Mail to a protected recipient from a sender not on its allow list is held (the copy
for that recipient is dropped from the MTA's message and kept in the store).  The
sender gets one challenge per (recipient, sender) pair, sent from the null sender so
that it cannot loop, but only when the evidence says the sender is genuine: SPF passes
for its domain from this client (or it is already on someone's allow list), nothing
marked the message (a DNS listing, a spam score, a rule that tags it), and neither the
client nor the sender's domain has had ``challenge_limit`` challenges lately.  Forged
senders therefore get nothing (no backscatter): their mail stays held, unchallenged,
until an admin releases it or it expires.  The answer is a message to the challenge
address with the token (``challenge+TOKEN@example.com``): it allow-lists the sender and
re-injects the held messages through the MTA, where they now pass.  Null senders,
mailing lists and automatic replies are never challenged nor held: they are delivered.
"""

from __future__ import annotations

import functools
import re
import time
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from .. import catalogue
from ..decision import Action, Decision
from ..envelope import Resolved
from ..log import DecisionLog
from ..patterns import contains
from ..services.challenges import ChallengeStore, Held
from ..services.errors import DependencyError
from ..services.mailer import Mailer
from .base import Context

CHECK = "challenge"
_BULK = re.compile(r"\s*(bulk|list|junk)\s*$", re.IGNORECASE)
SWEEP_EVERY = 600.0  # seconds between expiry sweeps, run from the mail flow


def answer_token(ctx: Context, rcpt: Resolved) -> str | None:
    """The token when ``rcpt`` is the challenge address with one (``local+TOKEN@domain``)."""
    local, _, domain = ctx.settings.challenge_address.rpartition("@")
    address = rcpt.address
    match = re.fullmatch(rf"{re.escape(local)}\+([0-9a-f]{{16,64}})", address.local, re.IGNORECASE)
    return match.group(1).lower() if match and address.domain == domain.lower() else None


def answer_rcpt(ctx: Context) -> Decision | None:
    """At RCPT: an answer address is ours even though no account has that name."""
    assert ctx.rcpt is not None
    if answer_token(ctx, ctx.rcpt) is None:
        return None
    return Decision(Action.PERMIT, rule=ctx.policy.where["challenge_address"], check=CHECK,
                    skip=frozenset({"recipients"}), detail="challenge answer address")


def _exempt(ctx: Context) -> str:
    """Why this message must not be challenged, or '' when it may be."""
    assert ctx.txn is not None and ctx.txn.message is not None
    message = ctx.txn.message
    if ctx.txn.sender.is_null:
        return "null sender"
    if message.first("List-Id") is not None or _BULK.match(message.first("Precedence") or ""):
        return "mailing list"
    auto = (message.first("Auto-Submitted") or "no").strip().lower()
    return "" if auto == "no" else "automatic reply"


def check(ctx: Context) -> Decision | None:
    assert ctx.txn is not None and ctx.challenges is not None
    _sweep(ctx)
    txn, store, sender = ctx.txn, ctx.challenges, ctx.txn.sender
    dropped: list[Resolved] = []
    held: list[str] = []
    for rcpt in txn.recipients:
        token = answer_token(ctx, rcpt)
        if token is not None:
            _answered(ctx, store, store.answer(token, sender.key))
            dropped.append(rcpt)
        elif contains(ctx.settings.challenge_recipients, rcpt.address) \
                and not txn.skips_for(rcpt, CHECK) and not _exempt(ctx) \
                and not store.allowed(rcpt.mailbox, sender.key):
            _hold(ctx, store, rcpt)
            dropped.append(rcpt)
            held.append(rcpt.key)
    if not dropped:
        return None
    detail = f"held for {', '.join(held)}" if held else "challenge answered"
    return Decision(Action.DISCARD, catalogue.get("challenged_by_filter"),
                    rule=ctx.policy.where["challenge_recipients"], check=CHECK, detail=detail,
                    recipients=tuple(dropped))


def _hold(ctx: Context, store: ChallengeStore, rcpt: Resolved) -> None:
    """Keep the copy for ``rcpt``; the allow list and the challenge are its mailbox's
    (``user+tag`` is ``user``).  The sender is kept as given: the challenge must reach
    exactly the address that wrote, and the answer come back from it."""
    assert ctx.txn is not None and ctx.txn.message is not None
    entry, unchallenged = store.hold(rcpt.mailbox, ctx.txn.sender.key, ctx.txn.message.open())
    withheld = _withheld(ctx, store) if unchallenged else "a challenge is already out"
    ctx.log.event("challenge_held", qid=ctx.txn.queue_id, id=entry.id, sender=entry.sender,
                  rcpt=entry.recipient, challenge="no" if withheld else "yes",
                  detail=withheld)
    if withheld:
        return
    challenge = challenge_message(ctx.settings.challenge_address, entry)
    mailer, log = ctx.mailer, ctx.log
    assert mailer is not None

    def send() -> None:
        if _send(mailer, log, "challenge_sent", "", [entry.sender], challenge, entry.id):
            store.challenged(entry.token)
    ctx.services.run_later(send)


def _withheld(ctx: Context, store: ChallengeStore) -> str:
    """Why no challenge may go to this sender ('' when one may): only a sender the
    evidence says is genuine gets one, and only so many per client and sender domain."""
    assert ctx.txn is not None and ctx.live.spf is not None
    txn, conn, settings = ctx.txn, ctx.conn, ctx.settings
    if txn.marks:
        return f"the message is marked ({'; '.join(txn.marks)})"
    if not store.known(txn.sender.key):
        if conn.client_addr is None:
            return "no client address to check SPF for"
        result = ctx.live.spf.check(conn.client, txn.sender.key, conn.helo or "")
        if result != "pass":
            return f"SPF {result} for {txn.sender.address.domain} from {conn.client_addr}"
    count, window = settings.challenge_limit
    keys = (f"challenge:client:{conn.client_addr}",
            f"challenge:domain:{txn.sender.address.domain}")
    rates = ctx.state
    if any(rates.total(key, window) >= count for key in keys):
        return f"challenge_limit ({count} per {window} s) reached for this client or domain"
    for key in keys:
        rates.record(key, 1)
    return ""


def _answered(ctx: Context, store: ChallengeStore, released: list[Held]) -> None:
    assert ctx.txn is not None
    ctx.log.event("challenge_answered", qid=ctx.txn.queue_id, sender=ctx.txn.sender.key,
                  released=len(released))
    mailer, log = ctx.mailer, ctx.log
    assert mailer is not None
    for entry in released:
        ctx.services.run_later(functools.partial(release, store, mailer, log, entry))


def release(store: ChallengeStore, mailer: Mailer, log: DecisionLog, entry: Held) -> bool:
    """Re-inject one released message through the MTA, then forget it.  A message the
    MTA did not take stays released: ``redeliver`` tries it again."""
    with store.open_message(entry) as message:
        sent = _send(mailer, log, "challenge_released", entry.sender, [entry.recipient],
                     message.read(), entry.id)
    if sent:
        store.done(entry)
    return sent


def redeliver(store: ChallengeStore, mailer: Mailer, log: DecisionLog) -> None:
    """At start: messages released before a stop or a failed hand-over go out now."""
    for entry in store.released(min_age=60):
        release(store, mailer, log, entry)


def _send(mailer: Mailer, log: DecisionLog, event: str, sender: str, recipients: list[str],
          data: bytes, held_id: str) -> bool:
    """Hand mail to the MTA; log what happened either way."""
    try:
        mailer.send(sender, recipients, data)
    except DependencyError as err:
        log.event("dependency_failure", check=CHECK, id=held_id, action="retry later",
                  detail=f"{event}: {err}")
        return False
    log.event(event, id=held_id, rcpt=",".join(recipients))
    return True


def challenge_message(address: str, entry: Held) -> bytes:
    """The challenge: an automatic reply (RFC 3834) the sender answers by replying."""
    local, _, domain = address.rpartition("@")
    reply_to = f"{local}+{entry.token}@{domain}"
    msg = EmailMessage()
    msg["From"] = reply_to
    msg["To"] = entry.sender
    msg["Subject"] = f"Please confirm your message to {entry.recipient} [{entry.token}]"
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = make_msgid(domain=domain)
    msg["Auto-Submitted"] = "auto-replied"
    msg.set_content(
        f"Your message to {entry.recipient} is held until you confirm that you sent it.\n"
        f"To confirm, reply to this message (to {reply_to}).\n"
        "Unconfirmed messages are deleted after a while.\n")
    return msg.as_bytes()


def _sweep(ctx: Context) -> None:
    """Drop expired held messages now and then, from the mail flow itself."""
    now = time.monotonic()
    if now - ctx.services.last_sweep < SWEEP_EVERY:
        return
    ctx.services.last_sweep = now
    assert ctx.challenges is not None
    for entry in ctx.challenges.expire(ctx.settings.challenge_expire):
        ctx.log.event("challenge_expired", id=entry.id, sender=entry.sender,
                      rcpt=entry.recipient)
