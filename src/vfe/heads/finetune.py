"""Fine-tuning: the top of a pretrained backbone trained together with Dropout -> Dense, in one of two recipes.

vfe's one fine-tuning implementation: `vfe fit --head finetune` (FinetuneHead) and stage 0 of
`vfe run --protocol reference` (vfe.experiment.reference) both build their model, choose what trains, set the
BatchNorm mode and train with the code here. A `Recipe` says how; two are named (`RECIPES`):

- "reference": the reference's compare model. Every layer from the cut point on trains
  (`vfe.backbones.cut.reference_cut`), its BatchNorm in training mode as Keras runs trainable layers (Keras's
  momentum 0.99 is torch's 0.01), Dropout(0.3) -> Dense, Adam 1e-3, batch 100, a fixed number of epochs, no
  augmentation. The bottom is frozen, so its activations at the cut are computed once and every epoch runs
  only the top (`CompareModel`).
- "keras-guide" (Chollet; the Keras transfer-learning guide): the head first on frozen features (a fresh head's
  large gradients would wreck the pretrained weights otherwise), then the top `unfreeze_blocks` timm parameter
  groups (for EfficientNet-Lite0 `1` is blocks.6 + conv_head) with the head at a lower learning rate (1e-4),
  every BatchNorm in inference mode (small batches would corrupt its statistics), flip/rotation/zoom
  augmentation (torchvision.transforms.v2, per image), early stopping on held-out images (`FinetuneNet`).

Stage 0 adds options to the reference recipe: flip/rotation/zoom (`augment`, then the whole backbone runs every
epoch), LP-FT (`head_epochs`: the head alone first) and AugMix with the Jensen-Shannon term (`augmix`,
`js_weight`: `fit_on_augmix`).

FinetuneHead takes uint8 images (`inputs = "images"`), not features, and saves the whole fine-tuned backbone
with the head, as tensors. By default it trains on a class-balanced subset of at most `max_images` images, so
it runs on a CPU; it uses the GPU when there is one (`device="auto"`).
"""
from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, replace
from numbers import Integral
from typing import ClassVar

import numpy as np
import torch
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted
from timm.models import group_parameters
from torch import nn
from tqdm.auto import tqdm

from vfe import defaults
from vfe.backbones import create_backbone, resolve_device
from vfe.backbones.cut import CutModel, reference_cut
from vfe.backbones.preprocess import to_tensor_nchw
from vfe.data.split import balanced_index
from vfe.heads.base import (
    FRACTION,
    NON_NEGATIVE,
    POSITIVE,
    SoftmaxOutput,
    TorchHead,
    at_least,
    fit_classifier,
)
from vfe.heads.views import jensen_shannon
from vfe.training import History, TrainConfig, train

KERAS_BN_MOMENTUM = 0.01  # Keras momentum 0.99 keeps 99 % of the running statistic; torch's momentum is 1 - that


@dataclass(frozen=True)
class Recipe:
    """How the top of a backbone and its Dropout -> Dense are trained."""

    name: str
    top: str  # what trains: "cut" (every layer from the cut point on) or "blocks" (the top timm parameter groups)
    batchnorm: str  # the top's BatchNorm: "train" (batch statistics, running ones updated) or "inference"
    lr: float
    batch_size: int
    epochs: int
    patience: int | None  # None: exactly `epochs`
    head_epochs: int  # the head alone on the frozen features first (two-stage, LP-FT); 0: not
    head_lr: float
    augment: bool  # flip, rotation, zoom of the images
    bn_momentum: float | None = None  # torch's, for batchnorm="train"
    dropout: float = 0.3
    flip: bool = True
    rotation: float = 10.0  # degrees, either way
    zoom: float = 0.1  # scale in [1 - zoom, 1 + zoom]
    augmix: bool = False  # train on (clean, AugMix view, AugMix view) triples (`fit_on_augmix`)
    js_weight: float = 12.0  # with augmix: weight of the Jensen-Shannon consistency term (AugMix's lambda)

    def train_config(self, seed: int, device: str, progress: bool, desc: str) -> TrainConfig:
        """The training loop's settings for the top and the head together."""
        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, patience=self.patience,
                           seed=seed, device=device, progress=progress, desc=desc)


RECIPES = {
    "reference": Recipe("reference", top="cut", batchnorm="train", bn_momentum=KERAS_BN_MOMENTUM, lr=1e-3,
                        batch_size=100, epochs=3, patience=None, head_epochs=0, head_lr=1e-3, augment=False),
    "keras-guide": Recipe("keras-guide", top="blocks", batchnorm="inference", lr=1e-4, batch_size=32, epochs=5,
                          patience=5, head_epochs=30, head_lr=1e-3, augment=True),
}


@contextmanager
def seeded(seed: int):
    """A new Dense layer's initialisation drawn from `seed`, not from (nor advancing) the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def dense(feature_dim: int, n_classes: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(feature_dim, n_classes))


class CompareModel(nn.Module):
    """The top of a cut backbone -> Dropout -> Dense (logits), on cut-point activations flattened to rows (as
    cached). The bottom stays in inference mode; the top follows the recipe's BatchNorm mode."""

    def __init__(self, cut: CutModel, shape: tuple[int, ...], n_classes: int, feature_dim: int,
                 recipe: Recipe = RECIPES["reference"]):
        super().__init__()
        self.cut = cut
        self.shape = shape
        self.batchnorm = recipe.batchnorm
        self.head = dense(feature_dim, n_classes, recipe.dropout)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return self.head(self.cut.top(a.float().view(-1, *self.shape)))

    def train(self, mode: bool = True) -> CompareModel:
        super().train(mode)
        self.cut.bottom.train(False)  # frozen: BatchNorm below the cut keeps its running statistics
        if self.batchnorm == "inference":
            self.cut.top_units.train(False)
        return self

    @torch.inference_mode()
    def top_features(self, A: np.ndarray, batch_size: int = 512) -> np.ndarray:
        """Pooled features of the (un-tuned) top, for the head-first stage."""
        self.eval()
        return torch.cat([self.cut.top(torch.from_numpy(A[i:i + batch_size]).float().view(-1, *self.shape))
                          for i in range(0, len(A), batch_size)]).numpy()


class ImageInput(nn.Module):
    """uint8 N x C x H x W -> float [0, 1]; in training mode each image is randomly augmented first."""

    def __init__(self, augment: nn.Module | None):
        super().__init__()
        self.augment = augment

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.training and self.augment is not None:
            images = torch.stack([self.augment(image) for image in images])  # v2 on a batch = one draw for all
        return images.float().div_(255.0)


class FromImages(nn.Module):
    """uint8 images -> (augment) -> [0, 1] -> the backbone's preprocessing -> frozen bottom -> compare model."""

    def __init__(self, model: CompareModel, normalise, augment: nn.Module | None):
        super().__init__()
        self.input = ImageInput(augment)
        self.model = model
        self.normalise = normalise

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            a = self.model.cut.bottom(self.normalise(self.input(images)))
        return self.model(a.flatten(1))


class FinetuneNet(nn.Module):
    """Float images in [0, 1] (N x C x H x W) -> backbone (its preprocessing included) -> logits."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone  # vfe Backbone: always in eval mode, so BatchNorm stays in inference mode
        self.head = head

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x01))


def augmentation(recipe: Recipe) -> nn.Module | None:
    """The recipe's flip/rotation/zoom as a torchvision transform of one uint8 image, or None."""
    if not recipe.augment:
        return None
    from torchvision.transforms import v2  # ~1 s to import; only augmentation needs it

    ops = [v2.RandomHorizontalFlip()] if recipe.flip else []
    if recipe.rotation or recipe.zoom:
        ops.append(v2.RandomAffine(degrees=recipe.rotation, scale=(1 - recipe.zoom, 1 + recipe.zoom)))
    return v2.Compose(ops) if ops else None


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


def train_top(net: nn.Module, head: nn.Module, top: list[nn.Parameter], recipe: Recipe, X: np.ndarray,
              y: np.ndarray, config: TrainConfig, val=None,
              head_features: Callable[[], tuple[np.ndarray, np.ndarray | None]] | None = None,
              views: np.ndarray | None = None) -> dict:
    """The fine-tuning loop of both recipes: the head alone on frozen features first when the recipe has
    `head_epochs` (`head_features()` gives them, training and held-out rows), then `top` and the head together
    through `net` (on X, or on AugMix triples when `views` are given). {"head": ..., "finetune": ...} histories."""
    history = {}
    if recipe.head_epochs:
        F, F_val = head_features()
        history["head"] = fit_classifier(
            head, F, y, None if F_val is None else (F_val, val[1]),
            replace(config, epochs=recipe.head_epochs, lr=recipe.head_lr, desc=f"{config.desc}: head first")).to_dict()
    for p in top:
        p.requires_grad_(True)
    parameters = [*top, *head.parameters()]
    if views is None:
        history["finetune"] = fit_classifier(net, X, y, val, config, parameters=parameters).to_dict()
    else:
        history["finetune"] = fit_on_augmix(net, X, views, y, config, recipe.js_weight, parameters).to_dict()
    for p in top:
        p.requires_grad_(False)
    return history


class _EpochViews(nn.Module):
    """The model, and which epoch the training loop is in: it enters training mode once per epoch."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.epoch = -1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def train(self, mode: bool = True) -> _EpochViews:
        super().train(mode)
        self.epoch += bool(mode)
        return self


def fit_on_augmix(net: nn.Module, X: np.ndarray, views: np.ndarray, y: np.ndarray, config: TrainConfig,
                  js_weight: float, parameters) -> History:
    """AugMix training (Hendrycks et al. 2020): each step feeds (clean, view 1, view 2) rows as one batch,
    cross-entropy on the clean rows + `js_weight` x the Jensen-Shannon divergence of the three predictions.
    `views` is n x 2E x d: epoch e uses views 2e and 2e + 1, so every epoch sees new ones."""
    wrapped = _EpochViews(net)

    def loss_fn(module: _EpochViews, batch):
        x, v, labels = batch
        n, e = len(labels), 2 * module.epoch
        logits = module(torch.cat([x, v[:, e], v[:, e + 1]]))
        js = jensen_shannon(*logits.split(n))
        loss = nn.functional.cross_entropy(logits[:n], labels) + js_weight * js
        return loss, {"acc": float((logits[:n].detach().argmax(1) == labels).float().mean()), "js": float(js.detach())}

    tensors = (torch.from_numpy(X), torch.from_numpy(views), torch.from_numpy(y))
    with torch.random.fork_rng():
        torch.manual_seed(config.seed)
        return train(wrapped, loss_fn, tensors, None, config, parameters=parameters)


def fine_tune_cut(model: CompareModel, recipe: Recipe, A: np.ndarray, y: np.ndarray, config: TrainConfig,
                  val=None, images: np.ndarray | None = None, normalise=None,
                  views: np.ndarray | None = None) -> dict:
    """A cut backbone's top fine-tuned on its cut-point activations A (rows). With `recipe.augment` the uint8
    `images` (N x C x H x W) go through the frozen bottom every step instead, `normalise` being the
    backbone's preprocessing; with `recipe.augmix`, `views` are the activations of AugMix views."""
    if recipe.bn_momentum is not None:
        for m in model.cut.top_units.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = recipe.bn_momentum
    net, X = model, A
    if recipe.augment:
        net, X = FromImages(model, normalise, augmentation(recipe)), images
    return train_top(net, model.head, list(model.cut.top_units.parameters()), recipe, X, y, config, val,
                     lambda: (model.top_features(A), None if val is None else model.top_features(val[0])),
                     views if recipe.augmix else None)


class FinetuneHead(TorchHead):
    """A fine-tuned backbone + Dropout -> Dense, as an estimator on uint8 images N x H x W (x C).

    `recipe` names the training ("keras-guide" or "reference"); the training parameters left None take the
    recipe's values (both recipes' Dropout is 0.3). What trains: the top `unfreeze_blocks` groups under
    keras-guide, every layer from `cut_point` on (default: the mapped reference cut) under reference.
    `patience=0` trains for exactly `epochs`."""

    inputs = "images"
    _parameter_constraints: ClassVar[dict] = {
        "recipe": [StrOptions(set(RECIPES))], "cut_point": [str, None],
        "image_size": [Interval(Integral, 8, 1024, closed="both"), None], "unfreeze_blocks": [at_least(0)],
        "two_stage": ["boolean", None], "dropout": [FRACTION], "head_epochs": [at_least(0), None],
        "head_lr": [POSITIVE, None], "epochs": [at_least(1), None], "lr": [POSITIVE, None],
        "batch_size": [at_least(1), None], "patience": [at_least(0), None], "augment": ["boolean", None],
        "flip": ["boolean", None], "rotation": [NON_NEGATIVE, None], "zoom": [FRACTION, None],
        "max_images": [at_least(1), None], "validation_fraction": [FRACTION], "random_state": [at_least(0)]}

    def __init__(self, backbone: str = defaults.BACKBONE, weights: str = defaults.WEIGHTS,
                 image_size: int | None = defaults.IMAGE_SIZE, recipe: str = "keras-guide",
                 unfreeze_blocks: int = 1, cut_point: str | None = None, two_stage: bool | None = None,
                 dropout: float = 0.3, head_epochs: int | None = None, head_lr: float | None = None,
                 epochs: int | None = None, lr: float | None = None, batch_size: int | None = None,
                 patience: int | None = None, augment: bool | None = None, flip: bool | None = None,
                 rotation: float | None = None, zoom: float | None = None, max_images: int | None = 2000,
                 validation_fraction: float = 0.1, random_state: int = 0, device: str = "auto",
                 verbose: bool = False):
        self.backbone = backbone
        self.weights = weights
        self.image_size = image_size
        self.recipe = recipe
        self.unfreeze_blocks = unfreeze_blocks
        self.cut_point = cut_point
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

    def resolved_recipe(self) -> Recipe:
        """The named recipe with this head's given (not None) training parameters."""
        names = ("dropout", "head_epochs", "head_lr", "epochs", "lr", "batch_size", "augment", "flip", "rotation",
                 "zoom")
        recipe = replace(RECIPES[self.recipe], **{k: getattr(self, k) for k in names if getattr(self, k) is not None})
        if self.patience is not None:
            recipe = replace(recipe, patience=self.patience or None)
        if self.two_stage is False:
            recipe = replace(recipe, head_epochs=0)
        elif self.two_stage and not recipe.head_epochs:
            raise ValueError(f"FinetuneHead: two_stage=True needs head_epochs >= 1 (recipe {recipe.name} has none)")
        return recipe

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
        recipe = self.resolved_recipe()
        images, y = self._subset(images, y.astype(np.int64))
        self.input_shape_ = tuple(int(s) for s in images.shape[1:])
        device = self._device()
        backbone = create_backbone(self.backbone, weights=self.weights, image_size=self.image_size,
                                   device=device, jit=False, runtime="torch")  # its weights train
        train_idx, val_idx = self._validation_indices(y)
        config = recipe.train_config(self.random_state, str(device), self.verbose, f"finetune ({recipe.name})")
        if recipe.top == "cut":
            head, history = self._fit_cut(backbone, recipe, images, y, train_idx, val_idx, config)
        else:
            with seeded(self.random_state):
                head = dense(backbone.feature_dim, len(self.classes_), recipe.dropout)
            self.module_ = FinetuneNet(backbone, head)
            val = None if val_idx is None else (images[val_idx], y[val_idx])

            def features():
                F = self._features(images)
                return F[train_idx], None if val_idx is None else F[val_idx]

            history = train_top(nn.Sequential(ImageInput(augmentation(recipe)), self.module_), head,
                                top_block_parameters(backbone.model, self.unfreeze_blocks), recipe,
                                images[train_idx], y[train_idx], config, val, features)
        self.module_ = FinetuneNet(backbone, head)
        self.module_.eval()
        self.history_ = history
        return self

    def _fit_cut(self, backbone, recipe: Recipe, images: np.ndarray, y: np.ndarray, train_idx, val_idx,
                 config: TrainConfig) -> tuple[nn.Module, dict]:
        """The reference recipe: the top from the cut trained on the bottom's activations, computed once."""
        cut = CutModel(backbone.model, self.cut_point or reference_cut(backbone.model, backbone.arch))
        A = self._batches(images, lambda x: cut.bottom(backbone.normalise(x)), "finetune: to the cut", backbone.device)
        shape, A = A.shape[1:], A.reshape(len(A), -1)
        with seeded(self.random_state):
            model = CompareModel(cut, shape, len(self.classes_), backbone.feature_dim, recipe)
        val = None if val_idx is None else (A[val_idx], y[val_idx])
        history = fine_tune_cut(model, recipe, A[train_idx], y[train_idx], config, val,
                                images[train_idx], backbone.normalise)
        return model.head, history

    def _subset(self, images: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """At most `max_images`, picked as every `n_train` in vfe is (balanced_index, seeded)."""
        if self.max_images is None or len(y) <= self.max_images:
            return images, y
        index = balanced_index(y, self.max_images, self.random_state)
        return images[index], y[index]

    def _device(self) -> torch.device:
        return resolve_device(self.device)

    # -- prediction -------------------------------------------------------------------------------------

    @torch.inference_mode()
    def _batches(self, images: np.ndarray, fn, desc: str, device=None) -> np.ndarray:
        step = 4 * self.resolved_recipe().batch_size
        device = device or self.module_.backbone.device
        out = [fn(torch.from_numpy(images[i:i + step]).to(device).float().div_(255.0)).cpu()
               for i in tqdm(range(0, len(images), step), desc=desc, disable=not self.verbose, leave=False)]
        return torch.cat(out).numpy()

    def _features(self, images: np.ndarray) -> np.ndarray:
        self.module_.eval()
        return self._batches(images, self.module_.backbone, "finetune: features")

    def predict_proba(self, images) -> np.ndarray:
        check_is_fitted(self, "classes_")
        images = _images_nchw(images, "images")
        if images.shape[1] != self.input_shape_[0]:
            raise ValueError(f"images have {images.shape[1]} channels; the head was fitted on "
                             f"{self.input_shape_[0]}")
        self.module_.eval()
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
                                   crop_pct=config["crop_pct"], device=head._device(), jit=False, runtime="torch")
        if _as_json(backbone.data_config) != _as_json(config):
            raise ValueError(f"saved fine-tuned {saved['arch']} expects preprocessing {config}, but this timm "
                             f"version builds {backbone.data_config}")
        head.module_ = FinetuneNet(backbone, dense(backbone.feature_dim, len(head.classes_), head.dropout))
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
