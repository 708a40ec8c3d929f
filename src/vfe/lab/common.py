"""The steps every lab command takes: load the data as tensors, build a model's config, train it."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from vfe.data.types import ImageSet
from vfe.lab.config import AEConfig, LabSettings, preset
from vfe.lab.data import describe, load_train_test, to_tensor
from vfe.lab.fit import fit_autoencoder
from vfe.lab.models import ImageAutoencoder, build_model
from vfe.training import History, TrainConfig


def train_config(settings: LabSettings, desc: str) -> TrainConfig:
    """The core loop's settings for one training run of a lab command."""
    return TrainConfig(epochs=settings.epochs, batch_size=settings.batch_size, lr=settings.lr,
                       patience=settings.patience, seed=settings.seed, progress=settings.progress, desc=desc)


@dataclass
class LabData:
    train: ImageSet
    test: ImageSet
    x_train: torch.Tensor
    x_test: torch.Tensor

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])

    def describe(self) -> dict:
        return {"train": describe(self.train), "test": describe(self.test)}


def load_data(settings: LabSettings) -> LabData:
    """The train and test splits of `settings.dataset`, balanced subsets drawn with the settings' seed."""
    train, test = load_train_test(settings.dataset, settings.n_train, settings.n_test, settings.seed,
                                  settings.data_dir, settings.image_size)
    return LabData(train, test, to_tensor(train), to_tensor(test))


def make_config(model: str | AEConfig, input_shape: tuple[int, int, int], **overrides) -> AEConfig:
    """A preset name or a config, adapted to the data's image shape, with fields overridden."""
    if isinstance(model, AEConfig):
        return model.replace(input_shape=input_shape, **overrides)
    return preset(model, input_shape=input_shape, **overrides)


def train_model(config: AEConfig, data: LabData, settings: LabSettings, checkpoint_dir: str | Path | None = None,
                desc: str = "autoencoder") -> tuple[ImageAutoencoder, History]:
    """A fresh model (initialised with the settings' seed) fitted on the training images."""
    model = build_model(config, seed=settings.seed)
    history = fit_autoencoder(model, data.x_train, train_config(settings, desc), settings.val_fraction,
                              checkpoint_dir=checkpoint_dir, keep=settings.keep)
    return model, history
