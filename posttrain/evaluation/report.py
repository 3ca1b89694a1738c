"""``report.md`` and ``report.html``: tables, plots and sample completions side by side.

Everything a model wrote is escaped (HTML entities in the HTML file; ``|``, ``<`` and newlines in
Markdown table cells), so a completion can never inject markup into the report. Images are
referenced by file name relative to the report, so the directory can be moved as a whole.
"""

from __future__ import annotations

import html
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Table:
    caption: str
    headers: list[str]
    rows: list[list]  # cells: str, int, float, (lo, hi), None
    note: str = ""


@dataclass
class Samples:
    """Completions of several systems for the same prompts: ``columns`` names the systems and
    each row is ``(prompt, [(text, score or None) per column])``."""

    caption: str
    columns: list[str]
    rows: list[tuple[str, list[tuple[str, float | None]]]]
    score_name: str = "score"


@dataclass
class Report:
    title: str
    paragraphs: list[str] = field(default_factory=list)  # plain text, shown before everything
    tables: list[Table] = field(default_factory=list)
    images: list[tuple[str, str]] = field(default_factory=list)  # (caption, file name)
    samples: list[Samples] = field(default_factory=list)


def fmt(value) -> str:
    """A table cell as text: floats to 3 significant decimals, intervals as [lo, hi]."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value != value:  # nan
            return "–"
        return f"{value:.3f}" if abs(value) < 1e4 else f"{value:.3g}"
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return f"[{fmt(value[0])}, {fmt(value[1])}]"
    return str(value)


_CONTROL = {c: "\ufffd" for c in range(32) if chr(c) not in "\n\t"} | {127: "\ufffd"}


def clean(text: str) -> str:
    """Model text with control characters (a tiny model can emit any byte) made visible as U+FFFD."""
    return text.translate(_CONTROL)


def _md_cell(text: str) -> str:
    text = clean(text)
    text = text.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
    return " ".join(text.split("\n"))


def to_markdown(report: Report) -> str:
    out = [f"# {report.title}", ""]
    for p in report.paragraphs:
        out += [p, ""]
    for t in report.tables:
        out += [f"## {t.caption}", ""]
        out.append("| " + " | ".join(_md_cell(h) for h in t.headers) + " |")
        out.append("|" + "---|" * len(t.headers))
        for row in t.rows:
            out.append("| " + " | ".join(_md_cell(fmt(c)) for c in row) + " |")
        out.append("")
        if t.note:
            out += [t.note, ""]
    for caption, name in report.images:
        out += [f"## {caption}", "", f"![{_md_cell(caption)}]({name})", ""]
    for s in report.samples:
        out += [f"## {s.caption}", ""]
        out.append("| prompt | " + " | ".join(_md_cell(c) for c in s.columns) + " |")
        out.append("|" + "---|" * (len(s.columns) + 1))
        for prompt, cells in s.rows:
            shown = [
                _md_cell(text) + ("" if score is None else f" ({s.score_name} {score:.2f})")
                for text, score in cells
            ]
            out.append(f"| {_md_cell(prompt)} | " + " | ".join(shown) + " |")
        out.append("")
    return "\n".join(out)


_CSS = """
body { font-family: system-ui, sans-serif; max-width: 72rem; margin: 2rem auto; padding: 0 1rem;
       color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; font-size: 0.92rem; }
th, td { border: 1px solid #ccc; padding: 0.3rem 0.6rem; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; border: 1px solid #ddd; }
.score { color: #666; font-size: 0.85em; white-space: nowrap; }
.note { color: #555; font-size: 0.9em; }
"""


def to_html(report: Report) -> str:
    def e(text: str) -> str:
        return html.escape(clean(text))

    out = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(report.title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{e(report.title)}</h1>",
    ]
    out += [f"<p>{e(p)}</p>" for p in report.paragraphs]
    for t in report.tables:
        out.append(f"<h2>{e(t.caption)}</h2><table><tr>")
        out += [f"<th>{e(h)}</th>" for h in t.headers]
        out.append("</tr>")
        for row in t.rows:
            cells = []
            for c in row:
                cls = (
                    ' class="num"'
                    if isinstance(c, (int, float)) and not isinstance(c, bool)
                    else ""
                )
                cells.append(f"<td{cls}>{e(fmt(c))}</td>")
            out.append("<tr>" + "".join(cells) + "</tr>")
        out.append("</table>")
        if t.note:
            out.append(f'<p class="note">{e(t.note)}</p>')
    for caption, name in report.images:
        out.append(f'<h2>{e(caption)}</h2><img src="{e(name)}" alt="{e(caption)}">')
    for s in report.samples:
        out.append(f"<h2>{e(s.caption)}</h2><table><tr><th>prompt</th>")
        out += [f"<th>{e(c)}</th>" for c in s.columns]
        out.append("</tr>")
        for prompt, cells in s.rows:
            row = [f"<td>{e(prompt)}</td>"]
            for text, score in cells:
                tag = (
                    ""
                    if score is None
                    else f' <span class="score">({e(s.score_name)} {score:.2f})</span>'
                )
                row.append(f"<td>{e(text)}{tag}</td>")
            out.append("<tr>" + "".join(row) + "</tr>")
        out.append("</table>")
    out.append("</body></html>")
    return "\n".join(out)


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def write_report(report: Report, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``out_dir/report.md`` and ``out_dir/report.html``; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md, page = out_dir / "report.md", out_dir / "report.html"
    _write_atomic(md, to_markdown(report) + "\n")
    _write_atomic(page, to_html(report) + "\n")
    return md, page


def metric_table(
    caption: str, systems: Sequence[str], metrics: Sequence[dict], keys: Sequence[tuple[str, str]]
) -> Table:
    """A table with one row per system and one column per ``(key, header)`` of ``keys``."""
    rows = [[name, *[m.get(k) for k, _ in keys]] for name, m in zip(systems, metrics)]
    return Table(caption, ["system", *[h for _, h in keys]], rows)
