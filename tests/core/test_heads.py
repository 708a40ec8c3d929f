"""The reference heads (linear baseline, VFE) as scikit-learn estimators on real data (digits)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from vfe.heads import LinearHead, VFEHead, head_class, make_head
from vfe.heads.vfe import FeatureVAE, vae_loss
from vfe.vae import gaussian_kl

SMALL_VFE = {"encoder_units": 64, "latent_dim": 16, "decoder_units": 64, "vae_epochs": 60,
             "vae_batch_size": 128, "vae_patience": 10, "epochs": 40}


def _round_trip(head):
    tensors, meta = head.export_state()
    return head_class(meta["head"]).from_state(tensors, meta)


def test_linear_head_learns_and_round_trips(digits_features):
    X_train, X_test, y_train, y_test = digits_features
    head = LinearHead(random_state=0).fit(X_train, y_train)
    assert head.score(X_test, y_test) > 0.85  # chance is 0.1
    assert head.history_["records"] and head.history_["best_epoch"] is not None
    np.testing.assert_array_equal(_round_trip(head).predict_proba(X_test), head.predict_proba(X_test))


def test_vfe_reference_defaults_match_the_design_table():
    p = VFEHead().get_params()
    assert (p["encoder_units"], p["latent_dim"], p["decoder_units"]) == (256, 256, 512)
    assert (p["recon_weight"], p["beta"], p["dropout"], p["vae_batch_size"]) == (1000.0, 1.0, 0.3, 128)
    assert p["classifier_input"] == "sample" and p["predict_mode"] == "sample"
    vae = FeatureVAE(1024, 256, 256, 512)
    batchnorms = [m.num_features for m in vae.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    assert batchnorms == [256, 512]
    assert vae.encoder.z_mean.out_features == vae.encoder.z_log_var.out_features == 256


def test_vfe_loss_is_1000_mse_plus_elementwise_mean_kl():
    torch.manual_seed(0)
    vae = FeatureVAE(32, 16, 8, 16).eval()
    x = torch.rand(10, 32)
    torch.manual_seed(1)
    loss, parts = vae_loss(1000.0, 1.0)(vae, (x,))
    torch.manual_seed(1)
    recon, mu, log_var = vae(x)
    kl = (-0.5 * (1 + log_var - mu**2 - log_var.exp())).mean()
    expected = 1000 * ((recon - x) ** 2).mean() + kl
    torch.testing.assert_close(loss, expected)
    assert parts["kl"] == pytest.approx(float(kl.detach()), rel=1e-5)


def test_gaussian_kl_closed_form_and_extremes():
    mu, log_var = torch.tensor([1.0, 0.0]), torch.tensor([0.0, np.log(4.0)])
    # KL(N(1,1)||N(0,1)) = 0.5; KL(N(0,4)||N(0,1)) = 0.5 * (4 - 1 - ln 4)
    torch.testing.assert_close(gaussian_kl(mu, log_var), torch.tensor([0.5, 0.5 * (3 - np.log(4.0))]))
    assert torch.isfinite(gaussian_kl(torch.zeros(2), torch.tensor([-1e4, 1e4]))).all()


@pytest.mark.slow
def test_vfe_head_learns_predicts_in_every_mode_and_round_trips(digits_features):
    X_train, X_test, y_train, y_test = digits_features
    head = VFEHead(random_state=0, **SMALL_VFE).fit(X_train, y_train)
    assert head.score(X_test, y_test) > 0.8
    assert set(head.history_) == {"vae", "classifier"}
    vae_losses = [r["val_loss"] for r in head.history_["vae"]["records"]]
    assert min(vae_losses) < 0.5 * vae_losses[0]  # the VAE really trained
    assert head.transform(X_test).shape == (len(X_test), 16)

    p1, p2 = head.predict_proba(X_test), head.predict_proba(X_test)
    np.testing.assert_array_equal(p1, p2)  # a sampled prediction is repeatable for a given random_state
    mean = clone(head).set_params(predict_mode="mean")
    mean.__dict__.update({k: v for k, v in head.__dict__.items() if k.endswith("_")})
    averaged = clone(head).set_params(predict_mode="average", n_samples=16)
    averaged.__dict__.update({k: v for k, v in head.__dict__.items() if k.endswith("_")})
    for variant in (mean, averaged):
        probs = variant.predict_proba(X_test)
        np.testing.assert_allclose(probs.sum(1), 1, rtol=1e-5)
        assert (probs.argmax(1) == y_test).mean() > 0.8
    # averaging K samples is closer to the mean code's prediction than one sample is
    p_mean = mean.predict_proba(X_test)
    assert np.abs(averaged.predict_proba(X_test) - p_mean).mean() < np.abs(p1 - p_mean).mean()

    loaded = _round_trip(head)
    np.testing.assert_array_equal(loaded.predict_proba(X_test), p1)
    np.testing.assert_array_equal(loaded.transform(X_test), head.transform(X_test))
    assert np.all(head.reconstruction_error(X_test) >= 0) and np.all(np.isfinite(head.negative_elbo(X_test)))


def test_heads_work_inside_scikit_learn_pipelines_with_string_labels(digits_features):
    X_train, _, y_train, _ = digits_features
    names = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])
    pipe = make_pipeline(StandardScaler(), make_head("linear", epochs=15, lr=1e-2, random_state=0))
    scores = cross_val_score(pipe, X_train, names[y_train], cv=3)
    assert scores.min() > 0.85
    assert set(pipe.fit(X_train, names[y_train]).predict(X_train[:20])) <= set(names)


def test_bad_input_gets_clear_errors(digits_features):
    X_train, _, y_train, _ = digits_features
    with pytest.raises(ValueError, match="unknown head"):
        make_head("nope")
    with pytest.raises(ValueError, match="at least 2 classes"):
        LinearHead().fit(X_train[:10], np.zeros(10))
    with pytest.raises(ValueError, match="features"):
        LinearHead(epochs=1).fit(X_train, y_train).predict(X_train[:, :10])


@pytest.mark.slow
def test_vfe_head_trains_its_vae_in_bf16_as_well_as_in_fp32(digits_features):
    X_train, X_test, y_train, y_test = digits_features
    scores, val_mse = {}, {}
    for precision in ("fp32", "bf16"):
        head = VFEHead(random_state=0, vae_precision=precision, **SMALL_VFE).fit(X_train, y_train)
        scores[precision] = head.score(X_test, y_test)
        val_mse[precision] = min(r["val_mse"] for r in head.history_["vae"]["records"])
    assert scores["fp32"] > 0.8 and abs(scores["bf16"] - scores["fp32"]) < 0.05
    assert val_mse["bf16"] < 1.2 * val_mse["fp32"]
    with pytest.raises(ValueError, match="precision"):
        VFEHead(vae_precision="fp16", **SMALL_VFE).fit(X_train, y_train)
