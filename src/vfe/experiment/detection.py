"""Which training images set a detector's threshold: the one rule `vfe fit --detector` and `vfe run --save-best`
share, so a run's saved pipeline and a fit of the same draw abstain alike (docs/abstention.md).

The threshold for a target coverage is chosen on validation images the head never trained on: a class-balanced
draw from the training split outside the training subset (with `n_train`), or drawn first from the whole split
(without it; the head then trains on the rest).
"""
from __future__ import annotations

import numpy as np

from vfe.data.split import balanced_index
from vfe.errors import SettingsError
from vfe.robustness.detectors import DEFAULT_VALIDATION, validation_size_needed


def validation_room(pool, n_train: int | None, seed: int) -> int:
    """How many images of the training split `pool` lie outside the training subset of `n_train` images drawn
    with `seed` (without `n_train`: half the split, the most a detection split holds out)."""
    if n_train is None:
        return len(pool) // 2
    return len(pool) - len(balanced_index(pool.labels, n_train, seed))


def detection_split(pool, n_train: int | None, seed: int, coverage: float, n_val: int | None = None):
    """(training subset, validation subset) of a training split `pool` for a fit with a detector.

    With `n_train`, the training subset is the one a fit without a detector uses (balanced_index, `seed`; a run's
    replicate with that seed trains on it too), and the validation images are a class-balanced draw
    (balanced_index, same seed) of `n_val` of the rest. Without it, the validation images are drawn first from the
    whole split and the head trains on the rest. `n_val` defaults to DEFAULT_VALIDATION images, or all that are
    left when fewer (without `n_train`: at most a fifth of the split). Too few for `coverage`
    (validation_size_needed) is refused in one line.
    """
    everything = np.arange(len(pool))
    if n_train is not None:
        train = balanced_index(pool.labels, n_train, seed)
        rest = np.setdiff1d(everything, train)
        room, default = len(rest), min(DEFAULT_VALIDATION, len(rest))
    else:  # at most half the split, so that the head still trains on the other half
        rest, room, default = everything, len(pool) // 2, min(DEFAULT_VALIDATION, len(pool) // 5)
    wanted, needed = n_val if n_val is not None else default, validation_size_needed(coverage)
    if not needed <= wanted <= room:
        given = f"--n-val {n_val} was asked for" if n_val is not None else f"{wanted} would be drawn"
        raise SettingsError(f"--detector at --coverage {coverage} needs {needed} to {room} validation images outside "
                            f"the training subset of the training split's {len(pool)}, and {given}: "
                            f"{'lower --n-train, ' if n_train is not None else ''}give --n-val in that range, use "
                            "more images, or a lower --coverage")
    validation = rest[balanced_index(pool.labels[rest], wanted, seed)]
    if n_train is None:
        train = np.setdiff1d(everything, validation)
    tag = f"n={n_train}:seed={seed}"
    return (pool.subset(train, tag=f"train:{tag}:detector-validation-excluded"),
            pool.subset(validation, tag=f"detector-validation:{tag}:n_val={wanted}"))
