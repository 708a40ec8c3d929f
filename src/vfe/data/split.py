"""Holding out a validation subset the way Keras' image_dataset_from_directory does.

Keras shuffles the file list with `np.random.RandomState(seed)` and keeps the last
`int(validation_split * n)` items for validation. Using the same rule (on the same file order:
classes in sorted order, files sorted within each) puts the same files in each subset as Keras
does for the same seed, so results can be compared with a Keras pipeline file for file.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from vfe.errors import SettingsError

SUBSETS = ("training", "validation")


def check_validation_split(validation_split: float | None, subset: str | None) -> None:
    """Both given or neither; the fraction strictly between 0 and 1; a known subset name."""
    if (validation_split is None) != (subset is None):
        raise SettingsError("validation_split and subset go together: give both (e.g. validation_split=0.2, "
                            "subset='training') or neither; got "
                            f"validation_split={validation_split}, subset={subset!r}")
    if validation_split is None:
        return
    if not 0 < validation_split < 1:
        raise SettingsError(f"validation_split must be between 0 and 1 (exclusive), got {validation_split}")
    if subset not in SUBSETS:
        raise SettingsError(f"subset must be 'training' or 'validation', got {subset!r}")


def validation_split_index(n: int, validation_split: float, subset: str, seed: int) -> np.ndarray:
    """Sorted indices (of n items) that form `subset` under Keras' rule."""
    check_validation_split(validation_split, subset)
    n_val = int(validation_split * n)
    if n_val == 0 or n_val == n:
        empty = "validation" if n_val == 0 else "training"
        raise SettingsError(f"validation_split={validation_split} of {n} items leaves the {empty} subset "
                            "empty")
    order = np.random.RandomState(seed).permutation(n)
    return np.sort(order[-n_val:] if subset == "validation" else order[:-n_val])


def split_tag(validation_split: float, subset: str, seed: int) -> str:
    """How the subset was chosen, for ImageSet.source (it names the data in cache listings and reports)."""
    return f"{subset}:validation_split={validation_split}:seed={seed}"


def warn_missing_classes(listed: np.ndarray, labels: np.ndarray, class_names: Sequence[str], where: str,
                         validation_split: float | None = None, subset: str | None = None,
                         seed: int = 0) -> None:
    """Warn about classes with no image in `labels` (the part returned) although they are in `class_names`.

    `listed` are the labels before the validation split and before unreadable files were skipped, to say
    why each is missing. A class too small for the split lands wholly in one subset (the split is not
    stratified, as in Keras), and would otherwise be missing from training or from the test in silence.
    """
    before = np.bincount(np.asarray(listed, dtype=np.int64), minlength=len(class_names))
    present = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(class_names)) > 0
    missing = [c for c in range(len(class_names)) if not present[c]]
    if not missing:
        return
    reasons = []
    for c in missing[:10]:
        n = int(before[c])
        if n == 0:
            why = "no images in this split"
        elif validation_split is not None:
            why = f"{n} image{'s' * (n != 1)} in all, none drawn into this subset"
        else:
            why = "its images were skipped as unreadable"
        reasons.append(f"{class_names[c]!r} ({why})")
    more = f", and {len(missing) - 10} more" if len(missing) > 10 else ""
    part = f"the {subset} subset (validation_split={validation_split}, seed={seed})" if subset else "this set"
    hint = (" (the split is not stratified, as in Keras: a class with few images can miss a subset; another "
            "seed or more images help)" if validation_split is not None else "")
    warnings.warn(f"{where}: {len(missing)} of {len(class_names)} classes have no image in {part}: "
                  f"{', '.join(reasons)}{more}; a model cannot learn, or be tested on, a class it does not "
                  f"see: add images to these classes or leave them out{hint}", RuntimeWarning, stacklevel=3)


# --- the one way vfe picks "n images" and holds out a validation part -------------------------------
#
# Every command that takes a size (`vfe run --n-train`, `vfe sweep`, `vfe lab`, the finetune head's
# `max_images`) calls `balanced_index`, so `n_train=1000` selects the same images everywhere for the
# same seed.


def balanced_index(labels: np.ndarray, n: int | None, seed: int) -> np.ndarray:
    """Sorted indices of a class-balanced, seeded subset of `n` items (all items when n is None or too big).

    Each class (in sorted order) gets n // k items, the first n % k classes one more; the members of a
    class are a seeded permutation of it. A class with fewer members than its quota gives all it has and
    the shortfall goes, one at a time, to the classes in order that still have members, so the subset
    always holds exactly `n` items.
    """
    labels = np.asarray(labels)
    if n is None or n >= len(labels):
        return np.arange(len(labels))
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"subset size must be a whole number >= 1, got {n!r}")
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    members = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    quota = np.array([n // len(classes) + (1 if i < n % len(classes) else 0) for i in range(len(classes))])
    sizes = np.array([len(m) for m in members])
    take = np.minimum(quota, sizes)
    short = n - int(take.sum())
    while short > 0:  # hand the shortfall to the classes that still have members, in class order
        for i in np.flatnonzero(take < sizes):
            if short == 0:
                break
            take[i] += 1
            short -= 1
    return np.sort(np.concatenate([m[:t] for m, t in zip(members, take)]))


def balanced_subset(data, n: int | None, seed: int, tag: str):
    """`data` (an ImageSet) restricted to `balanced_index(data.labels, n, seed)`; itself when n covers it all."""
    if n is None or n >= len(data):
        return data
    return data.subset(balanced_index(data.labels, n, seed), tag=f"{tag}:n={n}:seed={seed}")


def holdout_index(n: int, fraction: float, seed: int,
                  labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """(train, validation) index arrays for early stopping: `fraction` of the items held out.

    Stratified by `labels` when given (round(fraction * class size) of each class, none of a class with
    one member), so every class is in both parts. Not `balanced_index`: a holdout keeps the class
    proportions of the data it splits. `fraction` <= 0 holds nothing out (validation is None).
    """
    rng = np.random.default_rng(seed)
    if fraction <= 0:
        return np.arange(n), None
    if labels is None:
        perm = rng.permutation(n)
        n_val = max(1, round(n * fraction))
        return np.sort(perm[n_val:]), np.sort(perm[:n_val])
    train_idx, val_idx = [], []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        n_val = round(len(members) * fraction) if len(members) > 1 else 0
        val_idx.append(members[:n_val])
        train_idx.append(members[n_val:])
    val = np.sort(np.concatenate(val_idx))
    return np.sort(np.concatenate(train_idx)), (val if len(val) else None)
