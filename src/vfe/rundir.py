"""One output folder per command: its figures (PNG), its numbers (metrics.json) and an HTML page.

Shared by `vfe lab` and `vfe viz` (and anything else that writes a run folder), so it lives at the
top of the package and imports neither. A folder that already holds a run is never overwritten
unless asked (`overwrite=True`), or reopened to continue it (`resume=True`, e.g. training that
restarts from its last checkpoint).
"""
from __future__ import annotations

import html
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from vfe.io import atomic_write_bytes, write_json

RUN_MARKERS = ("run.json", "metrics.json", "index.html", "checkpoints")  # what only a run folder holds


class Run:
    """Collects what a command writes and renders `index.html` listing it, in order."""

    def __init__(self, out: str | Path, title: str, overwrite: bool = False, resume: bool = False,
                 settings: dict | None = None):
        self.dir = Path(out)
        if self.dir.exists() and any(self.dir.iterdir()):
            if overwrite and not any((self.dir / m).exists() for m in RUN_MARKERS):
                raise FileExistsError(f"{self.dir} is not empty and holds no earlier run; --overwrite only "
                                      "replaces run folders: choose another --out")
            if overwrite:
                shutil.rmtree(self.dir)
            elif not resume:
                raise FileExistsError(f"{self.dir} already holds a run; pass --overwrite to replace it"
                                      " (or --out to write elsewhere)")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.title = title
        self.settings = dict(settings or {})
        self.items: list[tuple[str, object]] = []
        self.metrics: dict = {}
        self.started = time.time()

    def path(self, name: str) -> Path:
        return self.dir / name

    def figure(self, name: str, caption: str) -> Path:
        """The path to draw figure `name` at; it is listed on the page with `caption`."""
        self.items.append(("figure", (name, caption)))
        return self.dir / name

    def table(self, title: str, rows: Sequence[dict]) -> None:
        self.items.append(("table", (title, list(rows))))

    def text(self, paragraph: str) -> None:
        self.items.append(("text", paragraph))

    def record(self, **metrics) -> None:
        """Numbers that go to metrics.json (written now, so a crash later keeps them)."""
        self.metrics.update(metrics)
        write_json(self.dir / "metrics.json", self.metrics)

    def finish(self) -> Path:
        """Write run.json (settings, command line, duration) and index.html; returns the page's path."""
        seconds = round(time.time() - self.started, 1)
        command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])  # `vfe lab ...`, not the venv's path
        write_json(self.dir / "run.json", {"title": self.title, "settings": self.settings,
                                           "command": command, "seconds": seconds})
        write_json(self.dir / "metrics.json", self.metrics)
        page = self.dir / "index.html"
        atomic_write_bytes(page, render_page(self.title, self.settings, self.items, seconds).encode())
        return page


def _table_html(rows: list[dict]) -> str:
    if not rows:
        return "<p>(empty)</p>"
    cols = list(dict.fromkeys(k for r in rows for k in r))

    def cell(v):
        return f"{v:.4g}" if isinstance(v, float) else html.escape(str(v))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{cell(r.get(c, ''))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def render_page(title: str, settings: dict, items: list[tuple[str, object]], seconds: float) -> str:
    parts = [f"<h1>{html.escape(title)}</h1>",
             "<p class='settings'>" + ", ".join(f"{html.escape(str(k))}={html.escape(str(v))}"
                                                for k, v in settings.items()) + f"; {seconds} s</p>"]
    for kind, item in items:
        if kind == "figure":
            name, caption = item
            parts.append(f"<figure><img src='{html.escape(name)}' alt='{html.escape(caption)}'>"
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")
        elif kind == "table":
            t_title, rows = item
            parts.append(f"<h2>{html.escape(t_title)}</h2>{_table_html(rows)}")
        else:
            parts.append(f"<p>{html.escape(str(item))}</p>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "img{max-width:100%}figure{margin:1.5em 0}figcaption{color:#555;font-size:90%}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
             ".settings{color:#555;font-size:90%}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n")
