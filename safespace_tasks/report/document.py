"""The report page: a short list of blocks rendered to Markdown and to one self-contained HTML file."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from safespace_tasks.report.tables import Table

__all__ = ["Heading", "Paragraph", "Bullets", "Image", "Html", "Document", "to_markdown", "to_html"]


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Paragraph:
    text: str


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Image:
    path: Path  # relative to the report folder
    alt: str
    caption: str = ""


@dataclass
class Html:
    """Ready HTML (a sortable table with its script) for the HTML page; ``markdown`` stands in for it in Markdown."""

    html: str
    markdown: Table | None = None


Block = Union[Heading, Paragraph, Bullets, Image, Table, Html]


@dataclass
class Document:
    title: str
    blocks: list[Block]


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(t: Table) -> str:
    lines = [f"**{t.title}**", ""]
    lines.append("| " + " | ".join(_md_cell(c) for c in t.columns) + " |")
    align = t.align or ["l"] + ["r"] * (len(t.columns) - 1)
    lines.append("|" + "|".join(":---" if a == "l" else "---:" for a in align) + "|")
    for row in t.rows:
        lines.append("| " + " | ".join(_md_cell(c) for c in row) + " |")
    if t.notes:
        lines.append("")
        lines.extend(f"<sub>{n}</sub><br>" if i < len(t.notes) - 1 else f"<sub>{n}</sub>" for i, n in enumerate(t.notes))
    return "\n".join(lines)


def to_markdown(doc: Document) -> str:
    parts = [f"# {doc.title}"]
    for b in doc.blocks:
        if isinstance(b, Heading):
            parts.append("#" * b.level + " " + b.text)
        elif isinstance(b, Paragraph):
            parts.append(b.text)
        elif isinstance(b, Bullets):
            parts.append("\n".join(f"- {item}" for item in b.items))
        elif isinstance(b, Image):
            img = f"![{b.alt}]({b.path.as_posix()})"
            parts.append(img + (f"\n\n<sub>{b.caption}</sub>" if b.caption else ""))
        elif isinstance(b, Table):
            parts.append(_md_table(b))
        elif isinstance(b, Html) and b.markdown is not None:
            parts.append(_md_table(b.markdown))
    return "\n\n".join(parts) + "\n"


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1200px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right;white-space:nowrap}
th:first-child,td:first-child{text-align:left}
thead th{background:#f3f3f3}
caption{font-weight:600;text-align:left;padding:.3em 0}
.notes{font-size:.8em;color:#555;max-width:60em}
img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.8em;color:#555}
code{background:#f5f5f5;padding:0 .2em}
"""


def _html_text(text: str) -> str:
    """Escape, then render the few inline Markdown marks the report uses (`code` and **bold**)."""
    out = html.escape(text)
    parts = out.split("`")
    out = "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
    parts = out.split("**")
    return "".join(f"<strong>{p}</strong>" if i % 2 else p for i, p in enumerate(parts))


def to_html(doc: Document, root: Path) -> str:
    """One HTML file with the pictures embedded (data URIs), so it can be mailed or archived alone."""
    body = [f"<h1>{html.escape(doc.title)}</h1>"]
    for b in doc.blocks:
        if isinstance(b, Heading):
            body.append(f"<h{b.level}>{html.escape(b.text)}</h{b.level}>")
        elif isinstance(b, Paragraph):
            body.append(f"<p>{_html_text(b.text)}</p>")
        elif isinstance(b, Bullets):
            body.append("<ul>" + "".join(f"<li>{_html_text(i)}</li>" for i in b.items) + "</ul>")
        elif isinstance(b, Image):
            data = base64.b64encode((root / b.path).read_bytes()).decode("ascii")
            cap = f"<figcaption>{html.escape(b.caption)}</figcaption>" if b.caption else ""
            body.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(b.alt)}">{cap}</figure>')
        elif isinstance(b, Table):
            align = b.align or ["l"] + ["r"] * (len(b.columns) - 1)
            style = ['' if a == "r" else ' style="text-align:left"' for a in align]
            head = "".join(f"<th{st}>{html.escape(c)}</th>" for c, st in zip(b.columns, style))
            rows = "".join(
                "<tr>" + "".join(f"<td{st}>{html.escape(c)}</td>" for c, st in zip(r, style)) + "</tr>" for r in b.rows
            )
            notes = "".join(f"<p>{html.escape(n)}</p>" for n in b.notes)
            body.append(f"<table><caption>{html.escape(b.title)}</caption><thead><tr>{head}</tr></thead>"
                        f"<tbody>{rows}</tbody></table><div class=\"notes\">{notes}</div>")
        elif isinstance(b, Html):
            body.append(b.html)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(doc.title)}</title><style>{_CSS}</style></head>\n<body>\n"
        + "\n".join(body) + "\n</body></html>\n"
    )
