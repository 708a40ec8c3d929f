"""The severity tables against the published code: CIFAR-10-C's transcribed from hendrycks/robustness
`make_cifar_c.py`, ImageNet-C's read from the installed `imagecorruptions` source (and, for the
elastic transform it rewrote, transcribed from `make_imagenet_c.py`)."""
from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from vfe.robustness.corruptions import BENCHMARK_CORRUPTIONS, EXTRA_CORRUPTIONS, PARAMETER_SETS, REGISTRY
from vfe.robustness.corruptions.parameters import CIFAR, IMAGENET, parameter_set, severity_parameters

IMSIZE = 32
# hendrycks/robustness, ImageNet-C/create_c/make_cifar_c.py, the `c = [...]` of each function
MAKE_CIFAR_C = {
    "gaussian_noise": [0.04, 0.06, .08, .09, .10],
    "shot_noise": [500, 250, 100, 75, 50],
    "impulse_noise": [.01, .02, .03, .05, .07],
    "speckle_noise": [.06, .1, .12, .16, .2],
    "gaussian_blur": [.4, .6, 0.7, .8, 1],
    "glass_blur": [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)],
    "defocus_blur": [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)],
    "motion_blur": [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)],
    "zoom_blur": [np.arange(1, 1.06, 0.01), np.arange(1, 1.11, 0.01), np.arange(1, 1.16, 0.01),
                  np.arange(1, 1.21, 0.01), np.arange(1, 1.26, 0.01)],
    "fog": [(.2, 3), (.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)],
    "frost": [(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)],
    "snow": [(0.1, 0.2, 1, 0.6, 8, 3, 0.95),
             (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
             (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
             (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
             (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)],
    "spatter": [(0.62, 0.1, 0.7, 0.7, 0.5, 0),
                (0.65, 0.1, 0.8, 0.7, 0.5, 0),
                (0.65, 0.3, 1, 0.69, 0.5, 0),
                (0.65, 0.1, 0.7, 0.69, 0.6, 1),
                (0.65, 0.1, 0.5, 0.68, 0.6, 1)],
    "contrast": [.75, .5, .4, .3, 0.15],
    "brightness": [.05, .1, .15, .2, .3],
    "saturate": [(0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)],
    "jpeg_compression": [80, 65, 58, 50, 40],
    "pixelate": [0.95, 0.9, 0.85, 0.75, 0.65],
    "elastic_transform": [(IMSIZE * 0, IMSIZE * 0, IMSIZE * 0.08),
                          (IMSIZE * 0.05, IMSIZE * 0.2, IMSIZE * 0.07),
                          (IMSIZE * 0.08, IMSIZE * 0.06, IMSIZE * 0.06),
                          (IMSIZE * 0.1, IMSIZE * 0.04, IMSIZE * 0.05),
                          (IMSIZE * 0.1, IMSIZE * 0.03, IMSIZE * 0.03)],
}
# hendrycks/robustness, ImageNet-C/create_c/make_imagenet_c.py (imagecorruptions replaced this one)
MAKE_IMAGENET_C_ELASTIC = [(244 * 2, 244 * 0.7, 244 * 0.1),
                           (244 * 2, 244 * 0.08, 244 * 0.2),
                           (244 * 0.05, 244 * 0.01, 244 * 0.02),
                           (244 * 0.07, 244 * 0.01, 244 * 0.02),
                           (244 * 0.12, 244 * 0.01, 244 * 0.02)]


def imagecorruptions_tables() -> dict[str, list]:
    """{function: its `c = [...][severity - 1]` list}, read from imagecorruptions' source (not imported)."""
    spec = importlib.util.find_spec("imagecorruptions")
    if spec is None:
        pytest.skip("imagecorruptions is not installed (pip install -e '.[test]')")
    source = Path(next(iter(spec.submodule_search_locations))) / "corruptions.py"
    tables = {}
    for node in ast.walk(ast.parse(source.read_text())):
        if not isinstance(node, ast.FunctionDef):
            continue
        for stmt in node.body:
            if (isinstance(stmt, ast.Assign) and [getattr(t, "id", None) for t in stmt.targets] == ["c"]
                    and isinstance(stmt.value, ast.Subscript) and isinstance(stmt.value.value, ast.List)):
                expression = ast.Expression(stmt.value.value)
                tables[node.name] = eval(compile(expression, str(source), "eval"), {"np": np})  # its literal list
    return tables


def assert_same_table(ours: tuple, published: list, label: str) -> None:
    assert len(ours) == len(published) == 5, label
    for severity, (mine, theirs) in enumerate(zip(ours, published), start=1):
        np.testing.assert_allclose(np.atleast_1d(np.asarray(mine, dtype=float)),
                                   np.atleast_1d(np.asarray(theirs, dtype=float)),
                                   rtol=1e-12, err_msg=f"{label} severity {severity}")


def test_the_19_corruptions_are_named_as_published():
    assert BENCHMARK_CORRUPTIONS == (
        "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
        "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression")
    assert EXTRA_CORRUPTIONS == ("speckle_noise", "gaussian_blur", "spatter", "saturate")
    for pset in PARAMETER_SETS.values():
        assert set(pset.table) == set(REGISTRY)


def test_cifar_table_matches_make_cifar_c():
    assert set(MAKE_CIFAR_C) == set(CIFAR.table)
    for name, published in MAKE_CIFAR_C.items():
        assert_same_table(CIFAR.table[name], published, f"cifar {name}")


def test_imagenet_table_matches_imagecorruptions_and_make_imagenet_c():
    published = imagecorruptions_tables()
    assert set(published) == set(IMAGENET.table) - {"elastic_transform"}  # it rewrote elastic_transform
    for name, table in published.items():
        assert_same_table(IMAGENET.table[name], table, f"imagenet {name}")
    assert_same_table(IMAGENET.table["elastic_transform"], MAKE_IMAGENET_C_ELASTIC, "imagenet elastic_transform")


def test_auto_picks_cifar_up_to_64_px_and_imagenet_above():
    assert parameter_set("auto", 28).name == "cifar"
    assert parameter_set("auto", 64).name == "cifar"
    assert parameter_set("auto", 65).name == "imagenet"
    assert parameter_set("imagenet", 28).name == "imagenet"
    with pytest.raises(ValueError, match="params='mnist'"):
        parameter_set("mnist", 28)


def test_size_tied_parameters_scale_with_the_image_and_equal_the_published_ones_at_the_reference_size():
    assert severity_parameters(CIFAR, "elastic_transform", 2, 32) == pytest.approx(MAKE_CIFAR_C["elastic_transform"][1])
    assert severity_parameters(CIFAR, "elastic_transform", 2, 64) == pytest.approx(
        [2 * v for v in MAKE_CIFAR_C["elastic_transform"][1]])
    assert severity_parameters(IMAGENET, "elastic_transform", 5, 224) == pytest.approx(MAKE_IMAGENET_C_ELASTIC[4])
    # frost: resized by 0.2 for 32-px CIFAR, unscaled for 224-px ImageNet (as published), in proportion otherwise
    assert severity_parameters(CIFAR, "frost", 1, 32) == pytest.approx((1, 0.2, 0.2))
    assert severity_parameters(CIFAR, "frost", 1, 28) == pytest.approx((1, 0.2, 0.175))
    assert severity_parameters(IMAGENET, "frost", 3, 224) == pytest.approx((0.7, 0.7, 1.0))
    assert severity_parameters(IMAGENET, "gaussian_noise", 5, 500) == 0.38
