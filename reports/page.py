"""The offline HTML page both reports are written as: sections, tables, embedded PNGs.

A report is a list of :class:`Section` s (text, small tables, at most one figure each).
:func:`write_report` renders them into a single HTML file that opens offline (every PNG
is embedded as a base64 ``data:`` URI, the CSS is inline, nothing is fetched) and also
writes each PNG beside it, for slides and issues. What a page shows is checked for
patient identifiers by each report (:mod:`pneumotune.reports.privacy`) before it is written.
"""

from __future__ import annotations

import base64
import html
import numbers
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Self

from matplotlib.figure import Figure

from pneumotune.reports.figures import png_bytes


def plural(count: int, noun: str) -> str:
    """``"1 image"``, ``"3 images"`` (regular English plurals only)."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


# --------------------------------------------------------------------------- page model
@dataclass(frozen=True)
class Table:
    """A small table: ``header`` names the columns, each row has as many cells.

    ``marked`` holds the indices of rows to highlight (e.g. settings that differ); say
    in a cell or the caption why a row is marked too, not by colour alone.
    """

    header: Sequence[str]
    rows: Sequence[Sequence[object]]
    caption: str = ""
    marked: Sequence[int] = ()


@dataclass
class Section:
    """One part of a report: an ``h2`` (or ``h3`` when ``level`` is 3) with an anchor ``key``.

    ``paragraphs`` are plain text (escaped when rendered); ``png`` is the figure, if
    any, shown under the text with ``caption``.
    """

    key: str
    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    png: bytes | None = None
    caption: str = ""
    level: int = 2


def section_text(sections: list[Section]) -> list[str]:
    """Every string a reader sees in ``sections`` (figures aside): what a report checks
    for patient identifiers before it is written."""
    texts: list[str] = []
    for s in sections:
        texts += [s.title, s.caption, *s.paragraphs]
        for t in s.tables:
            texts += [t.caption, *map(str, t.header)]
            texts += [str(c) for row in t.rows for c in row]
    return texts


def figure_section(
    key: str, title: str, fig: Figure | None, empty_text: str, caption: str = "", **kw: Any
) -> Section:
    """A section showing ``fig``, or saying ``empty_text`` when there is nothing to draw
    (an empty axis would look like a bug)."""
    section = Section(key, title, **kw)
    if fig is None:
        section.paragraphs.append(empty_text)
    else:
        section.png, section.caption = png_bytes(fig), caption
    return section


@dataclass(frozen=True)
class WrittenReport:
    """What :func:`write_report` wrote; each report's result extends it with its own facts.

    ``figures`` maps a section key to its PNG for the sections that drew one;
    ``sections`` lists every section key, in page order (each is an ``id`` in the HTML).
    """

    html: Path
    pngs: tuple[Path, ...]
    figures: dict[str, Path]
    sections: tuple[str, ...]

    @classmethod
    def extending(cls, written: WrittenReport, **more: Any) -> Self:
        """A ``cls`` (a subclass) with the fields of ``written`` and the ``more`` of its own."""
        return cls(**{f.name: getattr(written, f.name) for f in fields(WrittenReport)}, **more)


def write_report(
    out_dir: Path, title: str, intro: Iterable[str], sections: Sequence[Section]
) -> WrittenReport:
    """Write ``report.html`` and one ``<key>.png`` per figure into ``out_dir`` (created).

    PNGs named after a section key that now has no figure are removed, so a folder
    re-used across runs never shows a stale picture beside the page.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Path] = {}
    for section in sections:
        path = out_dir / f"{section.key}.png"
        if section.png is not None:
            path.write_bytes(section.png)
            figures[section.key] = path
        elif path.exists():
            path.unlink()
    page = out_dir / "report.html"
    page.write_text(render_html(title, intro, sections), encoding="utf-8")
    keys = tuple(s.key for s in sections)
    return WrittenReport(page, tuple(figures.values()), figures, keys)


def render_html(title: str, intro: Iterable[str], sections: Sequence[Section]) -> str:
    """One self-contained HTML page (inline CSS, PNGs as ``data:`` URIs, no script)."""
    esc = html.escape
    toc = "\n".join(
        f'<li class="l{s.level}"><a href="#{esc(s.key)}">{esc(s.title)}</a></li>' for s in sections
    )
    body = "\n".join(_render_section(s) for s in sections)
    paragraphs = "\n".join(f"<p>{esc(p)}</p>" for p in intro)
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title>
<style>{_CSS}</style>
</head>
<body>
<header>
<h1>{esc(title)}</h1>
{paragraphs}
<nav><ul>
{toc}
</ul></nav>
</header>
<main>
{body}
</main>
</body>
</html>
"""


def _render_section(section: Section) -> str:
    esc = html.escape
    tag = f"h{section.level}"
    parts = [f'<section id="{esc(section.key)}" class="l{section.level}">']
    parts.append(f"<{tag}>{esc(section.title)}</{tag}>")
    parts += [f"<p>{esc(p)}</p>" for p in section.paragraphs]
    parts += [_render_table(t) for t in section.tables]
    if section.png is not None:
        data = base64.b64encode(section.png).decode("ascii")
        alt = esc(section.caption or section.title)
        parts.append(
            f'<figure><img src="data:image/png;base64,{data}" alt="{alt}">'
            f"<figcaption>{esc(section.caption)}</figcaption></figure>"
        )
    parts.append("</section>")
    return "\n".join(parts)


def _render_table(table: Table) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(str(h))}</th>" for h in table.header)
    marked = set(table.marked)
    rows = "\n".join(
        ('<tr class="marked">' if i in marked else "<tr>")
        + "".join(_cell(c) for c in row)
        + "</tr>"
        for i, row in enumerate(table.rows)
    )
    caption = f"<caption>{esc(table.caption)}</caption>" if table.caption else ""
    # In a scrolling box: a wide table (many columns) scrolls alone, the page does not.
    return (
        f'<div class="table-box"><table>{caption}<thead><tr>{head}</tr></thead><tbody>\n'
        f"{rows}\n</tbody></table></div>"
    )


def _cell(value: object) -> str:
    # Numbers right-aligned in tabular figures, so that columns of counts line up.
    is_number = isinstance(value, numbers.Number) and not isinstance(value, bool)
    cls = ' class="num"' if is_number else ""
    return f"<td{cls}>{html.escape(str(value))}</td>"


_CSS = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       color: #222; background: #fafafa; margin: 0; }
header, main { max-width: 1200px; margin: 0 auto; padding: 0 24px; }
header { padding-top: 16px; border-bottom: 1px solid #ddd; }
h1 { font-size: 26px; margin: 8px 0; }
h2 { font-size: 21px; margin: 32px 0 8px; border-bottom: 1px solid #ddd; }
h3 { font-size: 17px; margin: 24px 0 6px; }
nav ul { columns: 3; list-style: none; padding: 0; margin: 8px 0 16px; }
nav li.l3 { padding-left: 1.2em; }
nav a { color: #0060a0; text-decoration: none; }
figure { margin: 12px 0 24px; }
figure img { max-width: 100%; height: auto; border: 1px solid #e4e4e4; background: white; }
figcaption { color: #555; font-size: 14px; margin-top: 4px; }
table { border-collapse: collapse; margin: 8px 0 16px; background: white; }
caption { text-align: left; color: #555; font-size: 14px; padding-bottom: 4px;
          white-space: nowrap; }
th, td { border: 1px solid #ddd; padding: 3px 10px; text-align: left; }
th { background: #f0f0f0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.marked td { background: #fff1c2; font-weight: 600; }
.table-box { max-width: 100%; overflow-x: auto; }
"""
