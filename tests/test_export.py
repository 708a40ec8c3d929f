"""`vfe export`: one ONNX file whose outputs match `vfe predict`, checked with ONNX Runtime on real images."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from colour_data import write_colour_folder

from vfe.api import fit_pipeline
from vfe.cli import main
from vfe.data import load_train_test
from vfe.errors import SettingsError
from vfe.export import export_onnx
from vfe.pipeline import Pipeline


def run_onnx(path, images: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path)).run(None, {"images": images})[0]


@pytest.fixture(scope="module")
def colour_vfe(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    folder = write_colour_folder(tmp / "photos", n_train=15, n_test=5)
    pipe, _ = fit_pipeline(str(folder), head="vfe", image_size=32, head_params={"vae_epochs": 20},
                           cache_dir=str(tmp / "cache"), progress=False)
    path = tmp / "photos-vfe.safetensors"
    pipe.save(path)
    return tmp, folder, path


@pytest.mark.slow
def test_an_rgb_vfe_pipeline_exports_its_z_mean_path(colour_vfe, capsys):
    tmp, folder, path = colour_vfe
    out = tmp / "photos-vfe.onnx"
    assert main(["export", str(path), "--out", str(out), "--input-shape", "32", "32", "3"]) == 0
    _, test = load_train_test(str(folder))
    pipe = Pipeline.load(path)
    pipe.head.set_params(predict_mode="mean")  # what the export computes: the classifier on z_mean
    expected = pipe.predict_proba(test.images)
    got = run_onnx(out, test.images)
    assert got.shape == (len(test), 4) and np.allclose(got.sum(1), 1, atol=1e-5)
    assert np.abs(got - expected).max() < 1e-4 and np.array_equal(got.argmax(1), expected.argmax(1))
    meta = json.loads({p.key: p.value for p in onnx.load(str(out)).metadata_props}["vfe"])
    assert meta["class_names"] == ["astronaut", "chelsea", "coffee", "rocket"] and meta["latent"] == "mean"
    assert main(["export", str(path), "--out", str(out)]) == 2  # never overwritten unless asked
    assert "--overwrite" in capsys.readouterr().err


@pytest.mark.slow
def test_averaging_k_draws_is_random_per_call_and_matches_torch_averaging(colour_vfe):
    tmp, folder, path = colour_vfe
    out = export_onnx(path, tmp / "k16.onnx", input_shape=(32, 32, 3), samples=16)
    _, test = load_train_test(str(folder))
    session = ort.InferenceSession(str(out))  # draws differ from call to call within a session
    calls = [session.run(None, {"images": test.images})[0] for _ in range(32)]
    assert not np.array_equal(calls[0], calls[1]) and np.allclose(calls[0].sum(1), 1, atol=1e-5)
    # 32 calls x 16 draws against torch's average of 4,096 draws: the same distribution of z, so the
    # averaged probabilities agree up to Monte Carlo error (about 0.5 / sqrt(512) = 0.02 at worst per entry)
    pipe = Pipeline.load(path)
    pipe.head.set_params(predict_mode="average", n_samples=4096)
    expected = pipe.predict_proba(test.images)
    assert np.abs(np.mean(calls, 0) - expected).mean() < 0.02


@pytest.mark.slow
def test_a_grayscale_linear_pipeline_at_its_native_size(tmp_path):
    pipe, _ = fit_pipeline("digits", head="linear", image_size=32, n_train=300, cache_dir=str(tmp_path / "c"),
                           progress=False)
    out = export_onnx(pipe, tmp_path / "digits.onnx", input_shape=(8, 8, 1))
    _, test = load_train_test("digits")
    images = test.images[:50]
    assert np.abs(run_onnx(out, images) - pipe.predict_proba(images)).max() < 1e-4
    with pytest.raises(SettingsError, match="does not sample"):
        export_onnx(pipe, tmp_path / "x.onnx", samples=4)
    with pytest.raises(SettingsError, match="channels 1 or 3"):
        export_onnx(pipe, tmp_path / "x.onnx", input_shape=(8, 8, 2))


@pytest.mark.slow
def test_a_damaged_pipeline_is_refused_before_anything_is_exported(colour_vfe, capsys):
    """Export loads through Pipeline.load, which verifies every tensor's checksum first."""
    tmp, _, path = colour_vfe
    damaged = tmp / "damaged.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # the last byte of the last tensor
    damaged.write_bytes(bytes(data))
    out = tmp / "damaged.onnx"
    assert main(["export", str(damaged), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"vfe export: error: {damaged}: checksum mismatch in tensor ") and err.count("\n") == 1
    assert not out.exists()


@pytest.mark.slow
def test_a_loaded_pipeline_predicts_on_openvino_as_on_torch(colour_vfe, tmp_path, monkeypatch):
    """vfe predict / evaluate load a pipeline on the runtime asked for (auto by default: OpenVINO for
    EfficientNet-Lite0 at 112 px): its backbone's network exported once, the same classes as torch."""
    _, folder, path = colour_vfe
    monkeypatch.setenv("VFE_CACHE", str(tmp_path))  # where the exported network is kept
    _, test = load_train_test(str(folder))
    on_torch = Pipeline.load(path, runtime="torch")
    on_openvino = Pipeline.load(path, runtime="openvino")
    assert on_torch.backbone.runtime == "torch" and on_openvino.backbone.runtime == "openvino"
    assert len(list((tmp_path / "_models").glob("*.onnx"))) == 1
    for pipe in (on_torch, on_openvino):
        pipe.head.set_params(predict_mode="mean")
    expected, got = on_torch.predict_proba(test.images), on_openvino.predict_proba(test.images)
    assert np.abs(got - expected).max() < 1e-3 and np.array_equal(got.argmax(1), expected.argmax(1))
    assert Pipeline.load(path).backbone.runtime == "torch"  # auto: 32 px has no measured faster runtime
