"""VIBHead: the supervised deep variational information bottleneck (Alemi et al. 2017) on digits."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vfe.heads import VIBHead, head_class, make_head
from vfe.heads.vib import vib_loss

SMALL = {"encoder_units": 64, "latent_dim": 16, "epochs": 60, "patience": 10}


def _round_trip(head):
    tensors, meta = head.export_state()
    return head_class(meta["head"]).from_state(tensors, meta)


def test_vib_learns_and_round_trips(digits_features):
    X_train, X_test, y_train, y_test = digits_features
    head = make_head("vib", **SMALL).fit(X_train, y_train)
    assert head.score(X_test, y_test) > 0.9  # chance is 0.1
    assert {"ce", "kl", "val_acc"} <= set(head.history_["records"][-1])
    loaded = _round_trip(head)
    np.testing.assert_array_equal(loaded.predict_proba(X_test), head.predict_proba(X_test))
    np.testing.assert_array_equal(loaded.transform(X_test), head.transform(X_test))


def test_loss_is_cross_entropy_plus_beta_times_kl_summed_over_latent_dims():
    torch.manual_seed(0)
    module = VIBHead(encoder_units=8, latent_dim=4)._build(6, 3).eval()
    x, y = torch.randn(5, 6), torch.tensor([0, 1, 2, 0, 1])
    with torch.no_grad():
        torch.manual_seed(1)
        loss, parts = vib_loss(0.5)(module, (x, y))
        mu, log_var = module.encoder(x)
        torch.manual_seed(1)
        z = mu + torch.exp(0.5 * log_var) * torch.randn(mu.shape)
        kl = (-0.5 * (1 + log_var - mu**2 - log_var.exp())).sum(1).mean()
        torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(module.head(z), y) + 0.5 * kl)
    assert parts["kl"] == pytest.approx(float(kl), rel=1e-5)


@pytest.mark.slow
def test_larger_beta_squeezes_the_code(digits_features):
    X_train, _, y_train, _ = digits_features
    kl = {beta: VIBHead(beta=beta, **SMALL).fit(X_train, y_train).history_["records"][-1]["kl"]
          for beta in (1e-4, 1e-1)}
    assert kl[1e-1] < 0.5 * kl[1e-4]


def test_predictions_average_samples_and_are_repeatable(digits_features):
    X_train, X_test, y_train, _ = digits_features
    head = VIBHead(**SMALL).fit(X_train, y_train)
    np.testing.assert_array_equal(head.predict_proba(X_test), head.predict_proba(X_test))

    def spread(**mode) -> float:
        """How much the probabilities move between two sampling seeds."""
        first, second = (head.set_params(random_state=seed, **mode).predict_proba(X_test) for seed in (0, 5))
        return float(np.abs(first - second).mean())

    assert spread(predict_mode="average", n_samples=12) < 0.5 * spread(predict_mode="sample")
    averaged = head.set_params(predict_mode="average", n_samples=12, random_state=0).predict_proba(X_test)
    with torch.no_grad():
        probs = head.probability_module()(torch.from_numpy(X_test), n_samples=64).numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    assert (probs.argmax(1) == averaged.argmax(1)).mean() > 0.97
