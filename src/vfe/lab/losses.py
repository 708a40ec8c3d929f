"""The losses of the lab's image models, with every reduction written out.

Plain, denoising and in-painting autoencoders (`variational=False`):
    loss = mean over images, channels and pixels of the per-pixel error
         = F.mse_loss(x_hat, x)                       for recon_loss="mse"
         = F.binary_cross_entropy(x_hat, x)           for recon_loss="bce"
    (the Keras reduction of "mse" / "binary_crossentropy" on images).

Variational autoencoders (`variational=True`), the negative ELBO per image:
    loss = mean over images of [ sum over channels and pixels of the per-pixel error
                                 + beta * sum over latent dimensions of KL(q(z|x) || N(0, I)) ]
    Summing the error over pixels keeps the two terms on the scale of one image; averaging it over
    pixels instead would weigh the KL 784 times more on 28 x 28 images and collapse the code.

Every model also reports, each epoch, `mse` (mean squared error per pixel against the clean
image, comparable across models and with the mean-image baseline) and, for VAEs, `kl` (per image,
summed over latent dimensions). The decoder's logits are used for BCE (`binary_cross_entropy_with_logits`),
which stays finite where a sigmoid saturates at 0 or 1.

Denoising / in-painting models see a corrupted input and are scored against the clean image. A
training batch `(x,)` is corrupted afresh each time; a validation batch comes as a fixed
`(corrupted, clean)` pair (`validation_pair`), so early stopping compares like with like.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vfe.lab.models import AEConfig
from vfe.vae import gaussian_kl


def add_noise(x: torch.Tensor, noise_factor: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """clip(x + noise_factor * N(0, 1), 0, 1): the denoising autoencoder's input."""
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return (x + noise_factor * noise).clamp(0.0, 1.0)


def square_masks(n: int, height: int, width: int, size: int,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Boolean N x 1 x H x W masks, each True on one `size` x `size` square placed uniformly inside."""
    if size > min(height, width):
        raise ValueError(f"mask size {size} does not fit in {height} x {width} images")
    top = torch.randint(0, height - size + 1, (n,), generator=generator)
    left = torch.randint(0, width - size + 1, (n,), generator=generator)
    rows = torch.arange(height)[None, :]
    cols = torch.arange(width)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < top[:, None] + size)
    in_cols = (cols >= left[:, None]) & (cols < left[:, None] + size)
    return (in_rows[:, :, None] & in_cols[:, None, :])[:, None]


def apply_mask(x: torch.Tensor, mask: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
    """The image with the masked pixels (all channels) set to `fill`: what the in-painter is given."""
    return x.masked_fill(mask.to(x.device).expand_as(x), fill)


def corrupt(x: torch.Tensor, config: AEConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """The input a model with this config is trained on: masked, then noised, or `x` itself."""
    if config.mask_size > 0:
        _, _, h, w = x.shape
        x = apply_mask(x, square_masks(len(x), h, w, config.mask_size, generator))
    if config.noise_factor > 0:
        x = add_noise(x, config.noise_factor, generator)
    return x


def validation_pair(x: torch.Tensor, config: AEConfig, seed: int) -> tuple[torch.Tensor, ...]:
    """Fixed validation tensors: `(x,)` for a plain model, `(corrupt(x), x)` for a denoiser/in-painter."""
    if config.noise_factor <= 0 and config.mask_size <= 0:
        return (x,)
    return corrupt(x, config, torch.Generator().manual_seed(seed)), x


def pixel_error(logits: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-element reconstruction error (no reduction) from decoder logits."""
    if kind == "mse":
        return (torch.sigmoid(logits) - target).pow(2)
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    raise ValueError(f"unknown reconstruction loss {kind!r}; use 'mse' or 'bce'")


def autoencoder_loss(model: nn.Module, batch) -> tuple[torch.Tensor, dict[str, float]]:
    """The training-loop loss of any `ImageAutoencoder` (reductions in the module docstring)."""
    config: AEConfig = model.config
    if len(batch) == 1:
        (target,) = batch
        inputs = corrupt(target, config) if model.training else target
    else:
        inputs, target = batch
    logits, mu, log_var = model.forward_logits(inputs)
    error = pixel_error(logits, target, config.recon_loss)
    metrics = {"mse": float((torch.sigmoid(logits.detach()) - target).pow(2).mean())}
    if log_var is None:
        return error.mean(), metrics
    recon = error.flatten(1).sum(1).mean()
    kl = gaussian_kl(mu, log_var).sum(1).mean()
    metrics.update(recon=float(recon.detach()), kl=float(kl.detach()))
    return recon + config.beta * kl, metrics


def psnr(x: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image (peak 1), over the pixels in `mask` when given."""
    err = (x - reference).pow(2)
    if mask is None:
        mse = err.flatten(1).mean(1)
    else:
        m = mask.to(err.dtype).expand_as(err)
        mse = (err * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))
