"""``policy-milter report``: what the decision log says happened, over a period.

summary.py reads the log once and keeps only counters (a month of log needs no more
memory than a day); sections.py turns them into named tables that text.py, the JSON
output and html.py (with svg.py's charts) each render, so the three never disagree.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from .. import logread
from ..rules.policy import Policy
from . import html, sections, text
from .summary import Summary


def moment(text: str) -> datetime:
    """A ``--since``/``--until`` bound as logread reads it, its error shown as it says."""
    try:
        return logread.moment(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def produce(logs: Sequence[str], since: datetime | None, until: datetime | None,
            policy: Policy | None, top: int, as_json: bool, html_file: str | None) -> str:
    """Read ``logs`` (``-``: stdin) once; write the HTML page if asked; return the text
    (or JSON) for stdout.  Raises OSError for a log that cannot be read."""
    summary = Summary(since, until).add_all(logread.records(logs, since, until))
    if policy is not None:
        summary.match_rules(policy)
    if html_file:
        Path(html_file).write_text(html.page(summary, top), encoding="utf-8")
    return sections.as_json(summary, top) + "\n" if as_json else text.render(summary, top)
