"""A Decision cannot be built wrong: the adapter never meets one it cannot answer."""

from __future__ import annotations

from typing import Any

import pytest

from policy_milter import catalogue
from policy_milter.decision import Action, Decision

FIVE, FOUR = catalogue.get("relay_denied"), catalogue.get("state_tempfail")
OUTCOME, MTA_SIDE = catalogue.get("deleted_by_filter"), catalogue.get("auth_failed")


@pytest.mark.parametrize("action, fields", [
    (Action.CONTINUE, {}),
    (Action.PERMIT, {"skip": frozenset({"dnsbl"})}),
    (Action.REJECT, {"entry": FIVE}),
    (Action.TEMPFAIL, {"entry": FOUR}),
    (Action.DISCARD, {"entry": OUTCOME}),
    (Action.QUARANTINE, {"reason": "held"}),
    (Action.ADD_HEADER, {"headers": (("X-A", "b"),), "subject_prefix": "[x]"}),
])
def test_well_formed_decisions(action: Action, fields: dict[str, Any]) -> None:
    assert Decision(action, rule="r:1", check="c", detail="d", monitor=True, **fields)


@pytest.mark.parametrize("action, fields, message", [
    (Action.REJECT, {}, "reject needs a 5xx reply entry"),
    (Action.REJECT, {"entry": FOUR}, "reject needs a 5xx reply entry"),
    (Action.REJECT, {"entry": OUTCOME}, "reject needs a 5xx reply entry"),
    (Action.REJECT, {"entry": MTA_SIDE}, "reject needs a 5xx reply entry"),
    (Action.TEMPFAIL, {"entry": FIVE}, "tempfail needs a 4xx reply entry"),
    (Action.TEMPFAIL, {}, "tempfail needs a 4xx reply entry"),
    (Action.DISCARD, {}, "discard needs an outcome entry"),
    (Action.DISCARD, {"entry": FIVE}, "discard needs an outcome entry"),
    (Action.ADD_HEADER, {}, "add-header needs a header"),
    (Action.CONTINUE, {"entry": FIVE}, "continue does not take entry"),
    (Action.PERMIT, {"entry": FIVE}, "permit does not take entry"),
    (Action.REJECT, {"entry": FIVE, "skip": frozenset({"dnsbl"})}, "reject does not take skip"),
    (Action.REJECT, {"entry": FIVE, "headers": (("X", "y"),)}, "reject does not take headers"),
    (Action.QUARANTINE, {"reason": "x", "entry": FIVE}, "quarantine does not take entry"),
    (Action.PERMIT, {"reason": "x"}, "permit does not take reason"),
    (Action.TEMPFAIL, {"entry": FOUR, "subject_prefix": "[x]"},
     "tempfail does not take subject_prefix"),
])
def test_malformed_decisions_are_refused(action: Action, fields: dict[str, Any],
                                         message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Decision(action, **fields)
