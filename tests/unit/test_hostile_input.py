"""Bad input never crashes: generated garbage through the parsers, the rule loader and a
whole session.  Each may refuse the input, but only in the ways it documents."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policy_milter.addresses import (AddressError, check_balanced, parse_esmtp_params,
                                     parse_path, valid_helo)
from policy_milter.decision import Action
from policy_milter.engine import Engine
from policy_milter.rules.policy import Policy, load
from policy_milter.rules.source import RuleErrors
from policy_milter.services import Services

SMTPISH = st.text(alphabet=st.sampled_from(list('<>[]()"\\@%!:,.+-_ aZ09\x00\r\n\x7f\u00fc\u200b'
                                               '\udcff')), max_size=80)
ANY = st.one_of(SMTPISH, st.text(max_size=80))
FAST = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


@FAST
@given(arg=ANY, null_ok=st.booleans())
def test_paths_parse_or_say_why(arg: str, null_ok: bool) -> None:
    try:
        address = parse_path(arg, null_ok=null_ok)
    except AddressError as err:
        assert err.kind in ("unbalanced", "syntax", "no_domain") and str(err)
    else:
        assert address.is_null or address.domain or address.local.lower() == "postmaster"
    assert check_balanced(arg) in (True, False)
    assert valid_helo(arg) in (True, False)


@FAST
@given(params=st.lists(ANY, max_size=5))
def test_esmtp_parameters_parse_or_say_why(params: list[str]) -> None:
    try:
        parsed = parse_esmtp_params(params)
    except AddressError as err:
        assert err.kind == "syntax"
    else:
        assert all(key == key.upper() for key in parsed)


@FAST
@given(lines=st.lists(ANY, max_size=6))
def test_rule_files_load_or_report_path_and_line(tmp_path: Path, lines: list[str]) -> None:
    rules = tmp_path / "rules"
    rules.mkdir(exist_ok=True)
    (rules / "policy.conf").write_text("access = access\ndomains = domains\n")
    for name in ("access", "domains"):
        (rules / name).write_text("\n".join(lines), encoding="utf-8", errors="surrogateescape")
    try:
        load(rules)
    except RuleErrors as err:
        assert err.errors and all(e.startswith(str(rules)) for e in err.errors)


@FAST
@given(helo=ANY, sender=ANY, rcpts=st.lists(ANY, min_size=1, max_size=3), unknown=ANY,
       header=st.binary(max_size=60), body=st.binary(max_size=200))
def test_a_session_of_garbage_gets_decisions_not_exceptions(
        fixture_policy: Policy, helo: str, sender: str, rcpts: list[str], unknown: str,
        header: bytes, body: bytes) -> None:
    session = Engine(fixture_policy, Services()).session()
    decisions = [session.connect("192.0.2.10", helo, "smtpd"), session.helo(helo, False),
                 session.unknown(unknown), session.mail(sender, [], "", "")]
    decisions += [session.rcpt(r, [], "") for r in rcpts]
    decisions.append(session.data(""))
    session.header("Subject", header)
    session.body(body)
    decisions.append(session.eom("").decision)
    session.close()
    assert all(d.action in Action for d in decisions)
    assert not any(d.check == "internal" for d in decisions), decisions
