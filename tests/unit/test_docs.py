"""Documentation that is generated from code stays identical to it."""

from __future__ import annotations

import re

from policy_milter import catalogue
from tests.conftest import REPO


def test_readme_catalogue_table_is_the_catalogue() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    table = re.search(r"<!-- catalogue:begin -->\n(.*?)\n<!-- catalogue:end -->", readme, re.S)
    assert table is not None
    assert table.group(1) == catalogue.markdown_table()
