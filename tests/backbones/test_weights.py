"""Where weights come from (src/vfe/backbones/weights.py): packaged, local files, timm's cache, random."""
from __future__ import annotations

import numpy as np
import pytest
import skimage.data
import timm
import torch
from safetensors.torch import save_file

from vfe.backbones import WeightsNotFoundError, create_backbone, load_state_dict_file
from vfe.backbones.registry import PACKAGED
from vfe.backbones.weights import map_by_position, packaged_file


def _x01(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255


@pytest.mark.slow
def test_packaged_lite0_and_its_imagenet_head_label_chelsea_and_coffee():
    bb = create_backbone("efficientnet_lite0", image_size=224, device="cpu", precision="fp32", jit=False)
    assert bb.weights.kind == "packaged" and bb.arch == "tf_efficientnet_lite0"
    assert bb.data_config["input_size"] == (3, 224, 224)
    with torch.no_grad():
        cat = bb.classifier_logits(_x01(skimage.data.chelsea())).argmax(1).item()
        coffee = bb.classifier_logits(_x01(skimage.data.coffee())).argmax(1).item()
    assert (cat, coffee) == (285, 967)  # Egyptian cat, espresso


def test_map_by_position_names_the_first_tensor_whose_shape_differs():
    spec = PACKAGED["efficientnet_lite0"]
    path = packaged_file(spec)
    state = load_state_dict_file(path)
    assert len(state) == spec.n_tensors
    model = timm.create_model(spec.arch)
    keys = list(state)
    swapped = dict(state)
    swapped[keys[0]], swapped[keys[1]] = state[keys[1]], state[keys[0]]  # same count, wrong order
    swapped = {k: swapped[k] for k in keys}
    with pytest.raises(ValueError, match=f"tensor {keys[0]} has shape"):
        map_by_position(swapped, model, path)
    with pytest.raises(ValueError, match="cannot map by position"):
        map_by_position(dict(list(state.items())[:-1]), model, path)


@pytest.fixture(scope="module")
def densenet_source():
    """A DenseNet121 with weights of its own (seed 123, not vfe's seed) and trained-looking BN statistics."""
    torch.manual_seed(123)
    model = timm.create_model("densenet121").eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 2.0)
    return model


@pytest.mark.slow
def test_densenet121_from_a_safetensors_file_gives_the_source_models_features(tmp_path, densenet_source, photos):
    path = tmp_path / "densenet121.safetensors"
    save_file({k: v.contiguous() for k, v in densenet_source.state_dict().items()}, str(path))
    bb = create_backbone("densenet121", weights=str(path), image_size=64, device="cpu", precision="fp32", jit=False)
    assert bb.weights.kind == "file" and bb.has_classifier and bb.feature_dim == 1024
    x01 = torch.from_numpy(photos[:4]).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        want = densenet_source.forward_head(densenet_source.forward_features(bb.normalise(x01)), pre_logits=True)
    np.testing.assert_allclose(bb.extract(photos[:4], progress=False), want.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_densenet121_with_random_weights_is_seeded_and_headless(photos):
    first = create_backbone("densenet121", weights="none", image_size=32, device="cpu", precision="fp32", jit=False)
    second = create_backbone("densenet121", weights="none", image_size=32, device="cpu", precision="fp32", jit=False)
    np.testing.assert_array_equal(first.extract(photos[:3], progress=False), second.extract(photos[:3], progress=False))
    assert first.fingerprint() == second.fingerprint()
    with pytest.raises(ValueError, match="no trained classifier"):
        first.classifier_logits(torch.rand(1, 3, 32, 32))


def test_torch_checkpoint_is_read_without_unpickling_objects(tmp_path):
    model = timm.create_model("test_efficientnet")
    plain = tmp_path / "plain.pth"
    torch.save({"state_dict": model.state_dict(), "epoch": 3}, plain)  # nested, as training scripts save
    loaded = load_state_dict_file(plain)
    assert set(loaded) == set(model.state_dict())
    for key, value in loaded.items():
        torch.testing.assert_close(value, model.state_dict()[key], rtol=0, atol=0)
    evil = tmp_path / "evil.pth"
    torch.save({"w": torch.zeros(1), "obj": _Unsafe()}, evil)
    with pytest.raises(ValueError, match="refused to load"):
        load_state_dict_file(evil)


class _Unsafe:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_file_of_another_architecture_is_rejected_with_the_reason(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file(timm.create_model("test_efficientnet").state_dict(), str(path))
    with pytest.raises(ValueError, match="does not fit timm model 'test_resnet'"):
        create_backbone("test_resnet", weights=str(path), device="cpu")


def test_timm_weights_are_found_in_the_hugging_face_cache_offline(tmp_path, monkeypatch):
    import huggingface_hub.constants

    cfg = timm.models.get_pretrained_cfg("test_efficientnet")
    repo = cfg.hf_hub_id
    snapshot = tmp_path / f"models--{repo.replace('/', '--')}" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (tmp_path / f"models--{repo.replace('/', '--')}" / "refs").mkdir()
    (tmp_path / f"models--{repo.replace('/', '--')}" / "refs" / "main").write_text("0" * 40)
    torch.manual_seed(7)
    saved = timm.create_model("test_efficientnet").state_dict()
    save_file(saved, str(snapshot / "model.safetensors"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    bb = create_backbone("test_efficientnet", weights="timm", device="cpu", precision="fp32", jit=False)
    assert bb.weights.kind == "timm" and str(snapshot) in bb.weights.source
    for key, value in bb.model.state_dict().items():
        torch.testing.assert_close(value, saved[key])


def test_missing_weights_offline_say_how_to_provide_them(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError, match="--weights PATH") as err:
        create_backbone("test_efficientnet", weights="default", device="cpu")
    assert "empty-hub-cache" in str(err.value) and "--weights none" in str(err.value)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="unknown backbone 'efficientnet_lite9'"):
        create_backbone("efficientnet_lite9", weights="none")
    with pytest.raises(ValueError, match="weights='imagenet'"):
        create_backbone("test_efficientnet", weights="imagenet")
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        create_backbone("test_efficientnet", weights="/nonexistent/w.safetensors")
    with pytest.raises(ValueError, match="unknown extraction setting"):
        create_backbone("test_efficientnet", weights="none", batchsize=8)
    with pytest.raises(ValueError, match="precision='int8'"):
        create_backbone("test_efficientnet", weights="none", precision="int8")
