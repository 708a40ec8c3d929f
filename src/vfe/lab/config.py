"""The lab's settings and model configs as plain data (no torch), so the command line can offer their
defaults and choices without importing torch: `vfe --help` stays fast.

One typed config (`AEConfig`, saved as JSON beside the safetensors weights) describes every model;
`PRESETS` names the classic settings the lab's commands use (the layouts are in `vfe.lab.models`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass

# activation name -> the torch.nn class `vfe.lab.models` builds
ACTIVATIONS = {"relu": "ReLU", "leaky_relu": "LeakyReLU", "elu": "ELU", "gelu": "GELU", "selu": "SELU",
               "silu": "SiLU", "tanh": "Tanh"}
KINDS = ("dense", "conv")
DECODERS = ("transpose", "upsample")
RECON_LOSSES = ("mse", "bce")

COMPRESS_EPOCHS = 40  # `vfe lab compress` trains one small dense model per code size: cheap epochs,
                      # and the usual 15 leave them under-trained (the error curve flattens too early)


@dataclass
class LabSettings:
    """Defaults sized for a 2-core CPU: each command takes a few minutes on Fashion-MNIST.

    `n_train` / `n_test` images are the project's class-balanced seeded subset
    (`vfe.data.split.balanced_subset`), so the lab trains on the images `vfe run` would pick.
    """

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


@dataclass
class AEConfig:
    """Architecture and objective of one image autoencoder (all of it is saved with the weights).

    `noise_factor` and `mask_size` describe the input corruption the model is trained to undo
    (0 = a plain autoencoder); `beta` weighs the KL term of a variational model.
    """

    kind: str = "conv"  # "dense" | "conv"
    variational: bool = False
    input_shape: tuple[int, int, int] = (1, 28, 28)  # C, H, W
    hidden: tuple[int, ...] = (64,)  # dense layers between pixels and code (dense kind)
    filters: tuple[int, ...] = (32, 64)  # strided 3x3 convolutions (conv kind)
    latent_dim: int = 10
    decoder_channels: int = 32  # channels of the dense code's image-shaped projection (conv kind)
    decoder: str = "transpose"  # "transpose" | "upsample" (conv kind)
    activation: str = "relu"
    recon_loss: str = "mse"  # "mse" | "bce"
    beta: float = 1.0
    noise_factor: float = 0.0
    mask_size: int = 0

    def __post_init__(self) -> None:
        self.input_shape = tuple(int(v) for v in self.input_shape)
        self.hidden = tuple(int(v) for v in self.hidden)
        self.filters = tuple(int(v) for v in self.filters)
        for name, value, allowed in (("kind", self.kind, KINDS), ("decoder", self.decoder, DECODERS),
                                     ("activation", self.activation, tuple(ACTIVATIONS)),
                                     ("recon_loss", self.recon_loss, RECON_LOSSES)):
            if value not in allowed:
                raise ValueError(f"AEConfig.{name}={value!r}; choose one of {', '.join(allowed)}")
        if len(self.input_shape) != 3 or self.input_shape[0] not in (1, 3):
            raise ValueError(f"AEConfig.input_shape must be (C, H, W) with C in (1, 3), got {self.input_shape}")
        if self.latent_dim < 1:
            raise ValueError(f"AEConfig.latent_dim must be >= 1, got {self.latent_dim}")
        if self.kind == "conv" and not self.filters:
            raise ValueError("AEConfig.filters: a conv autoencoder needs at least one convolution")
        if not 0 <= self.noise_factor or self.mask_size < 0 or self.beta < 0:
            raise ValueError("AEConfig: noise_factor, mask_size and beta must be >= 0")

    def replace(self, **changes) -> AEConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> AEConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"AEConfig: unknown fields {sorted(unknown)}")
        return cls(**d)


PRESETS: dict[str, dict] = {
    "dense-ae": {"kind": "dense", "hidden": (64,), "latent_dim": 32},
    "conv-ae": {"kind": "conv", "filters": (32, 64), "latent_dim": 10},
    "conv-ae-upsample": {"kind": "conv", "filters": (32, 64), "latent_dim": 10, "decoder": "upsample"},
    "vae": {"kind": "dense", "variational": True, "hidden": (64,), "latent_dim": 32},
    "conv-vae": {"kind": "conv", "variational": True, "filters": (32, 64), "latent_dim": 2},
    "beta-vae": {"kind": "conv", "variational": True, "filters": (32, 64), "latent_dim": 2, "beta": 4.0},
    "denoising-ae": {"kind": "conv", "filters": (32, 64), "latent_dim": 32, "noise_factor": 0.4},
    "inpainting-ae": {"kind": "conv", "filters": (32, 64), "latent_dim": 32, "mask_size": 10},
}


def preset(name: str, input_shape: tuple[int, int, int] = (1, 28, 28), **overrides) -> AEConfig:
    """The config of a named preset for images of `input_shape`, with fields overridden."""
    if name not in PRESETS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(PRESETS)}")
    return AEConfig(**{**PRESETS[name], "input_shape": input_shape, **overrides})
