"""Settings of the viz tools as plain data (no torch), so `vfe viz --help` can show their defaults fast."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class AscentConfig:
    """Gradient ascent toward an image that maximises a channel (`vfe.viz.maximize`)."""

    steps: int = 64
    lr: float = 0.05  # pixels per step (the gradient is RMS-normalised)
    l2_decay: float = 0.002
    blur_every: int = 4
    blur_sigma: float = 0.6
    jitter: int = 4  # pixels
    size: int | None = None  # image side (default: the network's input size)
    seed: int = 0
