"""Features of augmented training images, for the heads trained on them (`fit(X, y, X_aug=...)`).

Corrupted views (`vfe-aug`, `dae-aug`): training on a family the benchmark also tests would turn a robustness
test into an in-distribution one, so only one family (noise, by default) is used and the other families stay
held out; `augmentation_record` says which, for the results file. Each training image gets one corruption of
the family and one severity, drawn at random (seeded per shard); the features are cached like any others.

AugMix views (`linear-augmix`, `vfe-augmix`, ...: `augmix_features`): K views of each training image made of
operations that are none of the benchmark's corruptions (vfe.robustness.augmix), so all 19 stay held out.
View k of the whole set is one cache entry keyed by the recipe, the seed and k: raising K extracts only the
new views. `training_record` says what each augmented head saw, for results.json.
"""
from __future__ import annotations

from dataclasses import asdict

import numpy as np

from vfe.data.types import ImageSet
from vfe.errors import SettingsError
from vfe.features.source import FeatureSource
from vfe.heads.registry import is_augmented, is_augmix
from vfe.robustness.augmix import DEFAULT_VIEWS, OPERATIONS, AugMix, augmix_images
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


def augmix_features(features: FeatureSource, train: ImageSet, views: int = DEFAULT_VIEWS, seed: int = 0,
                    recipe: AugMix | None = None) -> tuple[np.ndarray, dict]:
    """(X_views, description): features of `views` AugMix views of each training image, n x views x d
    (`recipe`: AugMix's defaults unless given)."""
    if views < 1:
        raise SettingsError(f"--augmix-views must be at least 1, got {views}")
    recipe = recipe or AugMix()

    def view_features(k: int) -> np.ndarray:
        def transform(images: np.ndarray, first_row: int) -> np.ndarray:
            return augmix_images(images, recipe, seed, k, first_row)

        return features(train, transform=transform, transform_key=f"{recipe.key()}:seed{seed}:view{k}",
                        desc=f"AugMix view {k + 1}/{views}")

    return np.stack([view_features(k) for k in range(views)], axis=1), augmix_record(recipe, views, seed)


def augmix_record(recipe: AugMix, views: int, seed: int) -> dict:
    """How the AugMix views were made (for results.json): no benchmark corruption among their operations."""
    return {"operations": list(OPERATIONS), "views": views, "seed": seed, **asdict(recipe),
            "train_corruptions": [], "held_out_families": list(families())}


def training_record(heads: list[str], corrupted: dict | None, augmix: dict | None) -> dict | None:
    """results["augmentation"]: the corruptions each augmented head saw in training (`seen_by_head`), the AugMix
    recipe, and for the report's per-corruption column the corruptions any of them saw (the corrupted-view
    record's keys; with AugMix heads alone no family was trained on and every corruption is held out)."""
    seen = {}
    for head in heads:
        if is_augmented(head) and corrupted is not None:
            seen[head] = list(corrupted["train_corruptions"])
        elif is_augmix(head) and augmix is not None:
            seen[head] = []
    if not seen:
        return None
    union = corrupted or {"train_family": "none", "train_corruptions": [], "train_severities": [],
                          "held_out_families": list(families())}
    return {**union, **({"augmix": augmix} if augmix is not None else {}), "seen_by_head": seen}
