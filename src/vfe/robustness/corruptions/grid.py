"""One image under every corruption and severity, as a labelled figure a report can embed."""
from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from vfe.robustness.corruptions.apply import corrupt
from vfe.robustness.corruptions.parameters import SEVERITIES, parameter_set
from vfe.robustness.corruptions.registry import REGISTRY


def corruption_grid(image: np.ndarray, names: Sequence[str] | None = None,
                    severities: Sequence[int] = SEVERITIES, params: str = "auto", seed: int = 0,
                    cell_inches: float = 0.9) -> plt.Figure:
    """A figure with one row per corruption: the clean `image` (uint8, H x W [x C]), then each severity."""
    image = np.asarray(image)
    if image.ndim not in (2, 3):
        raise ValueError(f"corruption_grid: expected one H x W [x C] image, got shape {image.shape}")
    names = list(REGISTRY) if names is None else list(names)
    side = max(image.shape[:2])
    pset = parameter_set(params, side)
    grey = image.ndim == 2 or image.shape[-1] == 1
    fig, axes = plt.subplots(len(names), len(severities) + 1, squeeze=False, layout="constrained",
                             figsize=(cell_inches * (len(severities) + 1.6), cell_inches * len(names) + 0.6))
    for row, name in enumerate(names):
        cells = [image] + [corrupt(image[None], name, s, seed=seed, params=pset.name)[0] for s in severities]
        for col, cell in enumerate(cells):
            ax = axes[row, col]
            ax.imshow(np.squeeze(cell), cmap="gray" if grey else None, vmin=0, vmax=255,
                      interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title("clean" if col == 0 else f"severity {severities[col - 1]}", fontsize=8)
        axes[row, 0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(f"corruptions, {pset.name} parameters, {image.shape[0]}x{image.shape[1]} px, seed {seed}",
                 fontsize=9)
    return fig
