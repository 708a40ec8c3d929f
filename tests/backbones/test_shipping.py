"""The one rule by which a backbone travels (src/vfe/backbones/shipping.py): pickled or shipped, it is rebuilt
with the same fingerprint and the same features; its weights travel on the CPU whatever device it runs on here;
its precision and runtime travel named, and a runtime the receiver cannot build is one line naming it."""
from __future__ import annotations

import pickle
import sys
from dataclasses import replace
from itertools import chain

import numpy as np
import pytest
import torch

from vfe.backbones import Backbone, create_backbone
from vfe.backbones.runtimes import RuntimeUnavailableError
from vfe.backbones.shipping import rebuild, shippable
from vfe.data import load_dataset


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    """16 of scikit-learn's 8 x 8 grayscale digits as uint8 images."""
    return np.asarray(load_dataset("digits", split="test").images[:16])


def test_a_pickled_backbone_is_rebuilt_with_the_same_fingerprint_and_features(lite0_small, photos, digits):
    clone = pickle.loads(pickle.dumps(lite0_small))
    assert type(clone) is Backbone and clone.model is not lite0_small.model
    assert clone.fingerprint() == lite0_small.fingerprint() and clone.device.type == "cpu"
    for images in (photos, digits):
        assert clone.extract(images, progress=False).tobytes() == lite0_small.extract(images, progress=False).tobytes()


def test_the_precision_chosen_travels_named_and_is_not_decided_again(photos):
    chosen = create_backbone("efficientnet_lite0", image_size=32, device="cpu", jit=False)  # precision "auto"
    shipped = shippable(chosen)
    assert chosen.settings.precision == "auto" and shipped.precision == chosen.precision == "fp32"
    assert shipped.runtime == chosen.runtime == "torch"
    rebuilt = rebuild(shipped)
    assert rebuilt.settings.precision == "fp32" and rebuilt.fingerprint() == chosen.fingerprint()
    assert rebuilt.extract(photos, progress=False).tobytes() == chosen.extract(photos, progress=False).tobytes()


def test_a_runtime_the_receiver_cannot_build_is_one_line_naming_it(lite0_small, monkeypatch):
    shipped = shippable(lite0_small)
    on_openvino = replace(shipped, settings=replace(shipped.settings, runtime="openvino"))
    monkeypatch.setitem(sys.modules, "openvino", None)  # the receiver has no OpenVINO
    with pytest.raises(RuntimeUnavailableError, match=r"needs the Python package openvino") as err:
        rebuild(on_openvino)
    assert "\n" not in str(err.value)


def test_an_attack_rebuild_builds_no_fast_path_and_differentiates_the_same_network(photos):
    traced = create_backbone("efficientnet_lite0", weights="none", image_size=32, device="cpu", precision="fp32")
    for_attacks = rebuild(shippable(traced), fast_path=False)
    assert traced.settings.jit and not for_attacks.settings.jit and for_attacks.runtime == "torch"
    x = torch.from_numpy(photos[:4]).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        assert torch.equal(for_attacks(x), traced(x))


def test_weights_on_a_gpu_travel_as_cpu_copies_and_stay_on_the_gpu_here(lite0_small, photos, monkeypatch):
    """No GPU here: the network's tensors are made to report cuda:0 (as on a GPU driver); every tensor that
    travels must be a CPU copy, and the network here must keep its own."""
    backbone = create_backbone("efficientnet_lite0", image_size=32, device="cpu", jit=False, precision="fp32")
    expected = backbone.extract(photos, progress=False)
    real = torch.Tensor.device
    monkeypatch.setattr(torch.Tensor, "device", property(
        lambda t: torch.device("cuda", 0) if getattr(t, "on_gpu", False) else real.__get__(t)))
    tensors = list(chain(backbone.model.parameters(), backbone.model.buffers()))
    for tensor in tensors:
        tensor.on_gpu = True
    shipped = shippable(backbone)
    assert shipped.tensors() and all(t.device.type == "cpu" for t in shipped.tensors())
    assert all(t.device.type == "cuda" for t in tensors)  # this process's network is left where it is
    clone = pickle.loads(pickle.dumps(backbone))
    assert all(t.device.type == "cpu" for t in chain(clone.model.parameters(), clone.model.buffers()))
    monkeypatch.undo()
    assert clone.extract(photos, progress=False).tobytes() == expected.tobytes()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_cuda_backbone_is_pickled_with_cpu_weights_and_rebuilt_on_the_cpu(photos):
    on_gpu = create_backbone("efficientnet_lite0", image_size=64, device="cuda", jit=False, precision="fp32")
    assert all(t.device.type == "cpu" for t in shippable(on_gpu).tensors())
    assert all(p.is_cuda for p in on_gpu.model.parameters())
    clone = pickle.loads(pickle.dumps(on_gpu))
    assert clone.device.type == "cpu" and clone.fingerprint() == on_gpu.fingerprint()
    np.testing.assert_allclose(clone.extract(photos, progress=False), on_gpu.extract(photos, progress=False),
                               rtol=1e-3, atol=1e-3)
