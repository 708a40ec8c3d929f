"""Training the image autoencoders with the core loop, on a Fashion-MNIST subset.

Each model must beat the trivial mean-image baseline by a wide margin; checkpoints must restore
the exact weights, a resumed run must continue where it stopped, and early stopping must hand
back the best epoch's weights.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vfe.checkpoint import Checkpointer
from vfe.data.split import holdout_index
from vfe.lab.fit import evaluate_reconstruction, fit_autoencoder, mean_image_mse
from vfe.lab.losses import autoencoder_loss
from vfe.lab.models import build_model
from vfe.training import TrainConfig

# (preset, epochs, largest test MSE as a fraction of the mean-image baseline's). A VAE's MSE stays
# higher: its KL term trades reconstruction for a smooth latent space, and a 2-d code holds less.
BUDGETS = [("dense-ae", 12, 0.6), ("conv-ae", 5, 0.6), ("conv-ae-upsample", 4, 0.7), ("vae", 25, 0.75),
           ("conv-vae", 6, 0.75), ("beta-vae", 8, 0.75), ("denoising-ae", 6, 0.75), ("inpainting-ae", 5, 0.7)]


@pytest.mark.slow
@pytest.mark.parametrize("name, epochs, ratio", BUDGETS)
def test_each_model_trains_well_below_the_mean_image_baseline(fashion, name, epochs, ratio):
    model = build_model(name, seed=0)
    history = fit_autoencoder(model, fashion.x_train, TrainConfig(epochs=epochs, batch_size=32, lr=3e-3,
                                                                  patience=None, seed=0))
    baseline = mean_image_mse(fashion.x_train, fashion.x_test)
    test_mse = evaluate_reconstruction(model, fashion.x_test)["mse"]  # a denoiser / in-painter: corrupted input
    assert test_mse < ratio * baseline, (name, test_mse, baseline)
    assert history.series("val_mse")[-1] < 0.8 * history.series("val_mse")[0]


def _config(**changes) -> TrainConfig:
    return TrainConfig(**{"epochs": 4, "batch_size": 32, "lr": 3e-3, "patience": None, "seed": 0, **changes})


@pytest.mark.slow
def test_best_checkpoints_restore_the_exact_weights(fashion, tmp_path):
    model = build_model("conv-ae", seed=0)
    history = fit_autoencoder(model, fashion.x_train[:200], _config(), checkpoint_dir=tmp_path, keep=2)
    checkpointer = Checkpointer(tmp_path, keep=2)
    assert 1 <= len(checkpointer.best_checkpoints()) <= 2
    fresh = build_model("conv-ae", seed=9)
    assert checkpointer.restore_best(fresh) == history.best_epoch
    for (k, a), b in zip(model.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    x = fashion.x_test[:16]
    assert torch.equal(model.reconstruct(x), fresh.reconstruct(x))


def test_a_resumed_run_continues_from_its_last_checkpoint_exactly(fashion, tmp_path):
    x = fashion.x_train[:200]
    straight = build_model("dense-ae", seed=0)
    fit_autoencoder(straight, x, _config(epochs=6), checkpoint_dir=tmp_path / "straight")

    interrupted = build_model("dense-ae", seed=0)
    first = fit_autoencoder(interrupted, x, _config(epochs=3), checkpoint_dir=tmp_path / "resumed")
    assert len(first.records) == 3
    resumed = build_model("dense-ae", seed=7)  # a new process: the checkpoint replaces these weights
    history = fit_autoencoder(resumed, x, _config(epochs=6), checkpoint_dir=tmp_path / "resumed")
    assert [r["epoch"] for r in history.records] == [1, 2, 3, 4, 5, 6]
    assert history.records[:3] == first.records
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=k)


def test_early_stopping_hands_back_the_best_epoch(fashion):
    # 48 images, a wide dense model and a large step: it over-fits and the validation loss turns up
    model = build_model("dense-ae", seed=0, hidden=(512,), latent_dim=64)
    images = torch.cat([fashion.x_train[:48], fashion.x_test[:200]])
    history = fit_autoencoder(model, images, _config(epochs=200, batch_size=8, lr=3e-3, patience=4),
                              val_fraction=200 / 248)
    val_losses = history.series("val_loss")
    assert history.stopped_early and len(val_losses) < 200
    assert history.best_epoch == int(np.argmin(val_losses)) + 1 < len(val_losses)
    with torch.no_grad():
        loss_now, _ = autoencoder_loss(model.eval(), _held_out(images, 200 / 248))
    assert loss_now.item() == pytest.approx(min(val_losses), rel=1e-5)


def _held_out(images: torch.Tensor, fraction: float) -> tuple[torch.Tensor]:
    """The validation images `fit_autoencoder` holds out (the same seeded split)."""
    
    _, val_idx = holdout_index(len(images), fraction, seed=0)
    return (images[val_idx],)


def test_images_of_the_wrong_shape_are_refused(fashion):
    with pytest.raises(ValueError, match="expects"):
        fit_autoencoder(build_model("conv-ae", input_shape=(1, 8, 8)), fashion.x_train[:10])
