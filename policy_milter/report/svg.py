"""Bar charts as inline SVG, drawn here so the page needs no script, font or network.

A chart is a list of stacks: a label and its segments (series, count).  Every stack is
one ``<g class="bar">`` (empty ones too, so an hour without mail keeps its place), each
segment one ``<rect>`` with a ``<title>`` a browser shows on hover.  Every text is
escaped: labels come from the log.
"""

from __future__ import annotations

from html import escape
from math import ceil

Stack = tuple[str, list[tuple[str, int]]]

COLORS = {"accept": "#2e7d32", "quarantine": "#f9a825", "reject": "#c62828",
          "tempfail": "#ef6c00", "discard": "#6d4c41", "abort": "#9e9e9e",
          "permit": "#1565c0", "add-header": "#6a1b9a"}
OTHER = "#546e7a"  # a series without a colour of its own
WIDTH = 960
CHAR = 7  # roughly, the width of one character of the 12px labels


def color(series: str) -> str:
    return COLORS.get(series, OTHER)


def _svg(name: str, height: int, body: list[str], title: str) -> str:
    return (f'<svg class="chart" data-chart="{escape(name)}" xmlns="http://www.w3.org/2000/svg"'
            f' viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" height="{height}" role="img"'
            f' aria-label="{escape(title)}">' + "".join(body) + "</svg>")


def _segment(x: float, y: float, w: float, h: float, label: str, series: str,
             count: int) -> str:
    return (f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" '
            f'fill="{color(series)}"><title>{escape(label)}: {escape(series)} {count}'
            "</title></rect>")


def _legend(series: list[str], y: int) -> list[str]:
    out, x = [], 0
    for name in series:
        out.append(f'<rect x="{x}" y="{y}" width="12" height="12" fill="{color(name)}"/>'
                   f'<text x="{x + 16}" y="{y + 11}">{escape(name)}</text>')
        x += 16 + CHAR * len(name) + 18
    return out


def _ceiling(top: int) -> int:
    """A round maximum for the axis: 1, 2 or 5 times a power of ten, at least ``top``."""
    step = 1
    while True:
        for m in (1, 2, 5):
            if m * step >= top:
                return m * step
        step *= 10


def columns(name: str, title: str, stacks: list[Stack], series: list[str]) -> str:
    """Stacked columns left to right (hours), the y axis from 0 to a round maximum."""
    left, top, bottom, height = 44, 26, 64, 300
    plot_h = height - top - bottom
    peak = _ceiling(max([sum(n for _, n in segs) for _, segs in stacks] + [1]))
    slot = (WIDTH - left - 8) / max(len(stacks), 1)
    width = min(slot * 0.8, 40.0)  # a few hours do not make a wall
    every = ceil(len(stacks) / 24)  # at most 24 labels under the axis
    body = _legend(series, 0)
    for value in (0, peak // 2, peak):
        y = top + plot_h - plot_h * value / peak
        body.append(f'<line x1="{left}" x2="{WIDTH}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
                    f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{value}</text>')
    for i, (label, segments) in enumerate(stacks):
        x, y = left + i * slot + (slot - width) / 2, top + plot_h
        rects = []
        for series_name, count in segments:
            if count:
                h = plot_h * count / peak
                y -= h
                rects.append(_segment(x, y, width, h, label, series_name, count))
        body.append(f'<g class="bar" data-label="{escape(label)}">{"".join(rects)}</g>')
        if i % every == 0:
            lx, ly = x + width / 2, top + plot_h + 12
            body.append(f'<text x="{lx:.1f}" y="{ly}" text-anchor="end" '
                        f'transform="rotate(-40 {lx:.1f} {ly})">{escape(label)}</text>')
    return _svg(name, height, body, title)


def bars(name: str, title: str, stacks: list[Stack], series: list[str]) -> str:
    """Stacked horizontal bars, one row per stack, its label left and its total right."""
    row, top = 22, 24
    labels = max([len(label) for label, _ in stacks] + [4])
    left = min(CHAR * labels + 12, WIDTH // 3)
    peak = max([sum(n for _, n in segs) for _, segs in stacks] + [1])
    span = WIDTH - left - 60
    body = _legend(series, 0)
    for i, (label, segments) in enumerate(stacks):
        y, x = top + i * row, float(left)
        rects = []
        for series_name, count in segments:
            if count:
                w = span * count / peak
                rects.append(_segment(x, y + 3, w, row - 6, label, series_name, count))
                x += w
        shown = label if CHAR * len(label) + 12 <= left else label[:(left - 12) // CHAR - 1] + "…"
        body.append(f'<text x="{left - 8}" y="{y + 15}" text-anchor="end">{escape(shown)}'
                    f'<title>{escape(label)}</title></text>'
                    f'<g class="bar" data-label="{escape(label)}">{"".join(rects)}</g>'
                    f'<text x="{x + 6:.1f}" y="{y + 15}">{sum(n for _, n in segments)}</text>')
    return _svg(name, top + row * len(stacks) + 4, body, title)
