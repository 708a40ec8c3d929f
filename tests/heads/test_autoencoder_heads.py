"""ae / dae heads: deterministic feature autoencoders (the VFE's architecture) with a classifier on the code."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vfe.heads import AutoencoderHead, LinearHead, head_class, make_head

SMALL = {"encoder_units": 64, "latent_dim": 16, "decoder_units": 64, "ae_epochs": 60, "ae_batch_size": 256,
         "ae_lr": 3e-3, "ae_patience": 10, "batch_size": 256, "lr": 2e-2}


def _round_trip(head):
    tensors, meta = head.export_state()
    return head_class(meta["head"]).from_state(tensors, meta)


def _noisy(X: np.ndarray, seed: int, std: float = 0.3) -> np.ndarray:
    """Digits pixels under Gaussian noise, clipped to the pixel range: the 'corrupted image' features."""
    rng = np.random.default_rng(seed)
    return np.clip(X + rng.normal(0, std, X.shape), 0, 1).astype(np.float32)


def _reconstruct(head, X: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return head.bottleneck_(torch.from_numpy(X)).numpy()


@pytest.mark.slow
def test_ae_learns_round_trips_and_flags_unfamiliar_inputs(digits_features):
    X_train, X_test, y_train, y_test = digits_features
    head = make_head("ae", **SMALL).fit(X_train, y_train)
    assert head.score(X_test, y_test) > 0.85  # chance is 0.1
    assert head.history_["bottleneck"]["best_epoch"] is not None
    loaded = _round_trip(head)
    np.testing.assert_array_equal(loaded.predict_proba(X_test), head.predict_proba(X_test))
    np.testing.assert_array_equal(loaded.reconstruction_error(X_test), head.reconstruction_error(X_test))
    assert head.transform(X_test).shape == (len(X_test), 16)
    uniform = np.random.default_rng(0).random(X_test.shape, dtype=np.float32)
    assert np.median(head.reconstruction_error(uniform)) > 3 * np.median(head.reconstruction_error(X_test))


@pytest.mark.slow
def test_dae_preset_trains_with_feature_noise(digits_features):
    X_train, X_test, y_train, y_test = digits_features
    head = make_head("dae", **SMALL)
    assert isinstance(head, AutoencoderHead) and head.noise_std > 0
    head.fit(X_train, y_train)
    assert head.score(X_test, y_test) > 0.85
    clean = make_head("ae", **SMALL).fit(X_train, y_train)
    assert not np.allclose(head.transform(X_test), clean.transform(X_test))


@pytest.mark.slow
def test_dae_on_corrupted_views_denoises_better_than_a_plain_ae(digits_features):
    X_train, X_test, y_train, _ = digits_features
    plain = make_head("ae", **SMALL).fit(X_train, y_train)
    denoising = make_head("dae-aug", **SMALL).fit(X_train, y_train, X_aug=_noisy(X_train, seed=1))
    noisy_test = _noisy(X_test, seed=2)

    def error_to_clean(head):
        return float(((_reconstruct(head, noisy_test) - X_test) ** 2).mean())

    assert error_to_clean(denoising) < 0.9 * error_to_clean(plain)


def test_augmented_features_are_checked(digits_features):
    X_train, _, y_train, _ = digits_features
    with pytest.raises(ValueError, match="row-aligned"):
        AutoencoderHead(**SMALL).fit(X_train, y_train, X_aug=X_train[:-1])
    with pytest.raises(ValueError, match="noise_std"):
        AutoencoderHead(noise_std=-1.0).fit(X_train, y_train)
    with pytest.raises(TypeError, match="LinearHead does not train on augmented"):
        LinearHead().fit(X_train, y_train, X_aug=X_train)
