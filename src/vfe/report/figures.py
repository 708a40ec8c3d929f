"""The report's figures, drawn with matplotlib (Agg) and returned as PNG bytes.

Every curve over replicates is a mean line with a +/- one standard deviation band; every figure's
title carries the setting (backbone, image size, data sizes, replicates), so a figure copied out of
the report still says what it measured.
"""
from __future__ import annotations

import io
import math
import textwrap
import warnings
from collections.abc import Callable, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import NullFormatter

from vfe.robustness.attack_spec import NORM_LABELS, AttackSpec

DPI = 100
BOOKKEEPING = ("epoch", "lr", "seconds", "time")
SEVERITY_AXIS_LABEL = "severity (0 = clean)"


def head_colours(heads: Sequence[str]) -> dict[str, tuple]:
    """One fixed colour per head, the same in every figure."""
    cmap = plt.get_cmap("tab10")
    return {h: cmap(i % 10) for i, h in enumerate(heads)}


def to_png(fig: plt.Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", facecolor="white")
    plt.close(fig)
    return buf.getvalue()


def _suptitle(fig: plt.Figure, subject: str, setting_line: str) -> None:
    fig.suptitle(f"{subject}\n{textwrap.fill(setting_line, 120)}", fontsize=10)


def _mean_std(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sample std over axis 0 (replicates), ignoring missing entries; std 0 for one replicate."""
    values = np.asarray(values, dtype=float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-missing column, e.g. an empty bin
        mean = np.nanmean(values, axis=0)
        n = np.sum(np.isfinite(values), axis=0)
        std = np.where(n > 1, np.nanstd(values, axis=0, ddof=1), 0.0)
    return mean, std


def _band(ax, x, values: np.ndarray, colour, label: str | None, linestyle: str = "-", marker: str = "o") -> None:
    mean, std = _mean_std(values)
    ax.plot(x, mean, color=colour, linestyle=linestyle, marker=marker, markersize=3.5, linewidth=1.6,
            label=label)
    if np.asarray(values).shape[0] > 1:
        ax.fill_between(x, mean - std, mean + std, color=colour, alpha=0.18, linewidth=0)


def severity_curves(curves: dict[str, dict[str, np.ndarray]], severities: Sequence[int],
                    colours: dict[str, tuple], subject: str, setting_line: str, n_cols: int = 5) -> bytes:
    """Accuracy (%) against severity, one panel per corruption, `n_cols` panels a row (fixed, so every
    family's figure has the same scale in the report).

    `curves[head][corruption]` is a replicates x (1 + n_severities) array; column 0 is clean accuracy.
    """
    corruptions = list(dict.fromkeys(c for per_head in curves.values() for c in per_head))
    n_rows = math.ceil(len(corruptions) / n_cols)
    panel = (3.0, 2.7) if n_cols > 1 else (6.0, 3.6)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(panel[0] * n_cols, panel[1] * n_rows + 0.8), squeeze=False,
                             sharey=True)
    x = [0, *severities]
    for ax, corruption in zip(axes.flat, corruptions, strict=False):  # spare panels stay empty
        for head, per_corruption in curves.items():
            if corruption in per_corruption:
                _band(ax, x, 100 * per_corruption[corruption], colours[head], head)
        ax.set_title(corruption.replace("_", " "), fontsize=9)
        ax.set_xticks(x)
        ax.grid(alpha=0.3)
        ax.set_xlabel(SEVERITY_AXIS_LABEL, fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("accuracy (%)")
    spare = axes.flat[len(corruptions):]
    for ax in spare:  # kept, not hidden, so every family's figure has the same width and scale
        ax.axis("off")
    if len(spare):
        spare[0].legend(*axes.flat[0].get_legend_handles_labels(), loc="center", fontsize=9)
    else:
        axes.flat[0].legend(fontsize=8, loc="lower left")
    _suptitle(fig, subject, setting_line)
    fig.tight_layout()
    return to_png(fig)


def adversarial_curves(curves: dict[str, dict[AttackSpec, np.ndarray]], clean: dict[str, np.ndarray],
                       colours: dict[str, tuple], subject: str, setting_line: str) -> bytes:
    """Accuracy (%) against attack radius, one panel per norm; naive attacks dashed, EOT solid.

    `curves[head][attack]` holds per-replicate accuracies (replicates,); `clean[head]` the accuracy on the
    same images before attack, drawn at eps = 0 as every curve's start.
    """
    norms = sorted({a.norm for per_head in curves.values() for a in per_head}, key=lambda n: (n != "linf", n))
    fig, axes = plt.subplots(1, len(norms), figsize=(5.2 * len(norms), 3.9), squeeze=False)
    markers = {}
    for ax, norm in zip(axes[0], norms, strict=True):
        ticks: dict[float, str] = {0.0: "0"}
        for head, per_attack in curves.items():
            lines = sorted({(a.method, a.eot) for a in per_attack if a.norm == norm})
            for attack_name, eot in lines:
                points = sorted((a for a in per_attack if a.norm == norm and a.method == attack_name
                                 and a.eot == eot), key=lambda a: a.eps)
                ticks.update({a.eps: a.eps_text for a in points})
                columns = [per_attack[a] for a in points]
                if head in clean:
                    columns = [clean[head], *columns]
                x = ([0.0] if head in clean else []) + [a.eps for a in points]
                marker = markers.setdefault(attack_name, "osD^v"[len(markers) % 5])
                _band(ax, x, 100 * np.stack(columns, axis=1), colours[head],
                      f"{head}, {attack_name.upper()}{' EOT' if eot else ''}",
                      linestyle="-" if eot else "--", marker=marker)
        ax.set_xticks(list(ticks), list(ticks.values()), fontsize=8)
        ax.set_xlabel(f"ε ({NORM_LABELS.get(norm, norm)})")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"{NORM_LABELS.get(norm, norm)} attacks", fontsize=9)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    _suptitle(fig, subject, setting_line)
    fig.tight_layout()
    return to_png(fig)


def reliability_diagrams(bins: dict[str, list[dict[str, np.ndarray]]], ece: dict[str, str],
                         colours: dict[str, tuple], subject: str, setting_line: str) -> bytes:
    """Per head: accuracy per confidence bin (mean +/- std over replicates) above the share of images per bin.

    `bins[head]` holds one entry per replicate with arrays `edges`, `accuracy`, `confidence`, `count`.
    """
    heads = list(bins)
    fig, axes = plt.subplots(2, len(heads), figsize=(4.0 * len(heads), 6.0), squeeze=False, layout="constrained",
                             gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    for col, head in enumerate(heads):
        per_rep = bins[head]
        edges = per_rep[0]["edges"]
        centres, width = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
        acc_mean, acc_std = _mean_std(np.stack([r["accuracy"] for r in per_rep]))
        conf_mean, _ = _mean_std(np.stack([r["confidence"] for r in per_rep]))
        ax = axes[0, col]
        ax.bar(centres, acc_mean, width=width, color=colours[head], alpha=0.75, edgecolor="white",
               yerr=acc_std if len(per_rep) > 1 else None, error_kw={"elinewidth": 0.8, "alpha": 0.7},
               label="accuracy in bin")
        ax.bar(centres, conf_mean - acc_mean, bottom=acc_mean, width=width, color="none", edgecolor="crimson",
               hatch="//", linewidth=0.5, label="gap to confidence")
        ax.plot([0, 1], [0, 1], color="0.3", linestyle=":", linewidth=1, label="perfect calibration")
        ax.set(xlim=(0, 1), ylim=(0, 1), title=f"{head}: ECE {ece.get(head, 'n/a')}")
        ax.title.set_fontsize(9)
        ax.set_ylabel("accuracy" if col == 0 else "")
        share = np.stack([r["count"] / max(r["count"].sum(), 1) for r in per_rep])
        axes[1, col].bar(centres, 100 * share.mean(0), width=width, color=colours[head], alpha=0.75)
        axes[1, col].set_xlabel("confidence (max probability)")
        axes[1, col].set_ylabel("% of images" if col == 0 else "")
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="outside lower center", ncol=3, fontsize=8)
    _suptitle(fig, subject, setting_line)
    return to_png(fig)


def corruption_grid(image: np.ndarray, corruptions: Sequence[str], severities: Sequence[int],
                    corrupt: Callable[[np.ndarray, str, int], np.ndarray], subject: str,
                    setting_line: str, rows_per_block: int = 10) -> bytes:
    """One image under every corruption (rows) and severity (columns), in side-by-side blocks of rows.

    Each block is one mosaic drawn by a single imshow (a hundred small axes take seconds to render).
    """
    image = image if image.ndim == 3 else image[..., None]
    n_blocks = math.ceil(len(corruptions) / rows_per_block)
    n_rows = math.ceil(len(corruptions) / n_blocks)
    n_cols = 1 + len(severities)
    h, w, channels = image.shape
    pad = max(1, h // 16)
    fig, axes = plt.subplots(1, n_blocks, figsize=(2.2 + 0.95 * n_cols * n_blocks + 1.4 * (n_blocks - 1),
                                                    0.95 * n_rows + 1.2), squeeze=False)
    for block, ax in enumerate(axes[0]):
        names = corruptions[block * n_rows:(block + 1) * n_rows]
        mosaic = np.full((n_rows * (h + pad) - pad, n_cols * (w + pad) - pad, channels), 255, dtype=np.uint8)
        for row, name in enumerate(names):
            for col, picture in enumerate([image, *(corrupt(image, name, s) for s in severities)]):
                picture = picture if picture.ndim == 3 else picture[..., None]
                if picture.shape != image.shape:
                    raise ValueError(f"corruption {name!r} changed the image shape {image.shape} -> {picture.shape}")
                mosaic[row * (h + pad):row * (h + pad) + h, col * (w + pad):col * (w + pad) + w] = picture
        ax.imshow(mosaic.squeeze(-1) if channels == 1 else mosaic, cmap="gray" if channels == 1 else None,
                  vmin=0, vmax=255, interpolation="nearest")
        ax.set_xticks([c * (w + pad) + w / 2 for c in range(n_cols)],
                      ["clean", *(f"s{s}" for s in severities)], fontsize=8)
        ax.set_yticks([r * (h + pad) + h / 2 for r in range(len(names))],
                      [n.replace("_", " ") for n in names], fontsize=8)
        ax.xaxis.tick_top()
        ax.tick_params(length=0)
        for spine in ax.spines.values():
            spine.set_visible(False)
    _suptitle(fig, subject, setting_line)
    fig.tight_layout()
    return to_png(fig)


def training_curves(histories: dict[str, dict[str, list[dict]]], subject: str, setting_line: str) -> bytes:
    """One row per training phase, one panel per metric; the first replicate solid, the others faint.

    `histories[replicate][phase]` is that phase's list of per-epoch records.
    """
    reps = list(histories)
    phases = list(dict.fromkeys(p for per_rep in histories.values() for p in per_rep))
    metrics = {p: _record_keys(histories[reps[0]].get(p, [])) for p in phases}
    n_cols = max(len(keys) for keys in metrics.values())
    fig, axes = plt.subplots(len(phases), n_cols, figsize=(3.6 * n_cols, 2.8 * len(phases) + 0.8), squeeze=False)
    for row, phase in enumerate(phases):
        for col in range(n_cols):
            ax = axes[row, col]
            if col >= len(metrics[phase]):
                ax.set_visible(False)
                continue
            key = metrics[phase][col]
            for i, rep in enumerate(reps):
                records = histories[rep].get(phase, [])
                epochs = [r["epoch"] for r in records]
                style = {"alpha": 1.0 if i == 0 else 0.3, "linewidth": 1.5 if i == 0 else 1.0}
                ax.plot(epochs, [r.get(key, np.nan) for r in records], color="C0",
                        label="train" if i == 0 else None, **style)
                if any(f"val_{key}" in r for r in records):
                    ax.plot(epochs, [r.get(f"val_{key}", np.nan) for r in records], color="C1",
                            label="validation" if i == 0 else None, **style)
            values = [r[k] for rep in reps for r in histories[rep].get(phase, []) for k in (key, f"val_{key}")
                      if k in r and np.isfinite(r[k])]
            if values and min(values) > 0 and max(values) / min(values) > 30:
                ax.set_yscale("log")
                ax.yaxis.set_minor_formatter(NullFormatter())
            ax.set_title(f"{phase}: {key}" if phase else key, fontsize=9)
            ax.set_xlabel("epoch", fontsize=8)
            ax.grid(alpha=0.3)
        axes[row, 0].legend(fontsize=7)
    _suptitle(fig, subject + f" (replicate {reps[0]} solid, replicates {', '.join(reps[1:]) or '-'} faint)",
              setting_line)
    fig.tight_layout()
    return to_png(fig)


def _record_keys(records: list[dict]) -> list[str]:
    """Metrics worth a panel: everything per epoch except bookkeeping (epoch, lr, time) and val_ twins."""
    keys = dict.fromkeys(k for r in records for k in r)
    return [k for k in keys if k not in BOOKKEEPING and not k.startswith("val_")]
