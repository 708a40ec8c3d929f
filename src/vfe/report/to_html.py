"""Render the report's content model as one self-contained HTML file: inline CSS, figures as data URIs.

No script and no external resource, so the file opens offline and can be mailed as is.
"""
from __future__ import annotations

import base64
import re
from html import escape

from vfe.report.document import Block, Bullets, Document, Figure, Note, Paragraph, Table

NUMERIC = re.compile(r"^[−+±-]?\d")
SHORT = 30  # characters: a cell this short never wraps (verdicts, labels)
CSS = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2328;
       max-width: 1180px; margin: 0 auto; padding: 24px 32px 64px; background: #fff; }
h1 { font-size: 26px; margin-bottom: 2px; }
h2 { font-size: 20px; margin-top: 40px; padding-bottom: 4px; border-bottom: 1px solid #d0d7de; }
.subtitle { color: #57606a; margin-top: 0; }
nav ul { columns: 2; padding-left: 20px; margin: 8px 0 0; }
nav a, nav a:visited { color: #0969da; text-decoration: none; }
table { border-collapse: collapse; margin: 12px 0 4px; font-size: 13.5px; }
th, td { border: 1px solid #d0d7de; padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: #f6f8fa; }
td.short { white-space: nowrap; }
td.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
tbody tr:nth-child(even) { background: #fafbfc; }
.caption, figcaption { color: #57606a; font-size: 13px; margin: 2px 0 16px; }
.note { background: #fff8c5; border-left: 4px solid #d4a72c; padding: 8px 12px; margin: 12px 0; }
figure { margin: 16px 0 24px; }
figure img { max-width: 100%; height: auto; border: 1px solid #eaeef2; }
.scroll { overflow-x: auto; }
ul.findings li { margin-bottom: 6px; }
"""


def _cell(text: str) -> str:
    """Numbers align right (their digits line up down a column), words left; only long text wraps."""
    if NUMERIC.match(text):
        return f'<td class="num">{escape(text)}</td>'
    return f'<td class="short">{escape(text)}</td>' if len(text) <= SHORT else f"<td>{escape(text)}</td>"


def _table(table: Table) -> str:
    head = "".join(f"<th>{escape(str(h))}</th>" for h in table.header)
    body = "".join("<tr>" + "".join(_cell(str(c)) for c in row) + "</tr>" for row in table.rows)
    caption = f'<p class="caption">{escape(table.caption)}</p>' if table.caption else ""
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>{caption}'


def _figure(figure: Figure) -> str:
    data = base64.b64encode(figure.png).decode("ascii")
    return (f'<figure id="fig-{escape(figure.name)}"><img alt="{escape(figure.caption)}" '
            f'src="data:image/png;base64,{data}"><figcaption>{escape(figure.caption)}</figcaption></figure>')


def _block(block: Block) -> str:
    if isinstance(block, Paragraph):
        return f"<p>{escape(block.text)}</p>"
    if isinstance(block, Bullets):
        lead = f"<p>{escape(block.lead)}</p>" if block.lead else ""
        return lead + '<ul class="findings">' + "".join(f"<li>{escape(i)}</li>" for i in block.items) + "</ul>"
    if isinstance(block, Note):
        return f'<p class="note"><strong>Note.</strong> {escape(block.text)}</p>'
    if isinstance(block, Table):
        return _table(block)
    if isinstance(block, Figure):
        return _figure(block)
    raise TypeError(f"unknown report block {type(block).__name__}")


def to_html(doc: Document) -> str:
    nav = "".join(f'<li><a href="#{s.anchor}">{escape(s.title)}</a></li>' for s in doc.sections)
    body = "".join(f'<section id="{s.anchor}"><h2>{escape(s.title)}</h2>' + "".join(_block(b) for b in s.blocks)
                   + "</section>" for s in doc.sections)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{escape(doc.title)}</title><style>{CSS}</style></head><body>"
            f'<h1>{escape(doc.title)}</h1><p class="subtitle">{escape(doc.subtitle)}</p>'
            f"<nav><ul>{nav}</ul></nav>{body}</body></html>\n")
