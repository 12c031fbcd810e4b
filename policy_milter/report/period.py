"""The moments ``--since`` and ``--until`` take: a date, a date and time, or an age."""

from __future__ import annotations

import argparse
import re
from datetime import UTC, datetime, timedelta

_AGE = re.compile(r"(\d+)([mhdw])")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def moment(text: str, now: datetime | None = None) -> datetime:
    """``2026-11-30`` (midnight), ``2026-11-30T14:00`` (UTC unless it names a zone, as
    in ``...+01:00`` or ``...Z``), or an age before now: ``90m``, ``24h``, ``7d``, ``2w``."""
    age = _AGE.fullmatch(text)
    if age:
        return (now or datetime.now(UTC)) - timedelta(**{_UNITS[age[2]]: int(age[1])})
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"'{text}' is not a date (2026-11-30), a time (2026-11-30T14:00, UTC unless "
            "a zone is given) or an age (90m, 24h, 7d, 2w)") from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
