"""Stage 0 of `--protocol reference`: fine-tune the top of the backbone with Dropout -> Dense, as the
reference did, then freeze it; every head is then fitted on the fine-tuned backbone's features.

The training is the "reference" recipe of `vfe.heads.finetune` (the reference's compare model: the top from
`vfe.backbones.cut.reference_cut`, BatchNorm there in training mode with Keras's momentum, Dropout(0.3) ->
Dense, Adam 1e-3, batch 100, a fixed number of epochs, no augmentation); FinetuneSettings change its numbers
and add its options (flip/rotation/zoom, LP-FT, AugMix with the Jensen-Shannon term).

Cost. The bottom of the backbone is frozen, so its output at the cut is computed once per image and
cached (`vfe.backbones.cut.CutActivations`), and every epoch runs only the top. The same cached
activations serve the test set, its corruptions and the OOD sets (`vfe.features.source.CutFeatures`).
With `finetune_augment` the images change every epoch, so there is nothing to cache: each epoch runs the
whole backbone (its bottom frozen, in inference mode). With `finetune_augmix` each epoch's two AugMix views
are drawn from (seed, view 2 x epoch + j, image), so their activations at the cut are feature-cache entries
like the clean ones: the bottom runs once per view and a rerun reads them.

The fine-tuned weights are cached too (`<cache>/_models/finetuned-<key>.safetensors`, keyed by the base
backbone, the cut, the training images and these settings), and the fine-tuned backbone's fingerprint
names the SHA-256 of that file, so its features are cached under the fine-tuned weights' hash.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from vfe.backbones import Backbone
from vfe.backbones.cut import (
    CutActivations,
    CutModel,
    TopFeatures,
    clone_for_finetuning,
    faithful_storage,
    reference_cut,
)
from vfe.backbones.weights import WeightsInfo, file_sha256
from vfe.data.types import ImageSet
from vfe.experiment.augment import augmix_features
from vfe.experiment.config import AUGMIX_SETTINGS, FinetuneSettings
from vfe.features.cache import FeatureCache, content_hash
from vfe.features.source import CutFeatures
from vfe.heads.finetune import RECIPES, CompareModel, Recipe, fine_tune_cut, seeded
from vfe.io import load_tensors, read_json, save_tensors, write_json
from vfe.robustness.augmix import AugMix

FINETUNE_VERSION = 1


def recipe_of(settings: FinetuneSettings) -> Recipe:
    """The reference recipe with the run's numbers and options."""
    return replace(RECIPES["reference"], epochs=settings.finetune_epochs, batch_size=settings.finetune_batch_size,
                   lr=settings.finetune_lr, head_lr=settings.finetune_lr, head_epochs=settings.finetune_lp_epochs,
                   augment=settings.finetune_augment, augmix=settings.finetune_augmix,
                   js_weight=settings.finetune_js_weight)


@dataclass
class FineTuned:
    """What stage 0 leaves: the fine-tuned backbone (frozen now) and how its features are computed."""

    backbone: Backbone  # the whole fine-tuned network: attacks run end to end through it
    features: CutFeatures  # images -> cached activations at the cut -> fine-tuned top
    record: dict  # results.json's "finetune"


def frozen_bottom(cache: FeatureCache, base: Backbone, settings: FinetuneSettings) -> tuple[CutActivations, float]:
    """The frozen bottom every replicate shares: the base network up to the cut, its activations stored in the
    faithful type, on the base backbone's runtime (its exported part under the cache's `_models`); and the cosine
    `faithful_storage` measured for that type."""
    point = settings.cut_point or reference_cut(base.model, base.arch)
    frozen = CutModel(base.model, point)  # the base network itself, for the bottom only
    storage, cosine = faithful_storage(base, frozen)
    return CutActivations(base, frozen, storage, model_dir=cache.root / "_models"), cosine


def fine_tune(cache: FeatureCache, base: Backbone, train: ImageSet, test: ImageSet, settings: FinetuneSettings,
              seed: int, progress: bool = True, log=print, bottom: tuple[CutActivations, float] | None = None
              ) -> FineTuned:
    """Fine-tune (or load the cached fine-tuned weights), then build the fine-tuned backbone and its features.

    `test` is used only to report the compare model's own test accuracy, after training. `bottom`: the run's
    `frozen_bottom`, built once for every replicate (built here when not given)."""
    started = time.perf_counter()
    bottom, cosine = bottom or frozen_bottom(cache, base, settings)
    point, storage = bottom.cut.point, bottom.storage
    models = cache.root / "_models"  # exported parts for the base backbone's runtime, fine-tuned weights
    A_train = cache.extract(bottom, train, progress=progress, desc="train (to the cut)").array()

    trainable = clone_for_finetuning(base, point)
    with seeded(seed):  # the Dense layer's initialisation is the run's
        model = CompareModel(trainable, bottom.shape, train.num_classes, base.feature_dim)
    key = _key(base, point, storage, settings, train, seed)
    path = models / f"finetuned-{key}.safetensors"
    history = _load(model, path)
    cached = history is not None
    if not cached:
        history = _train(model, cache, bottom, base, train, A_train, settings, seed, progress)
        save_tensors(path, model.state_dict())
        write_json(path.with_suffix(".json"), {"history": history, "sha256": file_sha256(path),
                                               "settings": asdict(settings), "seed": seed})
    model.eval()
    trainable.model.requires_grad_(False)

    info = WeightsInfo("finetuned", f"finetuned:{file_sha256(path)}",
                       f"{base.weights.source}, top from {point} fine-tuned ({path.name})", base.arch, False)
    tuned = Backbone(trainable.model, base.name, info, base.data_config, base.device, base.settings)
    top = TopFeatures(tuned, trainable, bottom.shape, base.runtime, base.precision, model_dir=models)
    source = CutFeatures(cache, bottom, top, progress)
    A_test = source.activations(test, desc="test").array()
    record = {"cut_point": point, "trainable_fraction": round(trainable.trainable_fraction, 4),
              "activation_shape": list(bottom.shape), "activation_storage": storage,
              "storage_min_cosine": round(cosine, 6), "runtime": {"bottom": bottom.runtime, "top": top.runtime},
              "settings": asdict(settings), "seed": seed,
              "weights": str(path), "weights_sha256": file_sha256(path), "loaded_from_cache": cached,
              "history": history, "compare_model_test_accuracy": _accuracy(model, A_test, test.labels),
              "seconds": round(time.perf_counter() - started, 3)}
    log(f"[vfe] reference protocol: top from {point} ({record['trainable_fraction']:.1%} of the parameters) "
        f"{'loaded from the cache' if cached else 'fine-tuned'}; compare model test accuracy "
        f"{record['compare_model_test_accuracy']:.4f}")
    return FineTuned(tuned, source, record)


def _train(model: CompareModel, cache: FeatureCache, bottom: CutActivations, base: Backbone, train: ImageSet,
           A_train: np.ndarray, settings: FinetuneSettings, seed: int, progress: bool) -> dict:
    """The reference recipe on the cached activations (or the images, or AugMix views); results.json's history."""
    recipe = recipe_of(settings)
    config = recipe.train_config(seed, str(base.device), progress, f"fine-tune from {model.cut.point}")
    images = np.ascontiguousarray(np.moveaxis(np.asarray(train.images), -1, 1)) if recipe.augment else None
    views = _augmix_views(cache, bottom, train, recipe.epochs, seed, progress) if recipe.augmix else None
    history = fine_tune_cut(model, recipe, A_train, train.labels.astype(np.int64), config, images=images,
                            normalise=base.normalise, views=views)
    return {**history["finetune"], **({"linear_probe": history["head"]} if "head" in history else {})}


def _augmix_views(cache: FeatureCache, bottom: CutActivations, train: ImageSet, epochs: int, seed: int,
                  progress: bool) -> np.ndarray:
    """Activations at the cut of AugMix views 2e and 2e + 1 of each training image for every epoch e,
    n x 2 epochs x d, each view a feature-cache entry keyed by the recipe, the seed and the view."""
    def features(data, transform, transform_key, desc):
        return cache.extract(bottom, data, transform=transform, transform_key=transform_key, progress=progress,
                             desc=f"{desc} (to the cut)").array()

    return augmix_features(features, train, views=2 * epochs, seed=seed)[0]


@torch.inference_mode()
def _accuracy(model: CompareModel, A: np.ndarray, labels: np.ndarray, batch_size: int = 512) -> float:
    model.eval()
    pred = torch.cat([model(torch.from_numpy(A[i:i + batch_size])).argmax(1) for i in range(0, len(A), batch_size)])
    return float((pred.numpy() == labels).mean())


def _key(base: Backbone, point: str, storage: str, settings: FinetuneSettings, train: ImageSet, seed: int) -> str:
    chosen = {k: v for k, v in asdict(settings).items()
              if k != "protocol" and (settings.finetune_augmix or k not in AUGMIX_SETTINGS)}  # off: the plain key
    spec = {"v": FINETUNE_VERSION, "backbone": base.fingerprint(), "cut": point, "storage": storage,
            "settings": chosen, "seed": seed, "train": content_hash(train), "torch": torch.__version__,
            **({"augmix": AugMix().key()} if settings.finetune_augmix else {})}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:24]


def _load(model: CompareModel, path) -> dict | None:
    """The cached weights into `model` and their training history, or None (absent, or failing its checksum:
    then it is trained again)."""
    meta_path = path.with_suffix(".json")
    if not (path.exists() and meta_path.exists()):
        return None
    meta = read_json(meta_path)
    if meta.get("sha256") != file_sha256(path):
        return None
    model.load_state_dict(load_tensors(path))
    return meta["history"]
