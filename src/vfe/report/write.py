"""Build the report's document from a run's results and write report.md, report.html and figures/*.png.

The robustness stages' sections come from the stages themselves (vfe.experiment.stages.sections.SECTIONS: each
stage's folder holds its section), handed in by the caller, since the stages sit above the report.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from vfe.io import atomic_write_bytes
from vfe.report import protocols, sections
from vfe.report.document import Document, Section
from vfe.report.leaderboard import leaderboard_section
from vfe.report.to_html import to_html
from vfe.report.to_markdown import to_markdown

FIGURE_DIR = "figures"


StageSection = Callable[[sections.Context], Section]


def build_document(results: dict, stage_sections: Sequence[StageSection]) -> Document:
    """The report's content, from results alone (see `vfe.report.inputs` for what the run adds for it), with
    `stage_sections` (one per robustness stage, in the order they run) after the comparison with the baseline."""
    if not isinstance(results, dict) or "clean" not in results:
        raise ValueError("results must be the dict of a run (vfe.experiment.run), holding at least 'clean'")
    ctx = sections.Context(results)
    parts = [sections.setting_section(ctx), protocols.finetune_section(results), sections.narrative_section(ctx),
             sections.summary_section(ctx), protocols.protocols_section(results),
             leaderboard_section(results), sections.comparison_section(ctx),
             *(section(ctx) for section in stage_sections),
             sections.calibration_section(ctx), sections.training_section(ctx), sections.sweep_section(ctx)]
    name = results.get("config", {}).get("name")
    title = "vfe robustness report" + (f": {name}" if name else "")
    return Document(title, ctx.setting_line, [p for p in parts if p is not None])


def write_report(out_dir: str | Path, results: dict, stage_sections: Sequence[StageSection]) -> dict[str, Path]:
    """Write report.md (figures linked), report.html (self-contained) and figures/*.png into `out_dir`; see
    `build_document` for `stage_sections`.

    Returns {"markdown": path, "html": path, <figure name>: path, ...}.
    """
    out_dir = Path(out_dir)
    doc = build_document(results, stage_sections)
    paths: dict[str, Path] = {}
    for figure in doc.figures():
        paths[figure.name] = out_dir / FIGURE_DIR / f"{figure.name}.png"
        atomic_write_bytes(paths[figure.name], figure.png)
    paths["markdown"] = out_dir / "report.md"
    atomic_write_bytes(paths["markdown"], to_markdown(doc, FIGURE_DIR).encode("utf-8"))
    paths["html"] = out_dir / "report.html"
    atomic_write_bytes(paths["html"], to_html(doc).encode("utf-8"))
    return paths
