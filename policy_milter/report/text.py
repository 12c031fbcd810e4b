"""The report as aligned text: one line per row, its table's key first, for grep and awk.

Values from the log are written as the log writes them (log.quote): bare when safe,
else quoted with escapes, so a hostile HELO name cannot move the columns or reach the
terminal as a control sequence.  Tables with no rows say so on their title line.
"""

from __future__ import annotations

from ..log import quote
from .sections import Section, heading, sections
from .summary import Summary


def render(summary: Summary, top: int) -> str:
    width = max(len(label) for label, _ in heading(summary))
    out = ["# policy-milter report"]
    out += [f"# {label.ljust(width)}  {_printable(value)}" for label, value in heading(summary)]
    for section in sections(summary, top):
        out += ["", *_table(section)]
    return "\n".join(out) + "\n"


def _printable(text: str) -> str:
    """Text as it reads, but with any control character escaped as the log escapes it."""
    return "".join(c if c.isprintable() else quote(c)[1:-1] for c in text)


def _table(section: Section) -> list[str]:
    if not section.rows:
        return [f"# {section.title}: none"]
    cells = [[quote(c) if isinstance(c, str) else str(c) for c in row] for row in section.rows]
    header = ["#", *section.columns]
    lines = [[section.key, *row] for row in cells]
    widths = [max(len(line[i]) for line in (header, *lines)) for i in range(len(header))]
    numeric = [False, *(isinstance(c, int) for c in section.rows[0])]
    out = [f"# {section.title}", _line(header, widths, [False] * len(header))]
    out += [_line(line, widths, numeric) for line in lines]
    if section.more:
        out.append(f"# ... and {section.more} more (--top)")
    return out


def _line(cells: list[str], widths: list[int], numeric: list[bool]) -> str:
    text = "  ".join(c.rjust(w) if right else c.ljust(w)
                     for c, w, right in zip(cells, widths, numeric, strict=True))
    return text.rstrip()
