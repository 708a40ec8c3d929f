"""Extraction on ONNX Runtime and OpenVINO (src/vfe/backbones/runtimes.py, exported.py): faithful to torch
fp32 on real images, kept apart in the feature cache, and never a failure where torch works under 'auto'."""
from __future__ import annotations

import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from vfe.backbones import create_backbone, runtimes
from vfe.backbones.exported import model_key
from vfe.backbones.precision import FAITHFUL_COSINE, min_cosine
from vfe.cli import main
from vfe.data import load_train_test
from vfe.data.types import ImageSet
from vfe.errors import VfeError
from vfe.features.cache import FeatureCache

pytest.importorskip("onnxscript")
RUNTIMES = [pytest.param(r, marks=pytest.mark.skipif(runtimes.missing_package(r) is not None,
                                                     reason=f"{runtimes.missing_package(r)} not installed"))
            for r in ("onnxruntime", "openvino")]
LITE0 = {"image_size": 64, "device": "cpu", "precision": "fp32"}


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory):
    """One feature cache for the session, so each network is exported once (into its `_models`)."""
    return tmp_path_factory.mktemp("vfe-cache")


@pytest.fixture(scope="session")
def digits() -> np.ndarray:
    """16 real grayscale images (scikit-learn's 8 x 8 digits, uint8)."""
    train, _ = load_train_test("digits")
    return train.images[:16]


@pytest.fixture(scope="session", params=RUNTIMES)
def lite0_runtime(request, cache_root):
    """The packaged ImageNet EfficientNet-Lite0 at 64 px in fp32, extracting on each runtime."""
    return create_backbone("efficientnet_lite0", runtime=request.param, model_dir=cache_root / "_models",
                           prefetch=False, **LITE0)


@pytest.mark.slow
def test_runtime_features_match_torch_fp32_on_grey_digits_and_colour_photos(lite0_runtime, lite0_small, digits,
                                                                             photos):
    assert lite0_runtime.runtime in ("onnxruntime", "openvino")  # really another runtime, not torch again
    assert lite0_runtime.runtime_check["min_cosine"] >= FAITHFUL_COSINE
    for images in (digits, photos):
        got = lite0_runtime.extract(images, progress=False)
        want = lite0_small.extract(images, progress=False)  # torch eager fp32, same weights
        assert got.shape == want.shape
        assert min_cosine(got, want) >= FAITHFUL_COSINE


@pytest.mark.slow
def test_runtime_and_precision_keep_cache_entries_apart(lite0_runtime, lite0_small, digits, cache_root):
    assert lite0_runtime.fingerprint() != lite0_small.fingerprint()
    data = ImageSet(digits, np.arange(len(digits)) % 10, [str(i) for i in range(10)], source="digits[:16]")
    cache = FeatureCache(cache_root)
    on_runtime = cache.extract(lite0_runtime, data, progress=False)
    on_torch = cache.extract(lite0_small, data, progress=False)
    assert on_runtime.key != on_torch.key
    listed = {e["key"] for e in cache.entries()}
    assert {on_runtime.key, on_torch.key} <= listed and "_models" not in listed
    assert min_cosine(on_runtime.array(), on_torch.array()) >= FAITHFUL_COSINE


@pytest.mark.slow
def test_the_exported_network_is_reused_from_disk_and_written_whole(lite0_runtime, cache_root):
    path = Path(lite0_runtime.runtime_check["model"])
    assert path.parent == cache_root / "_models" and path.suffix == ".onnx"
    assert not [f for f in path.parent.iterdir() if f.name.startswith(".")]  # no temporary file left
    stamp = path.stat().st_mtime_ns
    again = create_backbone("efficientnet_lite0", runtime=lite0_runtime.runtime, model_dir=cache_root / "_models",
                            **LITE0)
    assert again.runtime == lite0_runtime.runtime and again.runtime_check["model"] == str(path)
    assert path.stat().st_mtime_ns == stamp  # read, not exported again


def test_the_exported_file_is_named_by_weights_and_input_size():
    def key(identity, size):
        return model_key(SimpleNamespace(arch="efficientnet_lite0", weights=SimpleNamespace(identity=identity),
                                         data_config={"input_size": (3, size, size)}))

    assert key("sha256:a", 64) == key("sha256:a", 64)
    assert len({key("sha256:a", 64), key("sha256:b", 64), key("sha256:a", 112)}) == 3


@pytest.mark.slow
def test_auto_uses_the_measured_choice_and_falls_back_to_torch_silently(monkeypatch, cache_root):
    if runtimes.missing_package("openvino") is not None:
        pytest.skip("openvino not installed")
    # the packaged weights run on tf_efficientnet_lite0
    monkeypatch.setitem(runtimes.RUNTIME_CHOICES, ("tf_efficientnet_lite0", 64, "fp32"), "openvino")
    settings = {"runtime": "auto", "model_dir": cache_root / "_models", **LITE0}
    assert create_backbone("efficientnet_lite0", **settings).runtime == "openvino"
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if not installed
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fallback = create_backbone("efficientnet_lite0", **settings)
    assert fallback.runtime == "torch" and fallback.describe()["runtime"] == "torch"
    assert create_backbone("efficientnet_lite0", **{**settings, "image_size": 32}).runtime == "torch"  # not measured


def test_an_unfaithful_runtime_is_not_used(monkeypatch, cache_root):
    if runtimes.missing_package("onnxruntime") is not None:
        pytest.skip("onnxruntime not installed")
    rng = np.random.default_rng(0)

    def wrong_network(path, precision, threads):  # a runtime that computes something else than the network
        return lambda x: rng.normal(size=(len(x), 1280)).astype(np.float32)

    monkeypatch.setitem(runtimes._COMPILERS, "onnxruntime", wrong_network)
    with pytest.warns(RuntimeWarning, match="extracts with torch, not onnxruntime .*not faithful"):
        backbone = create_backbone("efficientnet_lite0", runtime="onnxruntime", model_dir=cache_root / "_models",
                                   **LITE0)
    assert backbone.runtime == "torch" and backbone.runtime_check["used"] is False


def test_a_missing_runtime_package_is_one_clear_line(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if not installed
    with pytest.raises(VfeError, match=r"needs the Python package openvino.*pip install openvino, or --runtime torch"):
        create_backbone("efficientnet_lite0", weights="none", runtime="openvino", **LITE0)
    assert main(["extract", "digits", "--runtime", "openvino", "--image-size", "64", "--weights", "none"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "pip install openvino" in err


def test_a_network_exported_once_is_copied_into_another_cache_not_exported_again(tmp_path, monkeypatch):
    """Each feature cache keeps its exported networks in its `_models`; a second cache in the same process gets a
    copy of the file (the export takes seconds), byte for byte, and extracts the same features."""
    from vfe.backbones import exported

    first = create_backbone("efficientnet_lite0", runtime="openvino", model_dir=tmp_path / "a", **LITE0)
    assert first.runtime == "openvino"

    def no_export(*_):
        raise AssertionError("exported again")

    monkeypatch.setattr(exported, "export_bytes", no_export)
    second = create_backbone("efficientnet_lite0", runtime="openvino", model_dir=tmp_path / "b", **LITE0)
    (a,), (b,) = (list((tmp_path / d).glob("*.onnx")) for d in ("a", "b"))
    assert second.runtime == "openvino" and a.name == b.name and a.read_bytes() == b.read_bytes()
    images = load_train_test("digits")[0].images[:8]
    assert np.array_equal(first.extract(images, progress=False), second.extract(images, progress=False))
