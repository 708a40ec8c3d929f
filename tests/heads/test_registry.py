"""The head registry: one entry per head, and everything that lists or validates heads derives from it."""
from __future__ import annotations

import subprocess
import sys

import pytest

from vfe.errors import PipelineFileError, SettingsError
from vfe.heads import (
    REGISTRY,
    AutoencoderHead,
    Head,
    PriorCorrected,
    VFEHead,
    benchmark_heads,
    check_params,
    expand_heads,
    feature_heads,
    head_class,
    head_class_of,
    head_names,
    is_augmented,
    make_head,
    params_for,
    spec,
)
from vfe.heads.registry import _parameter_types


@pytest.mark.parametrize("name", head_names())
def test_every_name_resolves_to_a_head_class_that_accepts_its_preset(name):
    cls = head_class_of(name)
    assert issubclass(cls, Head) and head_class(cls.__name__) is cls
    head = make_head(name)
    assert type(head) is cls and head.inputs == spec(name).inputs
    assert {k: head.get_params()[k] for k in spec(name).params} == dict(spec(name).params)


def test_presets_keep_their_settings_and_inherit_their_base():
    assert {n: (s.base, dict(s.params), s.augmented) for n, s in REGISTRY.items() if s.base} == {
        "vfe-mean": ("vfe", {"classifier_input": "mean", "predict_mode": "mean"}, False),
        "vfe-k8": ("vfe", {"predict_mode": "average", "n_samples": 8}, False),
        "vfe-aug": ("vfe", {}, True),
        "dae": ("ae", {"noise_std": 0.3}, False),
        "dae-aug": ("ae", {}, True),
        "linear-augmix": ("linear", {}, False),
        "linear-augmix-js": ("linear", {"js_weight": 12.0}, False),
        "vfe-augmix": ("vfe", {}, False),
        "vfe-augmix-js": ("vfe", {"js_weight": 12.0}, False)}
    assert head_class_of("vfe-k8") is VFEHead and head_class_of("dae-aug") is AutoencoderHead
    assert {n: dict(REGISTRY[n].params) for n in ("linear-ens", "vfe-ens")} == {"linear-ens": {"base": "linear"},
                                                                              "vfe-ens": {"base": "vfe"}}
    assert is_augmented("dae-aug") and not is_augmented("ae")
    with pytest.raises(TypeError):
        REGISTRY["dae"].params["noise_std"] = 0.0  # a preset's settings cannot drift at run time


def test_presets_take_their_base_heads_user_params_then_their_own():
    given = {"vfe": {"latent_dim": 32, "epochs": 3}, "vfe-k8": {"epochs": 5}, "linear": {"lr": 0.1}}
    assert params_for("vfe-k8", given) == {"latent_dim": 32, "epochs": 5}
    assert params_for("vfe-mean", given) == {"latent_dim": 32, "epochs": 3}
    assert params_for("vfe", given) == {"latent_dim": 32, "epochs": 3}
    assert params_for("pca", given) == {}
    assert make_head("vfe-k8", **params_for("vfe-k8", given)).get_params()["n_samples"] == 8


def test_all_is_the_benchmark_and_leaves_out_svm_finetune_and_vfe_ens_with_reasons():
    assert expand_heads(["all"]) == benchmark_heads()
    assert benchmark_heads()[:2] == ["linear", "vfe"]
    assert set(benchmark_heads()) == set(head_names()) - {"svm", "finetune", "vfe-ens"}
    assert {"t3a", "linear-tts", "linear-ens"} <= set(benchmark_heads())
    with pytest.raises(SettingsError, match="'vfe-ens' is not part of the feature benchmark: fits 5 VFE heads"):
        expand_heads(["vfe-ens"])
    assert expand_heads(["vib", "all", "linear"]) == ["vib", *[h for h in benchmark_heads() if h != "vib"]]
    with pytest.raises(SettingsError, match="'svm' is not part of the feature benchmark: .*small data sets"):
        expand_heads(["all", "svm"])
    with pytest.raises(SettingsError, match="'finetune' .*: trains the backbone on images: use `vfe fit --head finetune`"):
        expand_heads(["finetune"])
    assert "finetune" not in feature_heads() and "svm" in feature_heads()


def test_unknown_names_are_settings_errors_naming_the_choices():
    for call in (spec, make_head, head_class_of, is_augmented, lambda n: params_for(n, {}),
                 lambda n: expand_heads([n])):
        with pytest.raises(SettingsError, match="unknown head 'vfe-median'; available: .*vfe-mean"):
            call("vfe-median")
    with pytest.raises(PipelineFileError, match="unknown head class 'Mystery'"):
        head_class("Mystery")
    assert head_class("PriorCorrected") is PriorCorrected


def test_check_params_names_the_head_the_bad_key_and_the_valid_keys():
    check_params("vfe-k8", {"latent_dim": 64, "beta": 2, "vae_patience": None, "vae_schedule": "cosine"})
    with pytest.raises(SettingsError, match=r"head 'vfe' has no parameter 'latnt_dim' \(did you mean "
                                            r"'latent_dim'\?\); valid parameters: .*beta, .*latent_dim"):
        check_params("vfe", {"latnt_dim": 64})
    with pytest.raises(SettingsError, match="head 'linear': parameter 'epochs' must be int, got '30' "
                                            r"\(str\); valid parameters: batch_size, "):
        check_params("linear", {"epochs": "30"})
    bad = [("pca", {"latent_dim": 2.5}), ("linear", {"epochs": True}), ("vfe", {"verbose": 1}),
           ("vfe", {"vae_patience": "none"}), ("svm", {"C": None}), ("finetune", {"image_size": [64]})]
    for name, params in bad:
        with pytest.raises(SettingsError, match=f"head {name!r}: parameter"):
            check_params(name, params)
    with pytest.raises(SettingsError, match="no parameter 'lattent_dim'"):
        make_head("dae", lattent_dim=4)  # make_head checks before it builds anything


def test_listing_heads_does_not_load_torch():
    code = ("import sys, vfe.heads.registry as r, vfe.heads as h; r.head_names(); r.expand_heads(['all']); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_users_parameter_overrides_a_presets_own_and_reaches_the_fitted_head(digits_features):
    """--head-param vfe-k8.n_samples=3 must win over the preset's 8, and a parameter given for the base head
    ("linear") must reach its presets as the run's fit stage builds them (fit_one)."""
    from vfe.experiment.fit import fit_one

    assert make_head("vfe-k8", n_samples=3).get_params()["n_samples"] == 3
    assert make_head("vfe-k8").get_params()["n_samples"] == 8
    assert make_head("dae", noise_std=0.1).get_params()["noise_std"] == 0.1
    assert make_head("linear-augmix-js", js_weight=1.0).get_params()["js_weight"] == 1.0
    assert make_head("linear-ens", base="vfe").get_params()["base"] == "vfe"
    X, _, y, _ = digits_features
    given = {"linear": {"epochs": 2, "patience": None}, "linear-augmix-js": {"js_weight": 3.0}}
    model, _ = fit_one("linear-augmix-js", 4, X[:200], y[:200], given)
    assert {k: model.get_params()[k] for k in ("epochs", "js_weight", "random_state")} == {
        "epochs": 2, "js_weight": 3.0, "random_state": 4}
    assert len(model.history_["records"]) == 2  # two epochs were trained, not the default 30


def test_every_numeric_parameter_of_every_head_has_a_declared_range_that_its_defaults_meet():
    """Each head class declares its parameters' ranges and choices (`_parameter_constraints`, scikit-learn's
    form): every int or float parameter has one, none names a parameter the class lacks, and the class's
    defaults and each preset's settings are within them."""
    for name, entry in REGISTRY.items():
        constraints = head_class_of(name)._parameter_constraints
        kinds = _parameter_types(entry.target)
        numeric = {k for k, kind in kinds.items() if kind and ({int, float} & set(kind))}
        assert numeric <= set(constraints) <= set(kinds), name
        check_params(name, {**make_head(name).get_params(deep=False), **entry.params})


@pytest.mark.parametrize("name, params, message", [
    ("vfe", {"predict_mode": "sampel"}, "'predict_mode' parameter of head 'vfe' must be a str among {"),
    ("vfe-k8", {"n_samples": 0}, r"'n_samples' parameter of head 'vfe-k8' must be an int in the range \[1, inf\)"),
    ("vfe", {"vae_schedule": "cos"}, "'vae_schedule' parameter of head 'vfe' must be a str among {.*} or None"),
    ("vfe", {"classifier_input": "median"}, "'classifier_input' .* must be a str among"),
    ("vfe", {"beta": -1.0}, r"'beta' .* must be a float in the range \[0.0, inf\)"),
    ("ae", {"ae_precision": "fp16"}, "'ae_precision' parameter of head 'ae' must be a str among"),
    ("dae", {"noise_std": -0.1}, "'noise_std' parameter of head 'dae'"),
    ("vib", {"predict_mode": "max"}, "'predict_mode' parameter of head 'vib' must be a str among"),
    ("pca", {"latent_dim": 0}, r"'latent_dim' parameter of head 'pca' must be an int in the range \[1, inf\)"),
    ("linear", {"dropout": 1.0}, r"'dropout' parameter of head 'linear' must be a float in the range \[0.0, 1.0\)"),
    ("linear", {"lr": 0}, r"'lr' .* must be a float in the range \(0.0, inf\)"),
    ("linear", {"patience": 0}, r"'patience' .* must be an int in the range \[1, inf\) or None"),
    ("linear", {"validation_fraction": 1}, "'validation_fraction'"),
    ("t3a", {"filter_k": 0}, r"'filter_k' .* must be an int in the range \[1, inf\) or a int among {-1}"),
    ("t3a", {"temperature": 0.0}, r"'temperature' .* \(0.0, inf\) or None"),
    ("linear-tts", {"min_batch_size": 1}, r"'min_batch_size' .* \[2, inf\)"),
    ("linear-ens", {"base": "lineer"}, "'base' parameter of head 'linear-ens' must be a str among"),
    ("linear-ens", {"n_members": 0}, "'n_members'"),
    ("svm", {"C": 0}, r"'C' parameter of head 'svm' must be a float in the range \(0.0, inf\)"),
    ("finetune", {"zoom": 1.5}, "'zoom'"),
    ("finetune", {"image_size": 4}, r"'image_size' .* \[8, 1024\] or None"),
    ("linear-augmix-js", {"js_weight": -1.0}, "'js_weight'"),
])
def test_a_value_out_of_range_is_refused_naming_the_valid_ones(name, params, message):
    """check_params (run before any work by every command) refuses it in one line; make_head leaves it to the
    head's own fit, whose messages some callers rely on."""
    with pytest.raises(SettingsError, match=message) as err:
        check_params(name, params)
    assert "\n" not in str(err.value)
    make_head(name, **params)
