"""VFE variants: the registry's presets (z_mean classifier, K-sample averaging, augmented training)
and training on features of corrupted views with the benchmark's held-out families untouched."""
from __future__ import annotations

import numpy as np
import pytest

from vfe.heads import VFEHead, head_class, head_names, is_augmented, make_head

SMALL_VFE = {"encoder_units": 64, "latent_dim": 16, "decoder_units": 64, "vae_epochs": 40, "vae_batch_size": 256,
             "vae_lr": 3e-3, "vae_patience": 10, "epochs": 30, "batch_size": 256, "lr": 2e-2}


def _noisy(X: np.ndarray, seed: int, std: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(X + rng.normal(0, std, X.shape), 0, 1).astype(np.float32)


def _spread(head, X: np.ndarray, **predict_params) -> float:
    """How much predicted probabilities move between two sampling seeds."""
    first, second = (head.set_params(random_state=s, **predict_params).predict_proba(X) for s in (0, 7))
    return float(np.abs(first - second).mean())


def test_presets_are_vfe_settings_that_user_parameters_override():
    assert {"vfe-mean", "vfe-k8", "vfe-aug", "dae", "dae-aug"} <= set(head_names())
    mean = make_head("vfe-mean")
    assert isinstance(mean, VFEHead)
    assert (mean.classifier_input, mean.predict_mode) == ("mean", "mean")
    k8 = make_head("vfe-k8", latent_dim=32)
    assert (k8.predict_mode, k8.n_samples, k8.latent_dim) == ("average", 8, 32)
    assert make_head("vfe-k8", n_samples=3).n_samples == 3
    assert is_augmented("vfe-aug") and not is_augmented("vfe") and not is_augmented("vfe-k8")
    with pytest.raises(ValueError, match="available: .*vfe-mean"):
        make_head("vfe-median")


@pytest.mark.slow
def test_mean_path_is_deterministic_and_k_sample_average_is_steadier(digits_features):
    X_train, X_test, y_train, y_test = digits_features
    mean = make_head("vfe-mean", **SMALL_VFE).fit(X_train, y_train)
    assert mean.score(X_test, y_test) > 0.85
    assert _spread(mean, X_test) == 0.0
    tensors, meta = mean.export_state()
    np.testing.assert_array_equal(head_class(meta["head"]).from_state(tensors, meta).predict_proba(X_test),
                                  mean.predict_proba(X_test))
    sampled = make_head("vfe", **SMALL_VFE).fit(X_train, y_train)
    assert _spread(sampled, X_test, predict_mode="average", n_samples=8) < 0.6 * _spread(
        sampled, X_test, predict_mode="sample")


def test_split_keeps_corrupted_views_out_of_the_early_stopping_set(digits_features):
    X_train, _, y_train, _ = digits_features
    X_aug = X_train + 100.0  # recognisable rows
    head = VFEHead(validation_fraction=0.2)
    (X_fit, y_fit), (X_val, _) = head._split(X_train, y_train, X_aug)
    n_fit = len(X_train) - len(X_val)
    assert len(X_fit) == 2 * n_fit and np.all(X_val < 100)
    assert np.all(X_fit[n_fit:] >= 100) and np.array_equal(y_fit[:n_fit], y_fit[n_fit:])
    np.testing.assert_array_equal(X_fit[n_fit:] - 100.0, X_fit[:n_fit])  # each view beside its clean row


@pytest.mark.slow
def test_vfe_trained_on_noisy_views_is_more_robust_to_noise(digits_features):
    X_train, X_test, y_train, y_test = digits_features
    clean = make_head("vfe", **SMALL_VFE).fit(X_train, y_train)
    augmented = make_head("vfe-aug", **SMALL_VFE).fit(X_train, y_train, X_aug=_noisy(X_train, seed=1, std=0.3))
    noisy_test = _noisy(X_test, seed=2, std=0.4)
    assert augmented.score(noisy_test, y_test) > clean.score(noisy_test, y_test) + 0.04
    assert augmented.score(X_test, y_test) > 0.85


def test_corrupted_views_come_from_the_training_family_only(tmp_path, monkeypatch):
    from sklearn.datasets import load_digits

    from vfe.backbones import create_backbone
    from vfe.data.types import ImageSet
    from vfe.experiment import augment
    from vfe.features.cache import FeatureCache
    from vfe.features.source import BackboneFeatures
    from vfe.robustness.corruptions.registry import families

    digits = load_digits()
    data = ImageSet((digits.images[:80] * (255 / 16)).round().astype(np.uint8), digits.target[:80],
                    [str(c) for c in range(10)], source="digits:first80")
    backbone = create_backbone("efficientnet_lite0", weights="none", image_size=32, jit=False)
    cache = FeatureCache(tmp_path / "cache")
    calls = []

    def recording_corrupt(images, name, severity, **kwargs):
        calls.append((name, severity, len(images)))
        return real_corrupt(images, name, severity, **kwargs)

    real_corrupt = augment.corrupt
    monkeypatch.setattr(augment, "corrupt", recording_corrupt)
    X_aug, info = augment.augmented_features(BackboneFeatures(cache, backbone, progress=False), data, severities=(1, 3, 5))
    X = cache.extract(backbone, data, progress=False).array()
    assert X_aug.shape == X.shape and not np.allclose(X_aug, X)
    assert sum(n for *_, n in calls) == len(data)  # one corrupted view per image
    assert {name for name, _, _ in calls} <= set(info["train_corruptions"])
    assert {name for name, _, _ in calls} <= set(families()["noise"])
    assert {s for _, s, _ in calls} <= {1, 3, 5}
    assert info["train_family"] == "noise" and set(info["held_out_families"]) == {"blur", "weather", "digital"}
    calls.clear()
    X_again, _ = augment.augmented_features(BackboneFeatures(cache, backbone, progress=False), data, severities=(1, 3, 5))
    assert calls == [] and np.array_equal(X_again, X_aug)  # the second time comes from the cache
