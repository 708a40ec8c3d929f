"""Settings every lab command shares (data, sizes, optimisation), and the steps they all take."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from vfe.data.types import ImageSet
from vfe.lab.data import describe, load_train_test, to_tensor
from vfe.lab.fit import fit_autoencoder
from vfe.lab.models import AEConfig, ImageAutoencoder, build_model, preset
from vfe.training import History, TrainConfig

COMPRESS_EPOCHS = 40  # `vfe lab compress` trains one small dense model per code size: cheap epochs,
                      # and the usual 15 leave them under-trained (the error curve flattens too early)


@dataclass
class LabSettings:
    """Defaults sized for a 2-core CPU: each command takes a few minutes on Fashion-MNIST."""

    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    image_size: int | None = None  # resize an image folder's images to this side
    n_train: int | None = 10000
    n_test: int | None = 2000
    epochs: int = 15
    batch_size: int = 128
    lr: float = 1e-3
    patience: int | None = 3
    val_fraction: float = 0.1
    keep: int = 2  # best checkpoints kept on disk
    seed: int = 0
    progress: bool = True

    def to_dict(self) -> dict:
        return asdict(self)

    def train_config(self, desc: str) -> TrainConfig:
        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, patience=self.patience,
                           seed=self.seed, progress=self.progress, desc=desc)


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
    """The train and test splits of `settings.dataset`, subsets drawn with the settings' seed."""
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
    history = fit_autoencoder(model, data.x_train, settings.train_config(desc), settings.val_fraction,
                              checkpoint_dir=checkpoint_dir, keep=settings.keep)
    return model, history
