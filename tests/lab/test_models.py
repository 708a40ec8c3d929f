"""The image autoencoders: the documented layouts, any image shape, configs that save and load exactly."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from vfe.lab.config import PRESETS, AEConfig, preset
from vfe.lab.models import build_model, load_model, save_model


def _layers(module: nn.Module, kind: type) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, kind)]


def test_conv_autoencoder_has_the_reference_layout():
    model = build_model("conv-ae")
    convs = _layers(model.body, nn.Conv2d)
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (1, 32, (3, 3), (2, 2)), (32, 64, (3, 3), (2, 2))]
    assert (model.code.in_features, model.code.out_features) == (64 * 7 * 7, 10)
    dense, *_ = _layers(model.decoder_net, nn.Linear)
    assert dense.out_features == 7 * 7 * 32
    assert [c.out_channels for c in _layers(model.decoder_net, nn.ConvTranspose2d)] == [64, 32, 1]
    upsample = build_model("conv-ae-upsample")
    assert len(_layers(upsample.decoder_net, nn.Upsample)) == 2
    assert not _layers(upsample.decoder_net, nn.ConvTranspose2d)


def test_dense_models_have_the_reference_sizes():
    ae, vae = build_model("dense-ae"), build_model("vae")
    assert [m.out_features for m in _layers(ae.body, nn.Linear)] == [64] and ae.latent_dim == 32
    assert vae.log_var is not None and vae.latent_dim == 32
    assert preset("denoising-ae").noise_factor == 0.4 and preset("beta-vae").beta == 4.0


@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize("shape", [(1, 28, 28), (1, 8, 8), (3, 32, 32), (1, 30, 30)])
def test_every_preset_reconstructs_images_of_any_shape(name, shape):
    model = build_model(name, seed=0, input_shape=shape).eval()
    x = torch.rand(3, *shape)
    recon, mu, log_var = model(x)
    assert recon.shape == x.shape and 0 <= recon.min() and recon.max() <= 1
    assert mu.shape == (3, model.latent_dim)
    assert (log_var is not None) == model.config.variational


def test_configurable_sizes_and_activation():
    model = build_model("dense-ae", hidden=(128, 64), latent_dim=5, activation="elu")
    assert [m.out_features for m in _layers(model.body, nn.Linear)] == [128, 64]
    assert model.code.out_features == 5 and _layers(model, nn.ELU)
    assert len(_layers(build_model("conv-ae", filters=(16, 32, 64)).body, nn.Conv2d)) == 3


def test_a_variational_model_samples_in_training_and_decodes_the_mean_in_eval():
    model = build_model("conv-vae", seed=0)
    x = torch.rand(4, 1, 28, 28)
    model.eval()
    torch.testing.assert_close(model(x)[0], model(x)[0])
    model.train()
    assert not torch.equal(model(x)[0], model(x)[0])


def test_save_and_load_restore_the_same_model(tmp_path):
    model = build_model("beta-vae", seed=3, latent_dim=4, activation="gelu")
    save_model(model, tmp_path / "m", preset_name="beta-vae")
    loaded = load_model(tmp_path / "m")
    assert loaded.config == model.config
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    with pytest.raises(FileNotFoundError, match="model.json"):
        load_model(tmp_path / "elsewhere")


def test_seeds_make_weights_repeatable():
    a, b, c = build_model("conv-ae", seed=1), build_model("conv-ae", seed=1), build_model("conv-ae", seed=2)
    assert torch.equal(a.code.weight, b.code.weight) and not torch.equal(a.code.weight, c.code.weight)


@pytest.mark.parametrize("field, value, message", [
    ("kind", "rnn", "kind"), ("activation", "swish2", "activation"), ("latent_dim", 0, "latent_dim"),
    ("input_shape", (2, 28, 28), "input_shape"), ("beta", -1.0, "beta")])
def test_bad_configs_are_refused_with_the_field_named(field, value, message):
    with pytest.raises(ValueError, match=message):
        AEConfig(**{field: value})
    with pytest.raises(ValueError, match="unknown model"):
        preset("conv-vae2")
