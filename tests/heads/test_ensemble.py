"""Seed ensembles: the probabilities are the mean of members fitted independently with the documented seeds."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vfe.errors import SettingsError
from vfe.heads import LinearHead, SeedEnsemble, VFEHead, head_class, make_head
from vfe.robustness.calibration import probability_metrics

TINY_VFE = {"encoder_units": 32, "latent_dim": 8, "decoder_units": 32, "vae_epochs": 5, "epochs": 5,
            "predict_mode": "mean"}


def _round_trip(head):
    tensors, meta = head.export_state()
    return head_class(meta["head"]).from_state(tensors, meta)


def test_probabilities_are_the_mean_of_independently_fitted_members(digits_features):
    X_train, X_test, y_train, y_test = digits_features
    ensemble = make_head("linear-ens", n_members=3, base_params={"epochs": 10}, random_state=2).fit(X_train, y_train)
    members = [LinearHead(epochs=10, random_state=seed).fit(X_train, y_train) for seed in (2, 1002, 2002)]
    member_probs = [m.predict_proba(X_test) for m in members]
    np.testing.assert_allclose(ensemble.predict_proba(X_test), np.mean(member_probs, axis=0), rtol=1e-6, atol=1e-7)
    assert not np.allclose(member_probs[0], member_probs[1], atol=1e-3)  # the seeds really differ
    # averaging probabilities: the ensemble's NLL is below its members' mean NLL (Jensen)
    nll = probability_metrics(ensemble.predict_proba(X_test), y_test)["nll"]
    assert nll < np.mean([probability_metrics(p, y_test)["nll"] for p in member_probs])
    loaded = _round_trip(ensemble)
    np.testing.assert_array_equal(loaded.predict_proba(X_test), ensemble.predict_proba(X_test))
    assert loaded.history_ == ensemble.history_ and len(loaded.history_["members"]) == 3
    with torch.no_grad():
        module_probs = ensemble.probability_module()(torch.from_numpy(X_test)).numpy()
    np.testing.assert_allclose(module_probs, ensemble.predict_proba(X_test), atol=1e-6)


@pytest.mark.slow
def test_vfe_ensemble_composes(digits_features):
    X_train, X_test, y_train, _ = digits_features
    ensemble = make_head("vfe-ens", n_members=2, base_params=TINY_VFE, random_state=0).fit(X_train, y_train)
    members = [VFEHead(**TINY_VFE, random_state=seed).fit(X_train, y_train) for seed in (0, 1000)]
    expected = np.mean([m.predict_proba(X_test) for m in members], axis=0)
    np.testing.assert_allclose(ensemble.predict_proba(X_test), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(_round_trip(ensemble).predict_proba(X_test), ensemble.predict_proba(X_test))


def test_a_bad_base_or_size_is_refused_before_any_fit(digits_features):
    X_train, _, y_train, _ = digits_features
    with pytest.raises(SettingsError, match="unknown head 'lineer'"):
        SeedEnsemble(base="lineer").fit(X_train, y_train)
    with pytest.raises(ValueError, match="'finetune' takes images"):
        SeedEnsemble(base="finetune").fit(X_train, y_train)
    with pytest.raises(SettingsError, match="head 'linear' has no parameter 'epoch'"):
        SeedEnsemble(base_params={"epoch": 3}).fit(X_train, y_train)
    with pytest.raises(ValueError, match="n_members must be an integer >= 1"):
        SeedEnsemble(n_members=0).fit(X_train, y_train)
