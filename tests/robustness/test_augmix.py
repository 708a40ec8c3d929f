"""AugMix views on real grey (digits) and colour (photo crops) images: the operations, the mixing, the seeding."""
from __future__ import annotations

import numpy as np
import pytest
from colour_data import colour_splits

from vfe.data import load_train_test
from vfe.robustness.augmix import OPERATIONS, AugMix, augmix_images
from vfe.robustness.corruptions import REGISTRY


@pytest.fixture(scope="module")
def grey() -> np.ndarray:
    """40 digits at reduced contrast (gray levels 40..167), so that autocontrast has work to do, upscaled 4x to
    32 x 32 x 1: PIL's equalize leaves an image of fewer than 256 pixels as it is."""
    images = load_train_test("digits")[0].images[:40]
    return np.kron(images // 2 + 40, np.ones((1, 4, 4, 1), np.uint8)).astype(np.uint8)


@pytest.fixture(scope="module")
def colour() -> np.ndarray:
    """40 crops of scikit-image's photos, 32 x 32 x 3."""
    return colour_splits(n_train=10, n_test=0)["train"][0]


def test_the_operations_are_augmix_s_and_none_is_a_benchmark_corruption():
    assert list(OPERATIONS) == ["autocontrast", "equalize", "posterize", "rotate", "solarize", "shear_x", "shear_y",
                                "translate_x", "translate_y"]
    assert not set(OPERATIONS) & set(REGISTRY)  # none of the 19 corruptions the benchmark tests
    assert not set(OPERATIONS) & {"contrast", "color", "brightness", "sharpness"}  # AugMix's ImageNet-C overlaps


@pytest.mark.parametrize("name", list(OPERATIONS))
def test_each_operation_changes_grey_and_colour_images(name, grey, colour):
    from PIL import Image

    op = OPERATIONS[name]
    for images in (grey, colour):
        rng = np.random.default_rng(0)
        changed = 0
        for image in images:
            pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
            out = np.asarray(op(pil, 10, rng))
            assert out.shape == np.asarray(pil).shape and out.dtype == np.uint8
            changed += not np.array_equal(out, np.asarray(pil))
        assert changed >= len(images) // 2, f"{name} changed {changed} of {len(images)} images"


def test_views_keep_shape_and_dtype_and_change_the_images(grey, colour):
    for images in (grey, colour, grey[..., 0]):  # N x H x W x 1, N x H x W x 3, and N x H x W
        views = augmix_images(images, AugMix(), seed=0, view=0)
        assert views.shape == images.shape and views.dtype == np.uint8
        different = (views != images).reshape(len(images), -1).any(1)
        assert different.mean() > 0.9


def test_a_view_depends_on_seed_view_and_row_only(colour):
    recipe = AugMix()
    whole = augmix_images(colour, recipe, seed=3, view=1)
    in_two = np.concatenate([augmix_images(colour[:15], recipe, seed=3, view=1, first_row=0),
                             augmix_images(colour[15:], recipe, seed=3, view=1, first_row=15)])
    np.testing.assert_array_equal(whole, in_two)  # the same view whatever batches make it
    for other in (augmix_images(colour, recipe, seed=3, view=0), augmix_images(colour, recipe, seed=4, view=1),
                  augmix_images(colour, AugMix(severity=6), seed=3, view=1)):
        assert (other != whole).reshape(len(colour), -1).any(1).mean() > 0.9


def test_stronger_recipes_move_images_further(grey):
    def change(recipe: AugMix) -> float:
        return float(np.abs(augmix_images(grey, recipe, seed=0, view=0).astype(int) - grey).mean())

    assert change(AugMix(severity=1, width=1, depth=1)) < change(AugMix(severity=10, depth=3))


def test_the_key_names_every_setting_and_bad_settings_are_refused():
    keys = {AugMix().key(), AugMix(severity=4).key(), AugMix(width=2).key(), AugMix(depth=2).key(),
            AugMix(alpha=0.5).key()}
    assert len(keys) == 5 and all(",".join(OPERATIONS) in k for k in keys)
    for bad, message in (({"severity": 0}, "severity"), ({"width": 0}, "width"), ({"depth": 0}, "depth"),
                         ({"alpha": 0.0}, "alpha")):
        with pytest.raises(ValueError, match=message):
            AugMix(**bad)


@pytest.mark.parametrize("alpha, depth", [(0.3, -1), (4.0, 2)])
def test_a_view_is_the_documented_mix_of_its_chains_and_the_original(monkeypatch, grey, colour, alpha, depth):
    """Two stand-in operations, "dark" (all 0) and "light" (all 255), so each chain's image is its last operation's.
    By hand, with the draws in the reference's order from the generator of (seed, view, row): chain weights
    w ~ Dirichlet(alpha x width), mix weight m ~ Beta(alpha, alpha), then per chain its depth (1-3 when -1) and
    per step an operation; the view is round((1 - m) x + m sum_j w_j chain_j). Every operation gets the severity."""
    from PIL import Image

    from vfe.robustness import augmix

    severities = []

    def flat(value):
        def op(image, severity, rng):
            severities.append(severity)
            return Image.fromarray(np.full_like(np.asarray(image), value))
        return op

    monkeypatch.setattr(augmix, "OPERATIONS", {"dark": flat(0), "light": flat(255)})
    recipe = AugMix(severity=7, width=3, depth=depth, alpha=alpha)
    for images in (grey, colour):
        rng = np.random.default_rng([5, 1, 2])
        weights, m = rng.dirichlet([alpha] * 3), rng.beta(alpha, alpha)
        chains = 0.0
        for w in weights:
            steps = [int(rng.integers(2)) for _ in range(depth if depth > 0 else int(rng.integers(1, 4)))]
            chains += w * 255 * steps[-1]
        expected = np.clip(np.rint((1 - m) * images[2].astype(float) + m * chains), 0, 255)
        np.testing.assert_array_equal(augmix_images(images[2:3], recipe, seed=5, view=1, first_row=2)[0], expected)
    assert set(severities) == {7}
