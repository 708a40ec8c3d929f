"""A small CNN trained from scratch: the no-transfer baseline, in a plain and a regularised variant.

    Conv3x3(16) - MaxPool - Conv3x3(32) - MaxPool - Conv3x3(64) - MaxPool - Flatten - Dense(128) - Dense(classes)

The regularised variant ("augmented") adds random rotations and zooms (and optionally flips) of the
training images (a layer that is the identity in eval mode) and dropout after the last pooling layer, the
usual cure for the over-fitting the plain variant shows on a few thousand images. Training is the
core loop (`vfe.training.train`) with best-only checkpoints and early stopping on validation loss.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vfe import plotting
from vfe.checkpoint import Checkpointer
from vfe.data.split import holdout_index
from vfe.heads.base import classification_loss
from vfe.io import load_tensors, read_json, save_tensors, write_json
from vfe.lab.common import load_data, train_config
from vfe.lab.config import LabSettings
from vfe.rundir import Run
from vfe.training import History, TrainConfig, train

FAMILY = "small-cnn"
MODEL_FILE, CONFIG_FILE = "model.safetensors", "model.json"


@dataclass
class SmallCNNConfig:
    """Architecture of the small CNN; `augment` and `dropout` make the regularised variant.

    Augmentation draws, per image, a rotation of up to `rotation` degrees, a zoom of up to `zoom`
    (0.1 = +-10 %) and, with `flip`, a horizontal flip. Keras' flower tutorial flips and rotates by
    up to 36 degrees; Fashion-MNIST's clothes are photographed upright and every shoe faces left,
    so flips and large rotations make images the test set never shows: no flip, 10 degrees.
    """

    input_shape: tuple[int, int, int] = (1, 28, 28)  # C, H, W
    n_classes: int = 10
    filters: tuple[int, ...] = (16, 32, 64)
    dense: int = 128
    augment: bool = False
    flip: bool = False
    rotation: float = 10.0
    zoom: float = 0.1
    dropout: float = 0.0

    def __post_init__(self) -> None:
        self.input_shape = tuple(int(v) for v in self.input_shape)
        self.filters = tuple(int(v) for v in self.filters)
        if len(self.input_shape) != 3 or self.input_shape[0] not in (1, 3):
            raise ValueError(f"SmallCNNConfig.input_shape must be (C, H, W) with C in (1, 3), got {self.input_shape}")
        if min(self.input_shape[1:]) < 2 ** len(self.filters):
            raise ValueError(f"SmallCNNConfig: {len(self.filters)} poolings need images of at least "
                             f"{2 ** len(self.filters)} pixels, got {self.input_shape[1:]}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"SmallCNNConfig.dropout must be in [0, 1), got {self.dropout}")


VARIANTS: dict[str, dict] = {
    "plain": {},
    "augmented": {"augment": True, "dropout": 0.2},
}


class RandomAugment(nn.Module):
    """Per-image random rotation, zoom and (optional) horizontal flip in one affine resampling; identity in
    eval mode."""

    def __init__(self, flip: bool = False, rotation: float = 10.0, zoom: float = 0.1):
        super().__init__()
        self.flip, self.rotation, self.zoom = flip, rotation, zoom

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        n = len(x)
        angle = (2 * torch.rand(n) - 1) * math.radians(self.rotation)
        scale = 1 + (2 * torch.rand(n) - 1) * self.zoom  # > 1 magnifies
        mirror = torch.where(torch.rand(n) < 0.5, -1.0, 1.0) if self.flip else torch.ones(n)
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        # output -> input coordinates: rotate, shrink by the zoom, then mirror x
        theta = torch.stack([torch.stack([cos * mirror, -sin, torch.zeros(n)], 1),
                             torch.stack([sin * mirror, cos, torch.zeros(n)], 1)], 1).to(x)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class SmallCNN(nn.Module):
    """`features` (convolutions and poolings; the layers `vfe viz` shows) then `classifier` (logits)."""

    def __init__(self, config: SmallCNNConfig):
        super().__init__()
        self.config = config
        c, h, w = config.input_shape
        self.augment = RandomAugment(config.flip, config.rotation, config.zoom) if config.augment else nn.Identity()
        layers: list[nn.Module] = []
        for f in config.filters:
            layers += [nn.Conv2d(c, f, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            c, h, w = f, h // 2, w // 2
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(config.dropout), nn.Flatten(), nn.Linear(c * h * w, config.dense),
                                        nn.ReLU(), nn.Linear(config.dense, config.n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(self.augment(x)))


def build_small_cnn(config: SmallCNNConfig, seed: int | None = None) -> SmallCNN:
    """A fresh model; `seed` makes the initial weights repeatable."""
    with torch.random.fork_rng():
        if seed is not None:
            torch.manual_seed(seed)
        return SmallCNN(config)


def fit_small_cnn(model: SmallCNN, images: torch.Tensor, labels: np.ndarray, config: TrainConfig,
                  val_fraction: float = 0.1, checkpoint_dir: str | Path | None = None, keep: int = 2) -> History:
    """Train on N x C x H x W images in [0, 1]; stratified validation split, early stop, best weights kept."""
    if tuple(images.shape[1:]) != model.config.input_shape:
        raise ValueError(f"images are {tuple(images.shape[1:])} but the model expects {model.config.input_shape}")
    y = torch.as_tensor(labels, dtype=torch.int64)
    train_idx, val_idx = holdout_index(len(images), val_fraction, config.seed, labels=np.asarray(labels))
    val = (images[val_idx], y[val_idx]) if val_idx is not None else None
    checkpointer = Checkpointer(checkpoint_dir, keep=keep) if checkpoint_dir is not None else None
    with torch.random.fork_rng():
        torch.manual_seed(config.seed)  # augmentation and dropout draws
        return train(model, classification_loss, (images[train_idx], y[train_idx]), val, config, checkpointer)


@torch.no_grad()
def predict_classes(model: nn.Module, images: torch.Tensor, batch_size: int = 1024) -> np.ndarray:
    model.eval()
    return torch.cat([model(images[i:i + batch_size]).argmax(1) for i in range(0, len(images), batch_size)]).numpy()


def save_small_cnn(model: SmallCNN, directory: str | Path, data: dict | None = None) -> Path:
    """Weights as safetensors, config as JSON (written last: its presence marks a complete save)."""
    directory = Path(directory)
    save_tensors(directory / MODEL_FILE, model.state_dict())
    write_json(directory / CONFIG_FILE, {"family": FAMILY, "config": asdict(model.config), "data": data or {}})
    return directory


def load_small_cnn(directory: str | Path) -> SmallCNN:
    """The model `save_small_cnn` wrote in `directory`, in eval mode."""
    meta_path = Path(directory) / CONFIG_FILE
    if not meta_path.exists():
        raise FileNotFoundError(f"{meta_path} not found: give a folder written by `vfe viz small-cnn`")
    meta = read_json(meta_path)
    if meta.get("family") != FAMILY:
        raise ValueError(f"{meta_path} describes a {meta.get('family')!r} model, not a small CNN")
    known = {f.name for f in dataclasses.fields(SmallCNNConfig)}
    model = SmallCNN(SmallCNNConfig(**{k: v for k, v in meta["config"].items() if k in known}))
    model.load_state_dict(load_tensors(Path(directory) / MODEL_FILE))
    return model.eval()


def run_small_cnn(settings: LabSettings | None = None, out: str | Path | None = None, overwrite: bool = False,
                  variants: Sequence[str] = ("plain", "augmented"), flip: bool = False) -> Run:
    """Train each variant on the same images; save them (`<out>/<variant>/`) with history plots and accuracy.

    `flip` adds random horizontal flips to the augmented variant (right for photos of flowers, wrong
    for Fashion-MNIST, whose shoes all face left).
    """
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        raise ValueError(f"variants {unknown or list(variants)}: choose from {', '.join(VARIANTS)}")
    settings = settings or LabSettings()
    data = load_data(settings)
    run = Run(out or Path("runs/viz/small-cnn"), "vfe viz small-cnn: a CNN trained from scratch",
              overwrite=overwrite, settings={"variants": list(variants), "flip": flip, **settings.to_dict()})
    y_train, y_test = data.train.labels, data.test.labels
    rows = []
    for name in variants:
        augment = {"flip": flip} if VARIANTS[name].get("augment") else {}
        config = SmallCNNConfig(input_shape=data.input_shape, n_classes=data.train.num_classes, **VARIANTS[name],
                                **augment)
        model = build_small_cnn(config, seed=settings.seed)
        history = fit_small_cnn(model, data.x_train, y_train, train_config(settings, f"small CNN ({name})"),
                                settings.val_fraction, checkpoint_dir=run.path(f"{name}/checkpoints"),
                                keep=settings.keep)
        save_small_cnn(model, run.path(name), data=data.describe())
        write_json(run.path(f"{name}/history.json"), history.to_dict())
        best = history.records[history.best_epoch - 1] if history.best_epoch else history.records[-1]
        rows.append({"variant": name, "test_accuracy": float((predict_classes(model, data.x_test) == y_test).mean()),
                     "train_accuracy": best["acc"], "val_accuracy": best.get("val_acc", float("nan")),
                     "best_epoch": history.best_epoch, "epochs_run": len(history.records),
                     "parameters": sum(p.numel() for p in model.parameters())})
        setting = (f"small CNN ({name}), {settings.dataset} n_train={len(y_train)}, seed {settings.seed}; "
                   f"test accuracy {rows[-1]['test_accuracy']:.3f}")
        plotting.history_figure(history.records, run.figure(f"{name}/history.png",
                                                            f"{name}: training history; dashed: best epoch"),
                                keys=["loss", "acc"], best_epoch=history.best_epoch, title=setting)
    run.record(data=data.describe(), variants=rows)
    run.table(f"test accuracy on {len(y_test)} images", rows)
    run.finish()
    return run
