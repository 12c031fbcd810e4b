"""The short form of the soak (contrib/bench/soak.py): mixed sessions with injected DNS
and scanner faults and hostile content against one milter process; none may be lost,
and the process keeps its threads and descriptors."""

from __future__ import annotations

import importlib
import sys

from tests.conftest import REPO

BENCH = str(REPO / "contrib" / "bench")


def test_a_short_soak_loses_nothing_and_leaks_no_descriptor() -> None:
    sys.path.insert(0, BENCH)  # soak.py and the harness it imports live there
    try:
        soak = importlib.import_module("soak")
    finally:
        sys.path.remove(BENCH)
    result = soak.soak(sessions=2200, concurrency=16, report=lambda _: None)
    assert result["lost"] == 0, result["lost_by_kind"]
    assert result["milter_alive"]
    start, end = result["start"], result["end"]
    assert end["fds"] <= start["fds"] + 2 and end["threads"] <= start["threads"] + 4, result
