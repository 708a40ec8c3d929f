"""The report's content model: sections of paragraphs, notes, tables and figures.

One builder fills it from the results; the Markdown and HTML renderers only lay it out, so the
two reports cannot say different things.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field


@dataclass
class Paragraph:
    text: str


@dataclass
class Bullets:
    items: list[str]
    lead: str = ""


@dataclass
class Note:
    """Something the reader must know is missing (a skipped stage, a figure that could not be drawn)."""

    text: str


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class Figure:
    """A PNG figure; `name` is its file stem under figures/."""

    name: str
    png: bytes
    caption: str


Block = Paragraph | Bullets | Note | Table | Figure


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)

    @property
    def anchor(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.title.lower()).strip("-")


@dataclass
class Document:
    title: str
    subtitle: str
    sections: list[Section]

    def figures(self) -> list[Figure]:
        return [b for s in self.sections for b in s.blocks if isinstance(b, Figure)]
