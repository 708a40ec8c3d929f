"""Fine-tuning: the backbone's top blocks trained together with Dropout -> Dense, on images.

The reference's "compare model" and the usual recipe (Chollet; the Keras transfer-learning guide):
  1. train the head on frozen features (a fresh head's large gradients would wreck the pretrained
     weights otherwise);
  2. unfreeze the top `unfreeze_blocks` blocks (timm's coarse parameter groups, e.g. for
     EfficientNet-Lite0 `1` is blocks.6 + conv_head), keep every BatchNorm layer in inference mode
     (running statistics fixed: small batches would corrupt them), train with a lower learning
     rate and data augmentation (flip, rotation, zoom; torchvision.transforms.v2, per image).
`two_stage=False` skips step 1. The head takes uint8 images (`inputs = "images"`), not features, and
saves the whole fine-tuned backbone with the head, as tensors.

By default it trains on a class-balanced subset of at most `max_images` images, so it runs on a CPU;
it uses the GPU when there is one (`device="auto"`).
"""
from __future__ import annotations

import json
from numbers import Integral
from typing import ClassVar

import numpy as np
import torch
from sklearn.utils._param_validation import Interval
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted
from timm.models import group_parameters
from torch import nn
from tqdm.auto import tqdm

from vfe import defaults
from vfe.backbones import create_backbone, resolve_device
from vfe.backbones.preprocess import to_tensor_nchw
from vfe.data.split import balanced_index
from vfe.heads.base import (
    FRACTION,
    NON_NEGATIVE,
    POSITIVE,
    TRAINING,
    SoftmaxOutput,
    TorchHead,
    at_least,
    fit_classifier,
)


class FinetuneNet(nn.Module):
    """Float images in [0, 1] (N x C x H x W) -> backbone (its preprocessing included) -> logits."""

    def __init__(self, backbone: nn.Module, n_classes: int, dropout: float):
        super().__init__()
        self.backbone = backbone  # vfe Backbone: always in eval mode, so BatchNorm stays in inference mode
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(backbone.feature_dim, n_classes))

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x01))


class ImageInput(nn.Module):
    """uint8 N x C x H x W -> float [0, 1]; in training mode each image is randomly augmented first."""

    def __init__(self, augment: nn.Module | None):
        super().__init__()
        self.augment = augment

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.training and self.augment is not None:
            images = torch.stack([self.augment(image) for image in images])  # v2 on a batch = one draw for all
        return images.float().div_(255.0)


def top_block_parameters(model: nn.Module, n_blocks: int) -> list[nn.Parameter]:
    """Parameters of the last `n_blocks` coarse groups of a timm model (its classifier excluded)."""
    classifier = {id(p) for p in model.get_classifier().parameters()}
    named = dict(model.named_parameters())
    groups = [[named[n] for n in names if id(named[n]) not in classifier]
              for names in group_parameters(model, model.group_matcher(coarse=True)).values()]
    groups = [g for g in groups if g]
    if not 0 <= n_blocks <= len(groups):
        raise ValueError(f"unfreeze_blocks must be in [0, {len(groups)}] for {type(model).__name__}, got {n_blocks}")
    return [p for g in groups[len(groups) - n_blocks:] for p in g]


class FinetuneHead(TorchHead):
    """A fine-tuned backbone + Dropout -> Dense, as an estimator on uint8 images N x H x W (x C)."""

    inputs = "images"
    _parameter_constraints: ClassVar[dict] = {
        **TRAINING, "image_size": [Interval(Integral, 8, 1024, closed="both"), None],
        "unfreeze_blocks": [at_least(0)], "head_epochs": [at_least(1)], "head_lr": [POSITIVE],
        "rotation": [NON_NEGATIVE], "zoom": [FRACTION], "max_images": [at_least(1), None]}

    def __init__(self, backbone: str = defaults.BACKBONE, weights: str = defaults.WEIGHTS,
                 image_size: int | None = defaults.IMAGE_SIZE,
                 unfreeze_blocks: int = 1, two_stage: bool = True, dropout: float = 0.3, head_epochs: int = 30,
                 head_lr: float = 1e-3, epochs: int = 5, lr: float = 1e-4, batch_size: int = 32,
                 patience: int | None = 5, augment: bool = True, flip: bool = True, rotation: float = 10.0,
                 zoom: float = 0.1, max_images: int | None = 2000, validation_fraction: float = 0.1,
                 random_state: int = 0, device: str = "auto", verbose: bool = False):
        self.backbone = backbone
        self.weights = weights
        self.image_size = image_size
        self.unfreeze_blocks = unfreeze_blocks
        self.two_stage = two_stage
        self.dropout = dropout
        self.head_epochs = head_epochs
        self.head_lr = head_lr
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.patience = patience
        self.augment = augment
        self.flip = flip
        self.rotation = rotation
        self.zoom = zoom
        self.max_images = max_images
        self.validation_fraction = validation_fraction
        self.random_state = random_state
        self.device = device
        self.verbose = verbose

    # -- fitting ----------------------------------------------------------------------------------------

    def fit(self, images, y) -> FinetuneHead:
        images = _images_nchw(images, "images")
        y = np.asarray(y)
        if len(y) != len(images):
            raise ValueError(f"{len(images)} images but {len(y)} labels")
        check_classification_targets(y)
        self.classes_, y = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(f"FinetuneHead: need at least 2 classes in y, got {len(self.classes_)}")
        images, y = self._subset(images, y.astype(np.int64))
        self.input_shape_ = tuple(int(s) for s in images.shape[1:])
        device = self._device()
        backbone = create_backbone(self.backbone, weights=self.weights, image_size=self.image_size,
                                   device=device, jit=False)
        with torch.random.fork_rng():
            torch.manual_seed(self.random_state)
            self.module_ = FinetuneNet(backbone, len(self.classes_), self.dropout)
        train_idx, val_idx = self._validation_indices(y)
        val = None if val_idx is None else (images[val_idx], y[val_idx])
        history = {}
        if self.two_stage:
            features = self._features(images)
            history["head"] = fit_classifier(
                self.module_.head, features[train_idx], y[train_idx],
                None if val is None else (features[val_idx], y[val_idx]),
                self._train_config(epochs=self.head_epochs, lr=self.head_lr, device=str(device),
                                   desc="finetune: head on frozen features")).to_dict()
        trainable = top_block_parameters(backbone.model, self.unfreeze_blocks)
        for p in trainable:
            p.requires_grad_(True)
        history["finetune"] = fit_classifier(
            nn.Sequential(ImageInput(self._augmentation()), self.module_), images[train_idx], y[train_idx], val,
            self._train_config(device=str(device), desc=f"finetune: top {self.unfreeze_blocks} blocks"),
            parameters=[*trainable, *self.module_.head.parameters()]).to_dict()
        for p in trainable:
            p.requires_grad_(False)
        self.module_.eval()
        self.history_ = history
        return self

    def _subset(self, images: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """At most `max_images`, picked as every `n_train` in vfe is (balanced_index, seeded)."""
        if self.max_images is None or len(y) <= self.max_images:
            return images, y
        index = balanced_index(y, self.max_images, self.random_state)
        return images[index], y[index]

    def _augmentation(self) -> nn.Module | None:
        if not self.augment:
            return None
        from torchvision.transforms import v2  # ~1 s to import; only augmentation needs it

        ops = [v2.RandomHorizontalFlip()] if self.flip else []
        if self.rotation or self.zoom:
            ops.append(v2.RandomAffine(degrees=self.rotation, scale=(1 - self.zoom, 1 + self.zoom)))
        return v2.Compose(ops) if ops else None

    def _device(self) -> torch.device:
        return resolve_device(self.device)

    # -- prediction -------------------------------------------------------------------------------------

    @torch.inference_mode()
    def _batches(self, images: np.ndarray, fn, desc: str) -> np.ndarray:
        self.module_.eval()
        device = self.module_.backbone.device
        step = 4 * self.batch_size
        out = [fn(torch.from_numpy(images[i:i + step]).to(device).float().div_(255.0)).cpu()
               for i in tqdm(range(0, len(images), step), desc=desc, disable=not self.verbose, leave=False)]
        return torch.cat(out).numpy()

    def _features(self, images: np.ndarray) -> np.ndarray:
        return self._batches(images, self.module_.backbone, "finetune: features")

    def predict_proba(self, images) -> np.ndarray:
        check_is_fitted(self, "classes_")
        images = _images_nchw(images, "images")
        if images.shape[1] != self.input_shape_[0]:
            raise ValueError(f"images have {images.shape[1]} channels; the head was fitted on "
                             f"{self.input_shape_[0]}")
        return self._batches(images, lambda x: torch.softmax(self.module_(x), 1), "finetune: predict")

    def probability_module(self) -> nn.Module:
        """Images in [0, 1] (N x C x H x W) -> class probabilities (for end-to-end attacks)."""
        return SoftmaxOutput(self.module_)

    # -- saving -----------------------------------------------------------------------------------------

    def export_state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """Backbone + head tensors; JSON with the timm architecture and preprocessing that rebuild them."""
        check_is_fitted(self, "classes_")
        backbone = self.module_.backbone
        meta = {"head": type(self).__name__, "params": self.get_params(), "classes": self.classes_.tolist(),
                "input_shape": list(self.input_shape_), "history": self.history_,
                "backbone": {"arch": backbone.arch, "data_config": backbone.data_config}}
        return {k: v for k, v in self.module_.state_dict().items()}, meta

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor], meta: dict) -> FinetuneHead:
        head = cls(**meta["params"])
        head.classes_ = np.asarray(meta["classes"])
        head.input_shape_ = tuple(meta["input_shape"])
        head.history_ = meta.get("history")
        saved = meta["backbone"]
        config = saved["data_config"]
        backbone = create_backbone(saved["arch"], weights="none", image_size=config["input_size"][-1],
                                   crop_pct=config["crop_pct"], device=head._device(), jit=False)
        if _as_json(backbone.data_config) != _as_json(config):
            raise ValueError(f"saved fine-tuned {saved['arch']} expects preprocessing {config}, but this timm "
                             f"version builds {backbone.data_config}")
        head.module_ = FinetuneNet(backbone, len(head.classes_), head.dropout)
        head.module_.load_state_dict(tensors)
        head.module_.eval()
        return head


def _images_nchw(images, name: str) -> np.ndarray:
    """uint8 N x H x W (x C) -> uint8 N x C x H x W numpy array."""
    if not isinstance(images, np.ndarray):
        raise TypeError(f"{name}: FinetuneHead takes uint8 images as a numpy array, got {type(images).__name__}")
    if images.ndim not in (3, 4):
        raise ValueError(f"{name}: expected images N x H x W (x C), got shape {images.shape}")
    return to_tensor_nchw(images).contiguous().numpy()


def _as_json(config: dict) -> str:
    return json.dumps(config, sort_keys=True, default=list)
