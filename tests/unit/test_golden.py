"""The golden envelope sessions through the engine itself, called as the adapter calls it.

The other layers replay the same table (tests/support/golden.py); here a failure points
at the engine alone.  Also: the table reader refuses what its replayers could not play.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from policy_milter.decision import Action, Decision
from policy_milter.engine import Engine, Session
from policy_milter.stages import Stage
from tests.support import golden
from tests.support.golden import SESSIONS, Answer

QUEUE_ID = "QID1"


def answer(decision: Decision, dropped: Sequence[str] = ()) -> Answer:
    """The engine's decision as the table states answers."""
    if decision.action in (Action.REJECT, Action.TEMPFAIL) and decision.entry is not None:
        e = decision.entry
        return Answer.reply(e.code, e.enhanced, e.text, dropped)
    action = {Action.CONTINUE: golden.OK, Action.DISCARD: "discard"}.get(
        decision.action, decision.action.value)  # any other: no answer the table expects
    return Answer(action, dropped=tuple(dropped))


def play(s: Session, session: golden.Session, step: golden.Step) -> Answer:
    """One step: the calls the adapter makes for it."""
    match step.stage:
        case Stage.HELO:
            return answer(s.helo(step.arg, False))
        case Stage.MAIL:
            return answer(s.mail(step.arg, step.params, session.login, ""))
        case Stage.RCPT:
            return answer(s.rcpt(step.arg, [], QUEUE_ID))
        case Stage.DATA:
            return answer(s.data(QUEUE_ID))
        case Stage.EOM:
            message = session.message(step)
            for name, value in message.headers:
                s.header(name, value.encode())
            s.body(message.body)
            outcome = s.eom(QUEUE_ID)
            return answer(outcome.decision, outcome.delete_recipients)
        case Stage.UNKNOWN:
            return answer(s.unknown(step.arg))
    raise AssertionError(f"{step.where}: the engine replayer cannot play {step.command!r}")


@pytest.mark.parametrize("session", SESSIONS.values(), ids=SESSIONS.keys())
def test_golden_session_through_the_engine(engine: Engine, session: golden.Session) -> None:
    s = engine.session()
    assert answer(s.connect(session.addr, session.hostname, session.listener)) == Answer(golden.OK)
    for step in session.steps:
        session.check(step, play(s, session, step))
    s.close()


# --- the table reader ----------------------------------------------------------------------

HEAD = "session t\nclient 192.0.2.10\nlistener smtpd\n"


@pytest.mark.parametrize("table, complaint", [
    (HEAD + "EHLO a.example -> no_such_entry\n", "no catalogue entry"),
    (HEAD + "EHLO a.example -> auth_failed\n", "cannot answer helo"),
    (HEAD + "EHLO a.example -> unknown_user_local\n", "cannot answer helo"),
    (HEAD + "MAIL FROM:<a@b.example> -> deleted_by_filter\n", "cannot answer mail"),
    (HEAD + "NOOP -> ok\n", "the MTA answers NOOP itself"),
    (HEAD + "MAIL <a@b.example> -> ok\n", "cannot read"),
    (HEAD + "MAIL FROM:<a@b.example> -> access_denied\nRCPT TO:<c@d.example> -> ok\n",
     "the session ended"),
    (HEAD + "MAIL FROM:<a@b.example> -> ok\nRCPT TO:<c@d.example> -> ok\nDATA -> ok\n",
     "a DATA that passes its"),
    (HEAD + "MAIL FROM:<a@b.example> -> ok\n. -> ok\n", "right after a DATA"),
    ("session t\nlistener smtpd\nEHLO a.example -> ok\n", "lacks client"),
    ("session t\nclient 192.0.2.10\nlistener pickup\nEHLO a.example -> ok\n", "listener is"),
    (HEAD + "EHLO a.example -> ok\nlogin alice\n", "before the steps"),
    (HEAD + "EHLO a.example\n", "neither a header line"),
    (HEAD + "EHLO a.example -> ok\n" + HEAD + "EHLO a.example -> ok\n", "a name of its own"),
])
def test_table_reader_refuses_what_no_replayer_could_play(tmp_path: Path, table: str,
                                                          complaint: str) -> None:
    path = tmp_path / "bad.sessions"
    path.write_text(table)
    with pytest.raises(golden.TableError, match=complaint):
        golden.load(path)

