"""Documentation that is generated from code stays identical to it."""

from __future__ import annotations

import re

import pytest

from policy_milter import catalogue
from policy_milter.checks import order
from tests.conftest import REPO


@pytest.mark.parametrize("marker, generated", [
    ("catalogue", catalogue.markdown_table),
    ("checks", order.markdown),
])
def test_readme_tables_are_generated(marker: str, generated: object) -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    table = re.search(rf"<!-- {marker}:begin -->\n(.*?)\n<!-- {marker}:end -->", readme, re.S)
    assert table is not None
    assert callable(generated) and table.group(1) == generated()
