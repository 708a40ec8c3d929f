"""The lab's losses: the KL term, the reparameterisation's gradient, the documented reductions, no NaN."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal, kl_divergence

from vfe.lab.losses import add_noise, apply_mask, autoencoder_loss, psnr, square_masks
from vfe.lab.models import build_model
from vfe.vae import gaussian_kl, reparameterise


def test_kl_matches_the_closed_form_and_torch_distributions():
    # KL(N(mu, s^2) || N(0, 1)) = (s^2 + mu^2 - 1 - ln s^2) / 2; mu = 1, s^2 = 4: (4 + 1 - 1 - ln 4) / 2
    kl = gaussian_kl(torch.tensor([1.0]), torch.tensor([math.log(4.0)]))
    assert kl.item() == pytest.approx((4 - math.log(4)) / 2, rel=1e-6)
    assert gaussian_kl(torch.zeros(3), torch.zeros(3)).abs().max().item() == 0.0  # q = prior
    mu, log_var = torch.randn(64, 8), torch.randn(64, 8) * 2
    expected = kl_divergence(Normal(mu, (0.5 * log_var).exp()), Normal(0.0, 1.0))
    torch.testing.assert_close(gaussian_kl(mu, log_var), expected, rtol=1e-5, atol=1e-6)


def test_reparameterisation_gradient_is_the_pathwise_derivative():
    mu = torch.tensor([0.3, -1.2], requires_grad=True)
    log_var = torch.tensor([0.5, -2.0], requires_grad=True)
    z = reparameterise(mu, log_var, torch.Generator().manual_seed(0))
    eps = ((z - mu) / (0.5 * log_var).exp()).detach()
    z.sum().backward()
    torch.testing.assert_close(mu.grad, torch.ones(2))  # dz/dmu = 1
    torch.testing.assert_close(log_var.grad, 0.5 * (0.5 * log_var.detach()).exp() * eps)  # dz/dlogvar


def test_reparameterisation_gives_unbiased_gradients_of_an_expectation():
    # E[z^2] = mu^2 + exp(log_var): d/dmu = 2 mu, d/dlog_var = exp(log_var)
    mu = torch.full((200_000,), 0.7, requires_grad=True)
    log_var = torch.full((200_000,), -0.4, requires_grad=True)
    reparameterise(mu, log_var, torch.Generator().manual_seed(1)).pow(2).mean().backward()
    # the mean over samples puts 1/n in each element's gradient: their sums are the Monte-Carlo estimates
    assert mu.grad.sum().item() == pytest.approx(2 * 0.7, abs=0.02)
    assert log_var.grad.sum().item() == pytest.approx(math.exp(-0.4), abs=0.02)


def _images(n: int = 6) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.rand(n, 1, 28, 28)


@pytest.mark.parametrize("recon_loss", ["mse", "bce"])
def test_plain_autoencoder_loss_is_the_mean_over_images_and_pixels(recon_loss):
    model = build_model("conv-ae", seed=0, recon_loss=recon_loss).eval()
    x = _images()
    loss, metrics = autoencoder_loss(model, (x,))
    x_hat = model(x)[0]
    expected = F.mse_loss(x_hat, x) if recon_loss == "mse" else F.binary_cross_entropy(x_hat, x)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert metrics["mse"] == pytest.approx(F.mse_loss(x_hat, x).item(), rel=1e-5)


@pytest.mark.parametrize("recon_loss", ["mse", "bce"])
def test_vae_loss_sums_over_pixels_and_latents_and_averages_over_images(recon_loss):
    model = build_model("vae", seed=0, recon_loss=recon_loss, beta=2.5).eval()  # eval: decodes z = mu
    x = _images()
    loss, metrics = autoencoder_loss(model, (x,))
    mu, log_var = model.encode_distribution(x)
    x_hat = model.decode(mu)
    per_pixel = (x_hat - x).pow(2) if recon_loss == "mse" else F.binary_cross_entropy(x_hat, x, reduction="none")
    recon = per_pixel.sum((1, 2, 3)).mean()
    kl = kl_divergence(Normal(mu, (0.5 * log_var).exp()), Normal(0.0, 1.0)).sum(1).mean()
    assert metrics["recon"] == pytest.approx(recon.item(), rel=1e-4)
    assert metrics["kl"] == pytest.approx(kl.item(), rel=1e-4)
    assert loss.item() == pytest.approx((recon + 2.5 * kl).item(), rel=1e-4)


def test_a_denoiser_is_scored_against_the_clean_image():
    model = build_model("denoising-ae", seed=0).eval()
    x = _images()
    noisy = add_noise(x, 0.4, torch.Generator().manual_seed(0))
    loss, _ = autoencoder_loss(model, (noisy, x))
    assert loss.item() == pytest.approx(F.mse_loss(model(noisy)[0], x).item(), rel=1e-5)


@pytest.mark.parametrize("log_var_bias", [-1e4, -80.0, 80.0, 1e4])
@pytest.mark.parametrize("recon_loss", ["mse", "bce"])
def test_extreme_log_variances_give_finite_losses_and_gradients(log_var_bias, recon_loss):
    model = build_model("vae", seed=0, recon_loss=recon_loss).train()  # train mode: z is sampled
    with torch.no_grad():
        model.log_var.bias.fill_(log_var_bias)
        model.code.bias.fill_(1e3)  # a far-off mean as well
    loss, metrics = autoencoder_loss(model, (_images(),))
    loss.backward()
    assert math.isfinite(loss.item()) and all(math.isfinite(v) for v in metrics.values())
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_noise_is_clipped_and_masks_are_squares_of_the_given_size():
    x = _images(50)
    noisy = add_noise(x, 0.4, torch.Generator().manual_seed(0))
    assert noisy.min() >= 0 and noisy.max() <= 1 and (noisy - x).abs().mean() > 0.1
    masks = square_masks(50, 28, 28, 10, torch.Generator().manual_seed(0))
    assert masks.shape == (50, 1, 28, 28) and (masks.flatten(1).sum(1) == 100).all()
    rows, cols = masks[:, 0].any(2), masks[:, 0].any(1)
    assert (rows.sum(1) == 10).all() and (cols.sum(1) == 10).all()  # one 10 x 10 block each
    assert (apply_mask(x, masks)[masks.expand_as(x)] == 0).all()
    with pytest.raises(ValueError, match="does not fit"):
        square_masks(1, 8, 8, 10)


def test_psnr_in_decibels_with_and_without_a_mask():
    ref = torch.zeros(2, 1, 4, 4)
    x = torch.full_like(ref, 0.1)  # MSE 0.01 -> 20 dB
    torch.testing.assert_close(psnr(x, ref), torch.full((2,), 20.0))
    mask = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    mask[:, :, :2, :2] = True
    y = x.clone()
    y[~mask] = 0.0  # errors only inside the mask
    torch.testing.assert_close(psnr(y, ref, mask), torch.full((2,), 20.0))
