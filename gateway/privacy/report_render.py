"""A small document model (sections of paragraphs, lists and tables) rendered as Markdown or as
a self-contained HTML page: the processing record, and any other report a DPO reads."""

from __future__ import annotations

import dataclasses
import html
from collections.abc import Sequence


@dataclasses.dataclass(frozen=True)
class Table:
    headers: Sequence[str]
    rows: Sequence[Sequence[object]]


Block = str | list[str] | Table
"""A paragraph, a bullet list, or a table."""


@dataclasses.dataclass(frozen=True)
class Section:
    title: str
    blocks: Sequence[Block]


@dataclasses.dataclass(frozen=True)
class Document:
    title: str
    subtitle: str
    sections: Sequence[Section]


def _text_md(value: object) -> str:
    # Markdown viewers render raw HTML: names and notes from the config must stay text.
    text = "" if value is None else str(value)
    return text.replace("\\", "\\\\").replace("<", "\\<").replace(">", "\\>")


def _cell_md(value: object) -> str:
    return _text_md(value).replace("|", "\\|").replace("\n", " ")


def to_markdown(doc: Document) -> str:
    out = [f"# {doc.title}", "", doc.subtitle, ""]
    for section in doc.sections:
        out += [f"## {section.title}", ""]
        for block in section.blocks:
            if isinstance(block, Table):
                if not block.rows:
                    out += ["(none)", ""]
                    continue
                out.append("| " + " | ".join(_cell_md(h) for h in block.headers) + " |")
                out.append("|" + "---|" * len(block.headers))
                out += ["| " + " | ".join(_cell_md(c) for c in row) + " |" for row in block.rows]
            elif isinstance(block, list):
                out += [f"- {_text_md(item)}" for item in block] or ["(none)"]
            else:
                out.append(_text_md(block))
            out.append("")
    return "\n".join(out).rstrip() + "\n"


_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:70rem;margin:2rem auto;padding:0 1rem;"
    "color:#111}table{border-collapse:collapse;margin:.5rem 0 1rem}th,td{border:1px solid #bbb;"
    "padding:.3rem .5rem;text-align:left;vertical-align:top}th{background:#eee}"
    "h2{border-bottom:1px solid #ccc;padding-bottom:.2rem;margin-top:2rem}"
)


def to_html(doc: Document) -> str:
    e = html.escape
    out = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(doc.title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{e(doc.title)}</h1><p>{e(doc.subtitle)}</p>",
    ]
    for section in doc.sections:
        out.append(f"<h2>{e(section.title)}</h2>")
        for block in section.blocks:
            if isinstance(block, Table):
                if not block.rows:
                    out.append("<p>(none)</p>")
                    continue
                out.append("<table><thead><tr>")
                out += [f"<th>{e(str(h))}</th>" for h in block.headers]
                out.append("</tr></thead><tbody>")
                for row in block.rows:
                    cells = "".join(f"<td>{e('' if c is None else str(c))}</td>" for c in row)
                    out.append(f"<tr>{cells}</tr>")
                out.append("</tbody></table>")
            elif isinstance(block, list):
                items = "".join(f"<li>{e(item)}</li>" for item in block)
                out.append(f"<ul>{items}</ul>" if block else "<p>(none)</p>")
            else:
                out.append(f"<p>{e(block)}</p>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"
