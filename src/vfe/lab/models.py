"""Image autoencoders: dense, convolutional (transposed-conv or upsample decoder), variational.

One typed config (`vfe.lab.config.AEConfig`, saved as JSON beside the safetensors weights) describes
every model; `PRESETS` names the classic settings the lab's commands use:

    dense-ae          784 -> 64 -> 32 -> 64 -> 784 (sigmoid)
    conv-ae           Conv3x3/2 32 -> Conv3x3/2 64 -> Dense 10 -> Dense 7x7x32 -> ConvT 64, 32 (stride 2)
                      -> ConvT 1 (stride 1), sigmoid
    conv-ae-upsample  the same encoder; decoder Upsample x2 + Conv3x3 in place of each strided ConvT
    vae               dense VAE 784 -> 64 -> latent 32 (z_mean, z_log_var), MSE + KL
    conv-vae          the conv-ae layout with a variational code (latent 2, so the plane can be drawn)
    beta-vae          conv-vae with beta = 4
    denoising-ae      conv-ae with a 32-d code, trained on clip(x + 0.4 * N(0, 1), 0, 1) -> x
    inpainting-ae     conv-ae with a 32-d code, trained on images with a random 10x10 square blanked

Every model maps N x C x H x W images in [0, 1] to images of the same shape; H and W need not be
multiples of 4 (the decoder's output is cropped back). The loss reductions are in `vfe.lab.losses`.
"""
from __future__ import annotations

import itertools
import math
from pathlib import Path

import torch
from torch import nn

from vfe.io import load_tensors, read_json, save_tensors, write_json
from vfe.lab.config import ACTIVATIONS, AEConfig, preset
from vfe.vae import reparameterise


def _conv_out(size: int, n_strided: int) -> int:
    for _ in range(n_strided):
        size = math.ceil(size / 2)  # 3x3, stride 2, padding 1
    return size


class ImageAutoencoder(nn.Module):
    """Encoder body -> code (a vector) -> decoder; variational when `config.variational`.

    `body` (pixels -> flat hidden features) is the part a classifier can be initialised from.
    `forward(x)` returns `(reconstruction, mu, log_var)`; a plain autoencoder returns its code as `mu`
    and `log_var=None`. A variational model samples z in training mode and decodes z = mu in eval
    mode, so validation losses (and early stopping) are not driven by sampling noise.
    """

    def __init__(self, config: AEConfig):
        super().__init__()
        self.config = config
        c, h, w = config.input_shape
        act = getattr(nn, ACTIVATIONS[config.activation])
        if config.kind == "dense":
            dims = [c * h * w, *config.hidden]
            layers: list[nn.Module] = [nn.Flatten()]
            for a, b in itertools.pairwise(dims):
                layers += [nn.Linear(a, b), act()]
            self.body = nn.Sequential(*layers)
            body_dim = dims[-1]
            dec_dims = [config.latent_dim, *reversed(config.hidden)]
            dec: list[nn.Module] = []
            for a, b in itertools.pairwise(dec_dims):
                dec += [nn.Linear(a, b), act()]
            dec += [nn.Linear(dec_dims[-1], c * h * w), nn.Unflatten(1, (c, h, w))]
        else:
            layers, ch = [], c
            for f in config.filters:
                layers += [nn.Conv2d(ch, f, 3, stride=2, padding=1), act()]
                ch = f
            layers.append(nn.Flatten())
            self.body = nn.Sequential(*layers)
            n = len(config.filters)
            gh, gw = _conv_out(h, n), _conv_out(w, n)
            body_dim = ch * gh * gw
            d = config.decoder_channels
            dec = [nn.Linear(config.latent_dim, d * gh * gw), act(), nn.Unflatten(1, (d, gh, gw))]
            ch = d
            for f in reversed(config.filters):
                if config.decoder == "transpose":
                    dec += [nn.ConvTranspose2d(ch, f, 3, stride=2, padding=1, output_padding=1), act()]
                else:
                    dec += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch, f, 3, padding=1), act()]
                ch = f
            last = nn.ConvTranspose2d if config.decoder == "transpose" else nn.Conv2d
            dec.append(last(ch, c, 3, stride=1, padding=1))
        self.body_dim = body_dim
        self.code = nn.Linear(body_dim, config.latent_dim)
        self.log_var = nn.Linear(body_dim, config.latent_dim) if config.variational else None
        self.decoder_net = nn.Sequential(*dec)

    @property
    def latent_dim(self) -> int:
        return self.config.latent_dim

    def encode_distribution(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(mu, log_var) of q(z|x); log_var is None for a plain autoencoder."""
        h = self.body(x)
        return self.code(h), (self.log_var(h) if self.log_var is not None else None)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The deterministic code: z for an autoencoder, z_mean for a VAE."""
        return self.code(self.body(x))

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        _, h, w = self.config.input_shape
        return self.decoder_net(z)[..., :h, :w]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] (sigmoid of the decoder's output)."""
        return torch.sigmoid(self.decode_logits(z))

    def forward_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        mu, log_var = self.encode_distribution(x)
        z = reparameterise(mu, log_var) if (log_var is not None and self.training) else mu
        return self.decode_logits(z), mu, log_var

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        logits, mu, log_var = self.forward_logits(x)
        return torch.sigmoid(logits), mu, log_var

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        """Eval-mode reconstructions of many images, batched."""
        was = self.training
        self.eval()
        out = torch.cat([self(x[i:i + batch_size])[0] for i in range(0, len(x), batch_size)])
        self.train(was)
        return out

    @torch.no_grad()
    def encode_all(self, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        was = self.training
        self.eval()
        out = torch.cat([self.encode(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
        self.train(was)
        return out


def build_model(config: AEConfig | str, seed: int | None = None, **overrides) -> ImageAutoencoder:
    """A fresh model from a config or a preset name; `seed` makes the initial weights repeatable."""
    if isinstance(config, str):
        config = preset(config, **overrides)
    elif overrides:
        config = config.replace(**overrides)
    if seed is None:
        return ImageAutoencoder(config)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return ImageAutoencoder(config)


MODEL_FILE, CONFIG_FILE = "model.safetensors", "model.json"


def save_model(model: ImageAutoencoder, directory: str | Path, preset_name: str | None = None,
               data: dict | None = None) -> Path:
    """Weights as safetensors and the config as JSON in `directory` (JSON written last = complete)."""
    directory = Path(directory)
    save_tensors(directory / MODEL_FILE, model.state_dict())
    write_json(directory / CONFIG_FILE, {"family": "lab-autoencoder", "preset": preset_name,
                                         "config": model.config.to_dict(), "data": data or {}})
    return directory


def load_model(directory: str | Path) -> ImageAutoencoder:
    """The model saved by `save_model` (or by `vfe lab train`) in `directory`, in eval mode."""
    directory = Path(directory)
    meta_path = directory / CONFIG_FILE
    if not meta_path.exists():
        raise FileNotFoundError(f"{meta_path} not found: give a folder written by `vfe lab train` "
                                "(it holds model.json and model.safetensors)")
    meta = read_json(meta_path)
    if meta.get("family") != "lab-autoencoder":
        raise ValueError(f"{meta_path} describes a {meta.get('family')!r} model, not a lab autoencoder")
    model = ImageAutoencoder(AEConfig.from_dict(meta["config"]))
    model.load_state_dict(load_tensors(directory / MODEL_FILE))
    return model.eval()
