"""Features of the training images under random corruptions of ONE family, for heads trained with
augmentation (`vfe-aug`, `dae-aug`: `fit(X, y, X_aug=...)`).

Training on a family the benchmark also tests would turn a robustness test into an in-distribution
one, so only one family (noise, by default) is used and the other families stay held out;
`augmentation_record` says which, for the results file. Each training image gets one corruption of the family
and one severity, drawn at random (seeded per shard); the features are cached like any others.
"""
from __future__ import annotations

import numpy as np

from vfe.data.types import ImageSet
from vfe.errors import SettingsError
from vfe.features.source import FeatureSource
from vfe.robustness.corruptions import CORRUPTIONS_VERSION, SEVERITIES, corrupt
from vfe.robustness.corruptions.registry import families


def augmentation_record(family: str, severities: tuple[int, ...]) -> dict:
    """What the augmented heads saw in training, and which families stayed held out (for results.json)."""
    everything = families()
    return {"train_family": family, "train_corruptions": list(everything[family]),
            "train_severities": list(severities), "held_out_families": [f for f in everything if f != family]}


def augmented_features(features: FeatureSource, train: ImageSet, family: str = "noise",
                       severities: tuple[int, ...] = SEVERITIES, seed: int = 0,
                       params: str = "auto") -> tuple[np.ndarray, dict]:
    """(X_aug, description): features row-aligned with the training images, each image corrupted once."""
    everything = families()
    if family not in everything:
        raise SettingsError(f"unknown corruption family {family!r}; one of {', '.join(everything)}")
    names = everything[family]
    severities = tuple(int(s) for s in severities)

    def transform(images: np.ndarray, first_row: int) -> np.ndarray:
        rng = np.random.default_rng([seed, first_row])
        choice = rng.integers(len(names), size=len(images))
        severity = rng.choice(severities, size=len(images))
        out = np.empty_like(images)
        for i, name in enumerate(names):
            for s in severities:
                rows = np.flatnonzero((choice == i) & (severity == s))
                if len(rows):
                    out[rows] = corrupt(images[rows], name, s, seed=int(rng.integers(2**31)), params=params)
        return out

    key = (f"augment:{family}:{','.join(names)}:s{','.join(map(str, severities))}:seed{seed}:params={params}"
           f":v{CORRUPTIONS_VERSION}")
    return (features(train, transform=transform, transform_key=key, desc=f"augment ({family})"),
            augmentation_record(family, severities))
