"""The report as one self-contained HTML page: inline CSS, inline SVG, no script.

The log carries what clients typed (HELO names, addresses), so every value is escaped,
and the page's own Content-Security-Policy forbids scripts and every fetch besides: a
value that escaped the escaping still could not run or call out.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import timedelta
from html import escape

from . import svg
from .sections import Cell, Section, heading, outcomes, ranked, sections
from .summary import Summary

CSP = "default-src 'none'; style-src 'unsafe-inline'"
STYLE = """
body { font: 14px/1.4 sans-serif; margin: 1.5em auto; max-width: 980px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
dl { display: grid; grid-template-columns: max-content auto; gap: 0 1em; }
dt { font-weight: bold; } dd { margin: 0; }
table { border-collapse: collapse; margin: .4em 0; }
th, td { padding: 2px 10px; border-bottom: 1px solid #ddd; text-align: left;
         font-family: monospace; word-break: break-all; }
td.n { text-align: right; }
.chart text { font: 12px sans-serif; fill: #333; }
.chart .grid { stroke: #ddd; }
.none, .more { color: #777; }
"""


def page(summary: Summary, top: int) -> str:
    tables = sections(summary, top)
    by_key = {section.key: section for section in tables}
    info = "".join(f"<dt>{escape(label)}</dt><dd>{escape(value)}</dd>"
                   for label, value in heading(summary))
    body = [f"<h1>policy-milter report</h1><dl>{info}</dl>", *_charts(summary, by_key)]
    body += [_table(section) for section in tables]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            f"<title>policy-milter report</title><style>{STYLE}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def _charts(summary: Summary, tables: dict[str, Section]) -> list[str]:
    """Transactions per hour, replies by entry, decisions by check: the three at a glance."""
    out = []
    found = outcomes(summary)
    if summary.hours:
        first, last = min(h for h, _ in summary.hours), max(h for h, _ in summary.hours)
        hours = [first + timedelta(hours=i)
                 for i in range(int((last - first).total_seconds()) // 3600 + 1)]
        stacks = [(h.strftime("%m-%d %H:00"), [(o, summary.hours[h, o]) for o in found])
                  for h in hours]
        title = "Transactions per hour (UTC), by outcome"
        out.append(f"<h2>{title}</h2>" + svg.columns("hours", title, stacks, found))
    entries = [(str(name), [(str(answer), int(count))])
               for name, answer, count, _ in tables["entry"].rows]
    if entries:
        title = "Replies by catalogue entry"
        out.append(f"<h2>{title}</h2>" + svg.bars(
            "entries", title, entries, sorted({s for _, segs in entries for s, _ in segs})))
    checks: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for (check, action), count in ranked(summary.checks):
        checks[check].append((action, count))
    if checks:
        title = "Decisions by check, by action"
        stacks = sorted(checks.items(), key=lambda kv: (-sum(n for _, n in kv[1]), kv[0]))
        out.append(f"<h2>{title}</h2>" + svg.bars(
            "checks", title, stacks, sorted({a for _, a in summary.checks})))
    return out


def _cell(value: Cell) -> str:
    return f'<td class="n">{value}</td>' if isinstance(value, int) else f"<td>{escape(value)}</td>"


def _table(section: Section) -> str:
    title = f'<h2 id="{section.key}">{escape(section.title)}</h2>'
    if not section.rows:
        return title + '<p class="none">none</p>'
    head = "".join(f"<th>{escape(c)}</th>" for c in section.columns)
    rows = "".join("<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in section.rows)
    more = f'<p class="more">… and {section.more} more (--top)</p>' if section.more else ""
    return f"{title}<table><tr>{head}</tr>{rows}</table>{more}"
