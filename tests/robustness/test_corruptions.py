"""`corrupt` and `corruption_grid` on real Fashion-MNIST images: shapes, seeds, severities, grey input."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from vfe.robustness.corruptions import REGISTRY, apply, corrupt, corruption_grid, textures

SEEDED = [n for n in REGISTRY if n not in {"defocus_blur", "zoom_blur", "brightness", "contrast", "pixelate",
                                           "jpeg_compression", "gaussian_blur", "saturate"}]
# mean change from the clean image grows with severity for these (Fashion-MNIST, CIFAR-10-C values)
MONOTONE = ["gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "defocus_blur", "gaussian_blur",
            "zoom_blur", "snow", "fog", "brightness", "contrast", "pixelate", "jpeg_compression"]


@pytest.fixture(scope="module")
def images(fashion_mnist) -> np.ndarray:
    """200 Fashion-MNIST test images, 28 x 28 x 1 uint8."""
    return fashion_mnist[1].images


def mean_change(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(int) - b.astype(int)).mean())


@pytest.mark.slow
def test_every_corruption_and_severity_keeps_shape_and_dtype_and_changes_the_images(images):
    for name in REGISTRY:
        for severity in (1, 2, 3, 4, 5):
            out = corrupt(images, name, severity)
            assert out.shape == images.shape and out.dtype == np.uint8, (name, severity)
        # saturation cannot change a grey image until severity 4 adds a fixed amount to it
        assert mean_change(out, images) > 2.0, name
    assert corrupt(images[..., 0], "fog", 3).shape == images.shape[:3]  # N x H x W in, N x H x W out


@pytest.mark.parametrize("name", SEEDED)
def test_the_seed_fixes_the_random_draws(images, name):
    a, b = corrupt(images[:50], name, 3, seed=7), corrupt(images[:50], name, 3, seed=7)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, corrupt(images[:50], name, 3, seed=8))


@pytest.mark.parametrize("name", MONOTONE)
def test_higher_severity_corrupts_more(images, name):
    changes = [mean_change(corrupt(images, name, s, seed=0), images) for s in (1, 2, 3, 4, 5)]
    assert np.all(np.diff(changes) > 0), changes


def test_large_batches_go_through_in_chunks_with_the_same_result(images, monkeypatch):
    whole = {name: corrupt(images, name, 3, seed=1) for name in ("contrast", "glass_blur")}
    monkeypatch.setattr(apply, "CHUNK_VALUES", 7 * 28 * 28)  # 7 images per chunk
    np.testing.assert_array_equal(corrupt(images, "contrast", 3, seed=1), whole["contrast"])
    chunked = corrupt(images, "glass_blur", 3, seed=1)  # other draws per image, the same amount of blur
    np.testing.assert_array_equal(chunked, corrupt(images, "glass_blur", 3, seed=1))
    assert mean_change(chunked, images) == pytest.approx(mean_change(whole["glass_blur"], images), rel=0.05)


def test_grey_images_get_full_strength_noise_and_colour_corruptions_give_their_luma():
    grey = np.full((64, 28, 28, 1), 128, np.uint8)
    noisy = corrupt(grey, "gaussian_noise", 5, params="cifar").astype(float)
    assert np.std(noisy) == pytest.approx(0.10 * 255, rel=0.05)  # CIFAR-10-C sigma 0.10, not averaged down
    rgb = np.repeat(grey, 3, axis=-1)
    for name in ("frost", "spatter", "saturate"):
        expected = cv2.cvtColor(corrupt(rgb, name, 5, seed=3).reshape(-1, 28, 3), cv2.COLOR_RGB2GRAY)
        np.testing.assert_array_equal(corrupt(grey, name, 5, seed=3), expected.reshape(grey.shape))


def test_auto_uses_cifar_values_up_to_64_px_and_imagenet_values_above():
    grey = np.full((32, 64, 64, 1), 128, np.uint8)
    assert np.std(corrupt(grey, "gaussian_noise", 1).astype(float)) == pytest.approx(0.04 * 255, rel=0.05)
    bigger = np.full((4, 96, 96, 1), 128, np.uint8)
    assert np.std(corrupt(bigger, "gaussian_noise", 1).astype(float)) == pytest.approx(0.08 * 255, rel=0.05)


@pytest.mark.parametrize("shape", [(3, 8, 8), (3, 20, 36, 3), (2, 65, 40, 1)])
@pytest.mark.parametrize("params", ["cifar", "imagenet"])
def test_small_and_non_square_images_work_with_either_table(shape, params):
    x = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    for name in REGISTRY:
        assert corrupt(x, name, 5, params=params).shape == shape


def test_bad_arguments_are_named():
    x = np.zeros((2, 28, 28), np.uint8)
    with pytest.raises(TypeError, match="uint8"):
        corrupt(x.astype(np.float32), "fog", 1)
    with pytest.raises(ValueError, match="shape"):
        corrupt(np.zeros((2, 28, 28, 2), np.uint8), "fog", 1)
    with pytest.raises(ValueError, match="unknown corruption 'rain'"):
        corrupt(x, "rain", 1)
    with pytest.raises(ValueError, match="severity"):
        corrupt(x, "fog", 6)
    with pytest.raises(ValueError, match="params="):
        corrupt(x, "fog", 1, params="mnist")


def test_frost_uses_the_shipped_photos_and_says_when_they_are_missing(monkeypatch, tmp_path):
    """The photos are vfe's package data (no imagecorruptions needed); a broken install names the fix."""
    assert sorted(p.name for p in textures.frost_folder().glob("frost*")) == list(textures.FROST_FILES[:5])
    monkeypatch.setattr(textures, "__file__", str(tmp_path / "textures.py"))
    textures.frost_textures.cache_clear()
    with pytest.raises(FileNotFoundError, match="reinstall vfe"):
        corrupt(np.zeros((1, 28, 28, 3), np.uint8), "frost", 1)
    textures.frost_textures.cache_clear()


def test_corruption_grid_shows_the_clean_image_then_each_severity(images):
    names = ["gaussian_noise", "frost"]
    fig = corruption_grid(images[0], names=names, severities=(1, 5), seed=4)
    axes = np.array(fig.axes).reshape(2, 3)
    np.testing.assert_array_equal(axes[0, 0].images[0].get_array(), images[0, ..., 0])
    np.testing.assert_array_equal(axes[1, 2].images[0].get_array(), corrupt(images[:1], "frost", 5, seed=4)[0, ..., 0])
    assert [ax.get_ylabel() for ax in axes[:, 0]] == names
    assert "cifar parameters" in fig.get_suptitle()
