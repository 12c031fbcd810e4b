"""Row 29: spamd's score decides; below the reject score it only tags the message.

At or over ``spam_tag_score`` the message gets ``X-Spam-Status: Yes`` (and the
subject tag, if set); at or over ``spam_reject_score`` it is refused.  A message over
``spam_max_size`` is not sent (NotChecked: ``unscannable_action`` applies); a spamd
that fails raises DependencyError (``spam_failure_action`` applies).
"""

from __future__ import annotations

from .. import catalogue
from ..decision import Action, Decision
from .base import Context, NotChecked

CHECK = "spam"
_MAX_SYMBOLS = 40


def check(ctx: Context) -> Decision | None:
    assert ctx.txn is not None and ctx.txn.message is not None and ctx.spam is not None
    settings, where, message = ctx.settings, ctx.policy.where, ctx.txn.message
    if settings.spam_max_size and message.size > settings.spam_max_size:
        raise NotChecked(f"message of {message.size} bytes is over spam_max_size "
                         f"({settings.spam_max_size})")
    result = ctx.spam.check(message.open(), message.size)
    tests = ",".join(result.symbols[:_MAX_SYMBOLS])
    detail = f"score {result.score:.1f} tests {tests}"
    if result.score >= settings.spam_reject_score:
        return Decision(Action.REJECT, catalogue.get("spam_rejected"),
                        rule=where["spam_reject_score"], check=CHECK, detail=detail)
    spam = result.score >= settings.spam_tag_score
    if spam:
        ctx.mark(f"spam score {result.score:.1f}")
    status = f"{'Yes' if spam else 'No'}, score={result.score:.1f} " \
             f"required={settings.spam_tag_score:.1f} tests={tests or 'none'}"
    return Decision(Action.ADD_HEADER, rule=where["spam_tag_score"], check=CHECK,
                    headers=(("X-Spam-Status", status), ("X-Spam-Score", f"{result.score:.1f}")),
                    subject_prefix=settings.spam_subject_tag if spam else "", detail=detail)
