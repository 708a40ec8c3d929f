"""Generic figures both `vfe lab` and `vfe viz` draw, written atomically as PNG.

Images come in as N x C x H x W tensors (or arrays) in [0, 1]; grids are composed with
torchvision's `make_grid` and drawn with matplotlib's Agg backend (no display needed). Figures
that only one package draws (the lab's latent traversal) live in that package; this module
imports neither, so the two stay independent.
"""
from __future__ import annotations

import io
import textwrap
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.ticker import FuncFormatter, NullFormatter
from torchvision.utils import make_grid

from vfe.io import atomic_write_bytes


def save_figure(fig: plt.Figure, path: str | Path, dpi: int = 110) -> Path:
    """Render `fig` to PNG bytes and write them atomically; closes the figure."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def wrap_title(title: str | None, width: int = 100) -> str | None:
    """Long titles wrapped at `width`, keeping the line breaks they already have."""
    return "\n".join(textwrap.fill(line, width) for line in title.splitlines()) if title else title


def _plain_log_ticks(axis, values: Sequence[float] | None = None) -> None:
    """Numbers like 2, 50, 0.03 on a log axis instead of 2x10^0; ticks at `values` when given."""
    if values is not None:
        axis.set_ticks(list(values))
        axis.set_minor_formatter(NullFormatter())
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))


def as_images(images) -> torch.Tensor:
    """A float N x C x H x W CPU tensor from a tensor or array (N x H x W and N x H x W x C accepted)."""
    t = torch.as_tensor(np.asarray(images) if not torch.is_tensor(images) else images).detach().cpu().float()
    if t.ndim == 3:
        t = t[:, None]
    if t.ndim != 4:
        raise ValueError(f"expected N x C x H x W images, got shape {tuple(t.shape)}")
    if t.shape[1] not in (1, 3) and t.shape[-1] in (1, 3):
        t = t.permute(0, 3, 1, 2)  # NHWC -> NCHW
    return t


def grid_array(images, nrow: int, padding: int = 1, pad_value: float = 1.0) -> np.ndarray:
    """One H x W x 3 array in [0, 1] holding `images` in rows of `nrow` (torchvision's make_grid)."""
    t = as_images(images)
    grid = make_grid(t.clamp(0, 1), nrow=nrow, padding=padding, pad_value=pad_value)
    return grid.permute(1, 2, 0).numpy()


def image_rows(rows: Sequence[tuple[str, object]], path: str | Path, title: str | None = None,
               scale: float = 0.6) -> Path:
    """Labelled rows of images (e.g. originals / noisy / reconstructed), one image per column."""
    n_cols = max(len(as_images(images)) for _, images in rows)
    fig, axes = plt.subplots(len(rows), 1, figsize=(max(4.0, scale * n_cols), scale * 1.15 * len(rows) + 0.4),
                             squeeze=False)
    for ax, (label, images) in zip(axes[:, 0], rows):
        ax.imshow(grid_array(images, nrow=n_cols), cmap="gray", interpolation="nearest")
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(wrap_title(title), fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def _colourise(t: torch.Tensor, cmap: str) -> torch.Tensor:
    """N x 1 x H x W in [0, 1] -> N x 3 x H x W through a matplotlib colour map."""
    rgb = plt.get_cmap(cmap)(t[:, 0].clamp(0, 1).numpy())[..., :3]
    return torch.from_numpy(rgb).permute(0, 3, 1, 2).float()


def image_grid(images, path: str | Path, nrow: int, title: str | None = None, normalize_each: bool = False,
               size: float = 6.0, cmap: str | None = None) -> Path:
    """A single grid of images, e.g. the first N channels of a feature map (each scaled on its own).

    Single-channel images are drawn through `cmap` when given (e.g. viridis for feature maps).
    """
    t = as_images(images)
    if normalize_each:
        lo = t.flatten(1).min(1).values[:, None, None, None]
        hi = t.flatten(1).max(1).values[:, None, None, None]
        t = (t - lo) / (hi - lo).clamp_min(1e-8)
    if cmap is not None and t.shape[1] == 1:
        t = _colourise(t, cmap)
    arr = grid_array(t, nrow=nrow)
    fig, ax = plt.subplots(figsize=(size, size * arr.shape[0] / arr.shape[1] + (0.4 if title else 0)))
    ax.imshow(arr, interpolation="antialiased")
    ax.axis("off")
    if title:
        ax.set_title(wrap_title(title, int(14 * size)), fontsize=9)
    return save_figure(fig, path, dpi=max(110, int(1.2 * arr.shape[1] / size)))


def scatter_classes(points: np.ndarray, labels: np.ndarray, class_names: Sequence[str], path: str | Path,
                    title: str | None = None, axis_labels: tuple[str, str] = ("1", "2")) -> Path:
    """2-D points coloured by class, with a legend naming the classes."""
    fig, ax = plt.subplots(figsize=(7, 6))
    cmap = plt.get_cmap("tab10" if len(class_names) <= 10 else "tab20")
    for c, name in enumerate(class_names):
        sel = labels == c
        if sel.any():
            ax.scatter(points[sel, 0], points[sel, 1], s=4, alpha=0.6, color=cmap(c % cmap.N), label=name)
    ax.set_xlabel(axis_labels[0])
    ax.set_ylabel(axis_labels[1])
    ax.legend(markerscale=4, fontsize=8, loc="best", framealpha=0.8)
    if title:
        ax.set_title(wrap_title(title, 80), fontsize=10)
    return save_figure(fig, path)


def history_figure(records: Sequence[dict], path: str | Path, keys: Sequence[str] | None = None,
                   best_epoch: int | None = None, title: str | None = None) -> Path:
    """Training curves: one panel per metric (loss, mse, acc, ...), training and validation together."""
    if not records:
        raise ValueError("no history records to plot")
    if keys is None:
        keys = [k for k in records[0] if k not in ("epoch", "lr", "seconds") and not k.startswith("val_")]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.3), squeeze=False)
    epochs = [r["epoch"] for r in records]
    for ax, key in zip(axes[0], keys):
        ax.plot(epochs, [r.get(key, np.nan) for r in records], marker=".", label="train")
        if any(f"val_{key}" in r for r in records):
            ax.plot(epochs, [r.get(f"val_{key}", np.nan) for r in records], marker=".", label="validation")
        if best_epoch is not None:
            ax.axvline(best_epoch, color="grey", ls="--", lw=1, label=f"best (epoch {best_epoch})")
        ax.set_xlabel("epoch")
        ax.set_title(key, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(wrap_title(title), fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def line_figure(x: Sequence[float], series: dict[str, Sequence[float]], path: str | Path, xlabel: str,
                ylabel: str, title: str | None = None, logx: bool = False,
                errors: dict[str, Sequence[float]] | None = None, hlines: dict[str, float] | None = None,
                logy: bool = False) -> Path:
    """Named series against a shared x (optional error bars, reference levels), e.g. accuracy vs labels."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, ys in series.items():
        err = (errors or {}).get(name)
        ax.errorbar(x, ys, yerr=err, marker="o", capsize=3, label=name)
    for i, (name, level) in enumerate((hlines or {}).items()):
        ax.axhline(level, color=f"C{len(series) + i}", ls="--", lw=1, label=name)
    if logy:
        ax.set_yscale("log")
        _plain_log_ticks(ax.yaxis)
        ax.yaxis.set_minor_formatter(ax.yaxis.get_major_formatter())
    if logx:
        ax.set_xscale("log")
        _plain_log_ticks(ax.xaxis, x)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    if title:
        ax.set_title(wrap_title(title, 80), fontsize=10)
    return save_figure(fig, path)


def bar_figure(values: dict[str, float], path: str | Path, ylabel: str, title: str | None = None,
               fmt: str = "{:.3f}") -> Path:
    """Labelled bars with their values written on top (e.g. accuracy per feature kind)."""
    fig, ax = plt.subplots(figsize=(1.6 * len(values) + 2, 4))
    bars = ax.bar(list(values), list(values.values()), color=plt.get_cmap("tab10").colors[:len(values)])
    for bar, v in zip(bars, values.values()):
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), fmt.format(v), ha="center", va="bottom")
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, max(values.values()) * 1.15)
    if title:
        ax.set_title(wrap_title(title, 80), fontsize=10)
    return save_figure(fig, path)
