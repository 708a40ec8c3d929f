"""A NumPy-only backbone and image set: fast enough for property tests and cheap to import in subprocesses."""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from vfe.data.types import ImageSet


def tiny_set(n: int = 40) -> ImageSet:
    """n random 8 x 8 grayscale images with labels, the same every call."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, 8, 8, 1), dtype=np.uint8)
    return ImageSet(images, rng.integers(0, 10, size=n), [str(i) for i in range(10)], source="tiny")


class TinyBackbone:
    """8 signed features per image (a fixed projection of its pixels), in batches of 8.

    Counts the images it computes; with `log`, appends "<pid> <rows>" per batch (to count across
    processes); with `gate`, stops after its first batch until that file exists (to hold its shards).
    """

    name = "tiny"

    def __init__(self, log: Path | None = None, gate: Path | None = None):
        self.log, self.gate, self.images = log, gate, 0
        self.weights = np.random.default_rng(1).normal(size=(64, 8)).astype(np.float32)

    def fingerprint(self) -> str:
        return "tiny-projection-v1"

    def iter_features(self, shards):
        for images in shards:
            for lo in range(0, len(images), 8):
                if self.gate is not None and self.images:
                    while not self.gate.exists():
                        time.sleep(0.02)
                x = np.asarray(images[lo:lo + 8], dtype=np.float32).reshape(-1, 64) / 255 - 0.5
                self.images += len(x)
                if self.log is not None:
                    with open(self.log, "a") as f:
                        f.write(f"{os.getpid()} {len(x)}\n")
                yield x @ self.weights
