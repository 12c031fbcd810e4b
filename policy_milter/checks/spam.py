"""Row 29: spamd's score decides; below the reject score it only tags the message.

At or over ``spam_tag_score`` the message gets ``X-Spam-Status: Yes`` (and the
subject tag, if set); at or over ``spam_reject_score`` it is refused.  A message over
``spam_max_size`` passes unscanned with a log line.  When spamd fails, the default
is to let the mail through marked as not scanned; ``spam_failure_action = tempfail``
defers it instead.
"""

from __future__ import annotations

from .. import catalogue
from ..decision import Action, Decision
from ..services.errors import DependencyError
from .base import Context

CHECK = "spam"
_MAX_SYMBOLS = 40


def check(ctx: Context) -> Decision | None:
    assert ctx.txn is not None and ctx.txn.message is not None and ctx.spam is not None
    policy, message = ctx.policy, ctx.txn.message
    if policy.spam_max_size and message.size > policy.spam_max_size:
        ctx.log.event("spam_not_scanned", qid=ctx.txn.queue_id, size=message.size,
                      limit=policy.spam_max_size, rule=policy.where["spam_max_size"])
        return None
    try:
        result = ctx.spam.check(message.open(), message.size)
    except DependencyError as err:
        if policy.spam_failure_action == "tempfail":
            raise
        ctx.log.dependency_failure(CHECK, ctx.conn, ctx.txn, str(err), "accept")
        return Decision(Action.ADD_HEADER, rule=policy.where["spam_failure_action"], check=CHECK,
                        headers=(("X-Spam-Status", "not scanned (spamd unavailable)"),))
    tests = ",".join(result.symbols[:_MAX_SYMBOLS])
    detail = f"score {result.score:.1f} tests {tests}"
    if result.score >= policy.spam_reject_score:
        return Decision(Action.REJECT, catalogue.get("spam_rejected"),
                        rule=policy.where["spam_reject_score"], check=CHECK, detail=detail)
    spam = result.score >= policy.spam_tag_score
    status = f"{'Yes' if spam else 'No'}, score={result.score:.1f} " \
             f"required={policy.spam_tag_score:.1f} tests={tests or 'none'}"
    return Decision(Action.ADD_HEADER, rule=policy.where["spam_tag_score"], check=CHECK,
                    headers=(("X-Spam-Status", status), ("X-Spam-Score", f"{result.score:.1f}")),
                    subject_prefix=policy.spam_subject_tag if spam else "", detail=detail)
