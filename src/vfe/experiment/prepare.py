"""load -> backbone, then per draw: subset -> (fine-tune) -> extract -> augment: the set-up every benchmark job
shares (`run`, `sweep`).

Written once so that `vfe run` and `vfe sweep` with the same data settings see the same images
(`vfe.data.split.balanced_subset`) and the same cached features. `vfe run` loads once (`load_shared`) and
prepares one draw per replicate (`prepare_replicate`); `vfe sweep` prepares the one draw of its data seed.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vfe.backbones import Backbone, create_backbone
from vfe.data import available_fashion_mnist, load_train_test
from vfe.data.split import balanced_subset
from vfe.data.types import ImageSet
from vfe.experiment.augment import augmented_features, augmix_features
from vfe.experiment.config import BackboneSettings, DataSettings, FinetuneSettings
from vfe.experiment.timer import StageTimer
from vfe.features.cache import FeatureCache
from vfe.features.source import BackboneFeatures, FeatureSource
from vfe.io import write_text


@dataclass
class Prepared:
    """The images, the backbone and their cached features, ready for heads."""

    dataset: str  # the data set actually used (digits when Fashion-MNIST is missing)
    train: ImageSet
    test: ImageSet
    backbone: Backbone  # the one the heads sit on (fine-tuned under the reference protocol)
    features: FeatureSource  # features of any images through that backbone, cached
    X_train: np.ndarray
    X_test: np.ndarray
    finetune: dict | None = None  # the reference protocol's stage 0 (results.json "finetune")
    X_aug: np.ndarray | None = None  # features of corrupted training images, row-aligned with X_train
    augmentation: dict | None = None  # what the augmented heads saw, and which families stayed held out
    X_views: np.ndarray | None = None  # features of K AugMix views of each training image, n x K x d
    augmix: dict | None = None  # how those views were made
    cache: FeatureCache | None = None  # where `features` caches; other extractors of the run cache there too
    seed: int = 0  # the draw's seed: the training subset, fine-tuning and views (a replicate's seed in `vfe run`)


@dataclass
class Shared:
    """What every replicate of a run shares: the data, the base backbone and the cache."""

    dataset: str  # the data set actually used (digits when Fashion-MNIST is missing)
    pool: ImageSet  # the whole training split: each replicate draws its training subset from it
    test: ImageSet  # the fixed test subset (drawn with the run's base seed)
    backbone: Backbone  # the ImageNet backbone (fine-tuned per replicate under the reference protocol)
    cache: FeatureCache
    # the reference protocol's frozen bottom and its storage cosine (vfe.experiment.reference.frozen_bottom),
    # built once for every replicate; None under the frozen protocol
    bottom: tuple | None = None

    def common_features(self) -> FeatureSource:
        """The part of every replicate's features that no replicate changes: the whole backbone's features under
        the frozen protocol, the activations at the cut under the reference protocol. Their cache entries are the
        ones the replicates' feature sources read first (vfe.experiment.background computes them ahead)."""
        return BackboneFeatures(self.cache, self.backbone if self.bottom is None else self.bottom[0])


def load_data(data: DataSettings, log=print) -> tuple[ImageSet, ImageSet, str]:
    """The whole training split and the class-balanced test subset; falls back to digits when Fashion-MNIST is
    not installed."""
    name = data.dataset
    if name == "fashion-mnist" and data.data_dir is None and available_fashion_mnist() is None:
        log("[vfe] Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist, or put the four "
            "IDX .gz files in ~/.cache/vfe/fashion-mnist); falling back to scikit-learn's digits.")
        name = "digits"
    options = {"skip_bad": True} if data.skip_bad else {}  # only image folders take it
    train, test = load_train_test(name, data_dir=data.data_dir, seed=data.data_seed, **options)
    return train, balanced_subset(test, data.n_test, data.data_seed, "test"), name


def load_shared(data: DataSettings, backbone: BackboneSettings, cache_dir: str | None,
                timer: StageTimer | None = None, log=print, finetune: FinetuneSettings | None = None) -> Shared:
    """Load the data and build the backbone (and under the reference protocol its frozen bottom), once for all
    replicates."""
    timer = timer or StageTimer(log=log)
    with timer.timed("load data"):
        pool, test, dataset = load_data(data, log)
    cache = FeatureCache(cache_dir)
    with timer.timed("load backbone"):
        bb = create_backbone(backbone.backbone, weights=backbone.weights, image_size=backbone.image_size,
                             device=backbone.device, runtime=backbone.runtime, model_dir=cache.root / "_models")
        bottom = None
        if finetune is not None and finetune.protocol == "reference":
            from vfe.experiment.reference import frozen_bottom  # loads torchvision only when fine-tuning

            bottom = frozen_bottom(cache, bb, finetune)
    return Shared(dataset, pool, test, bb, cache, bottom)


def prepare(data: DataSettings, backbone: BackboneSettings, cache_dir: str | None, *,
            finetune: FinetuneSettings | None = None, augment_family: str | None = None,
            corruption_params: str = "auto", augmix_views: int | None = None, progress: bool = True,
            timer: StageTimer | None = None, log=print) -> Prepared:
    """One draw (seeded by `data.data_seed`) of everything a job needs: `load_shared`, then `prepare_replicate`.
    `vfe sweep` prepares this way; `vfe run` prepares one draw per replicate."""
    shared = load_shared(data, backbone, cache_dir, timer, log, finetune)
    return prepare_replicate(shared, data.n_train, data.data_seed, finetune=finetune, augment_family=augment_family,
                             corruption_params=corruption_params, augmix_views=augmix_views, progress=progress,
                             timer=timer, log=log)


def replicate_train(shared: Shared, n_train: int | None, seed: int) -> ImageSet:
    """The training subset of the draw seeded `seed`: `n_train` class-balanced images of the pool."""
    return balanced_subset(shared.pool, n_train, seed, "train")


def prepare_replicate(shared: Shared, n_train: int | None, seed: int, *, finetune: FinetuneSettings | None = None,
                      augment_family: str | None = None, corruption_params: str = "auto",
                      augmix_views: int | None = None, progress: bool = True, timer: StageTimer | None = None,
                      log=print, label: str = "") -> Prepared:
    """One replicate's draw: its training subset, the top fine-tuned with its seed under the reference protocol,
    the (cached) features of its training images and of the shared test set; augmented features when
    `augment_family` is given (the heads that train on corrupted images need them), and `augmix_views` AugMix
    views of each training image when given (the AugMix heads). `label` prefixes the timer's stage names."""
    timer = timer or StageTimer(log=log)
    prefix = f"{label}: " if label else ""
    train = replicate_train(shared, n_train, seed)
    test, bb, cache = shared.test, shared.backbone, shared.cache
    record = None
    if finetune is not None and finetune.protocol == "reference":
        from vfe.experiment.reference import fine_tune  # loads torchvision only when fine-tuning

        with timer.timed(f"{prefix}fine-tune (reference protocol)"):
            tuned = fine_tune(cache, bb, train, test, finetune, seed, progress, log, shared.bottom)
        bb, features, record = tuned.backbone, tuned.features, tuned.record
    else:
        features = BackboneFeatures(cache, bb, progress)
    with timer.timed(f"{prefix}extract features"):
        X_train = features(train, desc="extract train")
        X_test = features(test, desc="extract test")
    prepared = Prepared(shared.dataset, train, test, bb, features, X_train, X_test, record, cache=cache, seed=seed)
    if augment_family is not None:
        with timer.timed(f"{prefix}features of corrupted training images ({augment_family})"):
            prepared.X_aug, prepared.augmentation = augmented_features(
                features, train, family=augment_family, seed=seed + 1, params=corruption_params)
    if augmix_views is not None:
        with timer.timed(f"{prefix}features of AugMix views ({augmix_views} per training image)"):
            prepared.X_views, prepared.augmix = augmix_features(features, train, augmix_views, seed)
    return prepared


def skipped_files(*sets: ImageSet) -> list[str]:
    """The unreadable files `--skip-bad` left out of these sets, as "file: why" lines."""
    return [f"{s.meta['root']}/{item['file']}: {item['error']}" if s.meta.get("root") else
            f"{item['file']}: {item['error']}" for s in sets for item in s.meta.get("skipped", [])]


def write_skipped(path: Path, lines: list[str], log=print) -> None:
    """The full list of skipped files beside the outputs, and one line saying where it is."""
    if lines:
        write_text(path, "\n".join(lines) + "\n")  # names that are not UTF-8 escaped
        log(f"[vfe] skipped {len(lines)} unreadable file(s); the list is in {path}")
