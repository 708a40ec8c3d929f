"""The augmented heads' training features (vfe.experiment.augment, vfe.experiment.prepare): every setting reaches
the images and the cache key, on grey digits and colour photos, through a feature source that records its calls."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from colour_data import colour_splits

from vfe.data import load_train_test
from vfe.data.types import ImageSet
from vfe.experiment import augment, prepare
from vfe.robustness.augmix import AugMix, augmix_images
from vfe.robustness.corruptions.registry import families


@pytest.fixture(scope="module", params=["grey", "colour"])
def train(request) -> ImageSet:
    if request.param == "grey":
        return load_train_test("digits")[0].subset(np.arange(24), tag=":24")
    images, labels = colour_splits(n_train=6, n_test=0)["train"]
    return ImageSet(images, labels, ["a", "b", "c", "d"], source="photos")


class Source:
    """A feature source whose features are the (transformed) pixels; it transforms in shards of `shard` rows,
    as the feature cache does, and records every transform key."""

    def __init__(self, shard: int = 7):
        self.shard, self.keys = shard, []

    def __call__(self, data: ImageSet, transform=None, transform_key=None, desc=None) -> np.ndarray:
        self.keys.append(transform_key)
        images = np.asarray(data.images)
        if transform is not None:
            images = np.concatenate([transform(images[i:i + self.shard], i) for i in range(0, len(images), self.shard)])
        return images.reshape(len(images), -1).astype(np.float32)


def test_corrupted_views_key_names_every_setting_and_the_settings_reach_the_corruptions(train, monkeypatch):
    calls = []

    def recording_corrupt(images, name, severity, seed=0, params="auto"):
        calls.append((name, severity, params))
        return 255 - images

    monkeypatch.setattr(augment, "corrupt", recording_corrupt)
    source = Source()
    X, record = augment.augmented_features(source, train, family="blur", severities=(2, 4), seed=3, params="cifar")
    assert np.array_equal(X, 255 - np.asarray(train.images, np.float32).reshape(len(train), -1))  # each row once
    assert {name for name, _, _ in calls} <= set(families()["blur"]) and {s for _, s, _ in calls} <= {2, 4}
    assert {p for _, _, p in calls} == {"cifar"}
    assert record["train_family"] == "blur" and record["train_severities"] == [2, 4]
    key = source.keys[-1]
    for other in ({"family": "noise"}, {"severities": (2, 5)}, {"seed": 4}, {"params": "imagenet"}):
        settings = {"family": "blur", "severities": (2, 4), "seed": 3, "params": "cifar", **other}
        augment.augmented_features(source, train, **settings)
        assert source.keys[-1] != key, other  # else the cache would serve the views of another setting
    augment.augmented_features(source, train, family="blur", severities=(2, 4), seed=3, params="cifar")
    assert source.keys[-1] == key


def test_augmix_views_key_names_recipe_seed_and_view_and_rows_keep_their_draws_across_shards(train):
    source = Source(shard=7)
    recipe = AugMix(severity=5, width=2)
    views, record = augment.augmix_features(source, train, views=2, seed=3, recipe=recipe)
    for k in range(2):  # row i of view k is drawn with (seed, k, i), wherever its shard starts
        whole = augmix_images(np.asarray(train.images), recipe, 3, k)
        np.testing.assert_array_equal(views[:, k], whole.reshape(len(train), -1))
    assert record["views"] == 2 and record["seed"] == 3 and record["severity"] == 5 and record["width"] == 2
    keys = source.keys[-2:]
    assert len(set(keys)) == 2
    augment.augmix_features(source, train, views=2, seed=4, recipe=recipe)
    assert not set(source.keys[-2:]) & set(keys)  # another seed: other views, other cache entries
    augment.augmix_features(source, train, views=2, seed=3)
    assert not set(source.keys[-2:]) & set(keys)  # the default recipe: other views too


def test_prepare_passes_the_augmentation_settings_on(monkeypatch):
    train = load_train_test("digits")[0].subset(np.arange(10), tag=":10")
    seen = {}
    monkeypatch.setattr(prepare, "replicate_train", lambda shared, n, seed: train)
    monkeypatch.setattr(prepare, "BackboneFeatures", lambda cache, bb, progress: Source())
    monkeypatch.setattr(prepare, "augmented_features",
                        lambda *args, **kwargs: seen.setdefault("corrupted", (args, kwargs)) and (None, None))
    monkeypatch.setattr(prepare, "augmix_features", lambda *args: seen.setdefault("augmix", args) and (None, None))
    shared = SimpleNamespace(dataset="digits", test=train, backbone=None, cache=None)
    prepare.prepare_replicate(shared, None, 7, augment_family="weather", corruption_params="imagenet",
                              augmix_views=3, progress=False)
    args, kwargs = seen["corrupted"]
    assert args[1] is train and kwargs == {"family": "weather", "seed": 8, "params": "imagenet"}
    assert seen["augmix"][1:] == (train, 3, 7)
