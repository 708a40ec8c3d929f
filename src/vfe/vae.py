"""The variational-autoencoder math shared by the feature VFE and the image VAEs, in one place.

    z = mu + exp(0.5 * log_var) * eps,            eps ~ N(0, I)           (reparameterisation)
    KL(q(z|x) || N(0, I)) = -0.5 * (1 + log_var - mu^2 - exp(log_var))     (per latent dimension)

Log-variances are clamped to [-30, 20] before exponentiation: exp(20) is already a standard
deviation of 2.2e4, and without a clamp a diverging encoder turns the loss into inf/NaN.
"""
from __future__ import annotations

import torch

LOG_VAR_MIN, LOG_VAR_MAX = -30.0, 20.0


def reparameterise(mu: torch.Tensor, log_var: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    log_var = log_var.clamp(LOG_VAR_MIN, LOG_VAR_MAX)
    if generator is None:  # randn_like: the same draws as randn(mu.shape), and exportable with a free batch size
        eps = torch.randn_like(mu, memory_format=torch.contiguous_format)
    else:
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
    return mu + torch.exp(0.5 * log_var) * eps


def gaussian_kl(mu: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """Element-wise KL(N(mu, exp(log_var)) || N(0, 1)); same shape as mu. Reduce as the model's docs say."""
    log_var = log_var.clamp(LOG_VAR_MIN, LOG_VAR_MAX)
    return -0.5 * (1 + log_var - mu.pow(2) - log_var.exp())
