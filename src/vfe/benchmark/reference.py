"""Stage 0 of `--protocol reference`: fine-tune the top of the backbone with Dropout -> Dense, as the
reference did, then freeze it; every head is then fitted on the fine-tuned backbone's features.

The reference's compare model: the backbone with its top layers trainable (BatchNorm there in training
mode, as Keras runs trainable layers; Keras's BatchNorm momentum 0.99 is torch's 0.01), Dropout(0.3) ->
Dense(softmax), Adam at Keras's default learning rate, batch 100, a fixed number of epochs (no early
stopping, no data augmentation). Where the top starts is `vfe.backbones.cut.reference_cut`.

Cost. The bottom of the backbone is frozen, so its output at the cut is computed once per image and
cached (`vfe.backbones.cut.CutActivations`), and every epoch runs only the top. The same cached
activations serve the test set, its corruptions and the OOD sets (`vfe.features.source.CutFeatures`).
With `finetune_augment` the images change every epoch, so there is nothing to cache: each epoch runs the
whole backbone (its bottom frozen, in inference mode).

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
from torch import nn

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
from vfe.benchmark.config import FinetuneSettings
from vfe.data.types import ImageSet
from vfe.features.cache import FeatureCache, content_hash
from vfe.features.source import CutFeatures
from vfe.heads.base import fit_classifier
from vfe.heads.finetune import ImageInput
from vfe.io import load_tensors, read_json, save_tensors, write_json
from vfe.training import TrainConfig

KERAS_BN_MOMENTUM = 0.01  # Keras momentum 0.99 keeps 99 % of the running statistic; torch's momentum is 1 - that
DROPOUT = 0.3  # the reference's
FINETUNE_VERSION = 1


class CompareModel(nn.Module):
    """The reference's compare model above the cut: top of the backbone -> Dropout -> Dense (logits).

    Takes cut-point activations flattened to rows (as cached); `from_images` takes float images in [0, 1]
    and runs the frozen bottom first (augmented fine-tuning).
    """

    def __init__(self, cut: CutModel, shape: tuple[int, ...], n_classes: int, feature_dim: int):
        super().__init__()
        self.cut = cut
        self.shape = shape
        self.head = nn.Sequential(nn.Dropout(DROPOUT), nn.Linear(feature_dim, n_classes))

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return self.head(self.cut.top(a.float().view(-1, *self.shape)))

    def train(self, mode: bool = True) -> CompareModel:
        super().train(mode)
        self.cut.bottom.train(False)  # frozen: BatchNorm below the cut keeps its running statistics
        return self


class _FromImages(nn.Module):
    """uint8 images -> (augment) -> [0, 1] -> the backbone's preprocessing -> frozen bottom -> compare model."""

    def __init__(self, model: CompareModel, normalise, augment: nn.Module):
        super().__init__()
        self.input = ImageInput(augment)
        self.model = model
        self.normalise = normalise

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            a = self.model.cut.bottom(self.normalise(self.input(images)))
        return self.model(a.flatten(1))


@dataclass
class FineTuned:
    """What stage 0 leaves: the fine-tuned backbone (frozen now) and how its features are computed."""

    backbone: Backbone  # the whole fine-tuned network: attacks run end to end through it
    features: CutFeatures  # images -> cached activations at the cut -> fine-tuned top
    record: dict  # results.json's "finetune"


def fine_tune(cache: FeatureCache, base: Backbone, train: ImageSet, test: ImageSet, settings: FinetuneSettings,
              seed: int, progress: bool = True, log=print) -> FineTuned:
    """Fine-tune (or load the cached fine-tuned weights), then build the fine-tuned backbone and its features.

    `test` is used only to report the compare model's own test accuracy, after training."""
    started = time.perf_counter()
    point = settings.cut_point or reference_cut(base.model, base.arch)
    frozen = CutModel(base.model, point)  # the base network itself, for the bottom only
    storage, cosine = faithful_storage(base, frozen)
    bottom = CutActivations(base, frozen, storage)
    A_train = cache.extract(bottom, train, progress=progress, desc="train (to the cut)").array()

    trainable = clone_for_finetuning(base, point)
    with torch.random.fork_rng(devices=[]):  # the Dense layer's initialisation is the run's, not the global RNG's
        torch.manual_seed(seed)
        model = CompareModel(trainable, bottom.shape, train.num_classes, base.feature_dim)
    key = _key(base, point, storage, settings, train, seed)
    path = cache.root / "_models" / f"finetuned-{key}.safetensors"
    history = _load(model, path)
    cached = history is not None
    if not cached:
        history = _train(model, base, train, A_train, settings, seed, progress, log)
        save_tensors(path, model.state_dict())
        write_json(path.with_suffix(".json"), {"history": history, "sha256": file_sha256(path),
                                               "settings": asdict(settings), "seed": seed})
    model.eval()
    trainable.model.requires_grad_(False)

    info = WeightsInfo("finetuned", f"finetuned:{file_sha256(path)}",
                       f"{base.weights.source}, top from {point} fine-tuned ({path.name})", base.arch, False)
    tuned = Backbone(trainable.model, base.name, info, base.data_config, base.device, base.settings)
    top = TopFeatures(tuned, trainable, bottom.shape)
    source = CutFeatures(cache, bottom, top, progress)
    A_test = source.activations(test, desc="test").array()
    record = {"cut_point": point, "trainable_fraction": round(trainable.trainable_fraction, 4),
              "activation_shape": list(bottom.shape), "activation_storage": storage,
              "storage_min_cosine": round(cosine, 6), "settings": asdict(settings), "seed": seed,
              "weights": str(path), "weights_sha256": file_sha256(path), "loaded_from_cache": cached,
              "history": history, "compare_model_test_accuracy": _accuracy(model, A_test, test.labels),
              "seconds": round(time.perf_counter() - started, 3)}
    log(f"[vfe] reference protocol: top from {point} ({record['trainable_fraction']:.1%} of the parameters) "
        f"{'loaded from the cache' if cached else 'fine-tuned'}; compare model test accuracy "
        f"{record['compare_model_test_accuracy']:.4f}")
    return FineTuned(tuned, source, record)


def _train(model: CompareModel, base: Backbone, train: ImageSet, A_train: np.ndarray, settings: FinetuneSettings,
           seed: int, progress: bool, log) -> dict:
    """Adam on the top + Dense for a fixed number of epochs, BatchNorm of the top in training mode."""
    top = model.cut.top_units
    for m in top.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = KERAS_BN_MOMENTUM
    top.requires_grad_(True)
    parameters = [*top.parameters(), *model.head.parameters()]
    config = TrainConfig(epochs=settings.finetune_epochs, batch_size=settings.finetune_batch_size,
                         lr=settings.finetune_lr, patience=None, seed=seed, device=str(base.device),
                         progress=progress, desc=f"fine-tune from {model.cut.point}")
    y = train.labels.astype(np.int64)
    probe = _linear_probe(model, A_train, y, settings, config) if settings.finetune_lp_epochs else None
    if settings.finetune_augment:
        from torchvision.transforms import v2  # ~1 s to import; only augmentation needs it

        augment = v2.Compose([v2.RandomHorizontalFlip(), v2.RandomAffine(degrees=10, scale=(0.9, 1.1))])
        images = np.ascontiguousarray(np.moveaxis(np.asarray(train.images), -1, 1))
        net = _FromImages(model, base.normalise, augment)
        history = fit_classifier(net, images, y, None, config, parameters=parameters)
    else:
        history = fit_classifier(model, A_train, y, None, config, parameters=parameters)
    top.requires_grad_(False)
    return {**history.to_dict(), **({"linear_probe": probe} if probe else {})}


def _linear_probe(model: CompareModel, A_train: np.ndarray, y: np.ndarray, settings: FinetuneSettings,
                  config: TrainConfig) -> dict:
    """LP-FT's first stage (Kumar et al. 2022): the Dropout -> Dense head trained alone on the un-tuned top's
    pooled features, so that fine-tuning starts from a fitted head and distorts the features less."""
    model.eval()
    with torch.inference_mode():
        features = torch.cat([model.cut.top(torch.from_numpy(A_train[i:i + 512]).float().view(-1, *model.shape))
                              for i in range(0, len(A_train), 512)]).numpy()
    lp = replace(config, epochs=settings.finetune_lp_epochs, desc="linear probe (LP-FT)")
    return fit_classifier(model.head, features, y, None, lp).to_dict()


@torch.inference_mode()
def _accuracy(model: CompareModel, A: np.ndarray, labels: np.ndarray, batch_size: int = 512) -> float:
    model.eval()
    pred = torch.cat([model(torch.from_numpy(A[i:i + batch_size])).argmax(1) for i in range(0, len(A), batch_size)])
    return float((pred.numpy() == labels).mean())


def _key(base: Backbone, point: str, storage: str, settings: FinetuneSettings, train: ImageSet, seed: int) -> str:
    spec = {"v": FINETUNE_VERSION, "backbone": base.fingerprint(), "cut": point, "storage": storage,
            "settings": {k: v for k, v in asdict(settings).items() if k != "protocol"}, "seed": seed,
            "train": content_hash(train), "torch": torch.__version__}
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
