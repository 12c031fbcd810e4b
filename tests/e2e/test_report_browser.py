"""The HTML report in a real browser (headless Chromium): it loads with no error and no
request but for itself, its charts are drawn with the bars the log calls for, and the
hostile names the log carries show as text, never as markup.  A page that does go wrong
is caught by the same driver (the last test), so the first cannot pass for nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from policy_milter.cli import main
from tests.conftest import FIXTURE_RULES, REPO
from tests.support.browser import Browser, Page

LOG = REPO / "tests" / "fixtures" / "report.log"  # tests/unit/test_report.py counts it
CHARTS = """[...document.querySelectorAll('svg.chart')].map(svg => {
  const box = svg.getBBox(), rects = [...svg.querySelectorAll('g.bar rect')];
  return {name: svg.dataset.chart, width: box.width, height: box.height,
          bars: svg.querySelectorAll('g.bar').length, segments: rects.length,
          drawn: rects.filter(r => r.getBBox().width > 0 && r.getBBox().height > 0).length,
          shown: svg.getBoundingClientRect().width > 0};
})"""
MARKUP = """({scripts: document.scripts.length, svgs: document.querySelectorAll('svg').length,
  handlers: [...document.querySelectorAll('*')].filter(
      e => [...e.attributes].some(a => a.name.startsWith('on'))).length,
  text: document.body.innerText})"""


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Page]:
    with Browser(tmp_path_factory.mktemp("chromium")) as browser:
        tab = browser.page()
        yield tab
        tab.close()


def test_the_report_loads_cleanly_and_draws_its_charts(page: Page, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "report.html"
    assert main(["report", "--rules", str(FIXTURE_RULES), "--html", str(report), str(LOG)]) == 0
    capsys.readouterr()
    loaded = page.load(report.as_uri())
    assert (loaded.exceptions, loaded.console_errors, loaded.failed, loaded.dialogs) == (
        [], [], [], [])
    assert loaded.requests == [report.as_uri()]
    charts = {chart.pop("name"): chart for chart in page.evaluate(CHARTS)}
    # hours 09, 10, 11: accept | accept+reject | tempfail; five entries, one bar each;
    # checks recipients, access (reject+permit), filters, dnsbl
    assert {name: (c["bars"], c["segments"]) for name, c in charts.items()} == {
        "hours": (3, 4), "entries": (5, 5), "checks": (4, 5)}
    for name, chart in charts.items():
        assert chart["drawn"] == chart["segments"], name
        assert chart["width"] > 100 and chart["height"] > 20 and chart["shown"], (name, chart)
    markup = page.evaluate(MARKUP)
    assert (markup["scripts"], markup["svgs"], markup["handlers"]) == (0, 3, 0)
    assert "<script>alert(1)</script>" in markup["text"]
    assert '"><svg/onload=alert(1)>@filtered.example' in markup["text"]


def test_the_driver_sees_a_page_go_wrong(page: Page, tmp_path: Path) -> None:
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><img src="http://127.0.0.1:9/x.png">'
                   '<script>console.error("bad"); alert("hi"); throw new Error("boom")</script>')
    loaded = page.load(bad.as_uri())
    assert loaded.requests == [bad.as_uri(), "http://127.0.0.1:9/x.png"]
    assert loaded.failed and loaded.dialogs == ["hi"]
    assert any("boom" in e for e in loaded.exceptions)
    assert any("bad" in e for e in loaded.console_errors)
