"""Render the report's content model as GitHub-flavoured Markdown; figures link to figures/*.png."""
from __future__ import annotations

from vfe.report.document import Block, Bullets, Document, Figure, Note, Paragraph, Table


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(table: Table) -> list[str]:
    lines = ["| " + " | ".join(_cell(h) for h in table.header) + " |",
             "|" + "|".join(" --- " for _ in table.header) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in table.rows]
    return lines + ([f"\n*{table.caption}*"] if table.caption else [])


def _block(block: Block, figure_dir: str) -> list[str]:
    if isinstance(block, Paragraph):
        return [block.text]
    if isinstance(block, Bullets):
        return ([block.lead, ""] if block.lead else []) + [f"- {item}" for item in block.items]
    if isinstance(block, Note):
        return [f"> **Note.** {block.text}"]
    if isinstance(block, Table):
        return _table(block)
    if isinstance(block, Figure):
        return [f"![{_cell(block.caption)}]({figure_dir}/{block.name}.png)", "", f"*{block.caption}*"]
    raise TypeError(f"unknown report block {type(block).__name__}")


def to_markdown(doc: Document, figure_dir: str = "figures") -> str:
    lines = [f"# {doc.title}", "", f"*{doc.subtitle}*", ""]
    lines += [f"- [{s.title}](#{s.anchor})" for s in doc.sections] + [""]
    for section in doc.sections:
        lines += [f"## {section.title}", ""]
        for block in section.blocks:
            lines += _block(block, figure_dir) + [""]
    return "\n".join(lines)
