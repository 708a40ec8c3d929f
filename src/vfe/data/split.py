"""Holding out a validation subset the way Keras' image_dataset_from_directory does.

Keras shuffles the file list with `np.random.RandomState(seed)` and keeps the last
`int(validation_split * n)` items for validation. Using the same rule (on the same file order:
classes in sorted order, files sorted within each) puts the same files in each subset as Keras
does for the same seed, so results can be compared with a Keras pipeline file for file.
"""
from __future__ import annotations

import numpy as np

SUBSETS = ("training", "validation")


def check_validation_split(validation_split: float | None, subset: str | None) -> None:
    """Both given or neither; the fraction strictly between 0 and 1; a known subset name."""
    if (validation_split is None) != (subset is None):
        raise ValueError("validation_split and subset go together: give both (e.g. validation_split=0.2, "
                         "subset='training') or neither; got "
                         f"validation_split={validation_split}, subset={subset!r}")
    if validation_split is None:
        return
    if not 0 < validation_split < 1:
        raise ValueError(f"validation_split must be between 0 and 1 (exclusive), got {validation_split}")
    if subset not in SUBSETS:
        raise ValueError(f"subset must be 'training' or 'validation', got {subset!r}")


def validation_split_index(n: int, validation_split: float, subset: str, seed: int) -> np.ndarray:
    """Sorted indices (of n items) that form `subset` under Keras' rule."""
    check_validation_split(validation_split, subset)
    n_val = int(validation_split * n)
    if n_val == 0 or n_val == n:
        empty = "validation" if n_val == 0 else "training"
        raise ValueError(f"validation_split={validation_split} of {n} items leaves the {empty} subset empty")
    order = np.random.RandomState(seed).permutation(n)
    return np.sort(order[-n_val:] if subset == "validation" else order[:-n_val])


def split_tag(validation_split: float, subset: str, seed: int) -> str:
    """How the subset was chosen, for ImageSet.source (it names the data in cache listings and reports)."""
    return f"{subset}:validation_split={validation_split}:seed={seed}"
