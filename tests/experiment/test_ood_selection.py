"""Choosing each OOD score on held-out validation data: the split, the choice, the stage's results and
the report's wording. Expectations are built by hand or with scikit-learn directly."""
from types import SimpleNamespace

import numpy as np
import pytest
from sklearn.covariance import LedoitWolf
from sklearn.metrics import roc_auc_score

import vfe.experiment.stages.ood.stage as ood_stage
from vfe.data.types import ImageSet
from vfe.experiment.stages.ood.section import ood_section
from vfe.experiment.stages.ood.settings import OODSettings
from vfe.report.document import Table
from vfe.report.narrative import what_this_says
from vfe.report.sections import Context
from vfe.robustness.detectors import mahalanobis_scorer, shrunk_precision
from vfe.robustness.ood import MahalanobisScore, select_score, validation_split


def _auroc(scores_in, scores_out):
    labels = np.r_[np.zeros(len(scores_in)), np.ones(len(scores_out))]
    return roc_auc_score(labels, np.r_[scores_in, scores_out])


def _halves(n, seed):
    """The split the stage must use, written out: a seeded permutation, its first n // 2 for validation."""
    order = np.random.default_rng(seed).permutation(n)
    return set(order[: n // 2].tolist()), set(order[n // 2:].tolist())


@pytest.mark.parametrize("n", [2, 7, 100])
def test_split_is_deterministic_disjoint_and_covers_everything(n):
    val, test = validation_split(n, seed=3)
    again_val, again_test = validation_split(n, seed=3)
    assert np.array_equal(val, again_val) and np.array_equal(test, again_test)
    assert not set(val.tolist()) & set(test.tolist())
    assert sorted(val.tolist() + test.tolist()) == list(range(n))
    assert (len(val), len(test)) == (n // 2, n - n // 2)
    if n == 100:
        assert not np.array_equal(val, validation_split(n, seed=4)[0])  # the seed matters
    with pytest.raises(ValueError):
        validation_split(1, seed=0)


def test_the_validation_best_score_is_chosen_even_when_another_wins_on_test():
    """"a" separates perfectly on validation and is reversed on test; "b" is chance on validation
    (all tied) and perfect on test. The honest choice is "a", with its poor test figure."""
    split = (np.arange(4), np.arange(4, 8))
    scores_in = {"a": np.array([0, 0, 0, 0, 1, 1, 1, 1.0]), "b": np.array([5, 5, 5, 5, 0, 1, 0, 1.0])}
    scores_out = {"a": np.array([1, 1, 1, 1, 0, 0, 0, 0.0]), "b": np.array([5, 5, 5, 5, 3, 4, 3, 4.0])}
    picked = select_score(scores_in, scores_out, split, split)
    assert picked["chosen"] == "a"
    assert picked["validation_auroc"] == {"a": 1.0, "b": 0.5}
    assert picked["test"]["a"]["auroc"] == _auroc([1, 1, 1, 1], [0, 0, 0, 0]) == 0.0
    assert picked["test"]["b"]["auroc"] == 1.0  # the test-best, not the one reported
    assert picked["test"]["a"]["fpr95"] == 1.0  # catching every OOD input flags every in-distribution one


class _StubHead:
    """A head whose scores are columns of its features: col 0 is its top-class probability, col 1 its
    reconstruction error (so the test decides every score of every image)."""

    def predict_proba(self, X):
        return np.stack([X[:, 0], 1 - X[:, 0]], 1)

    def reconstruction_error(self, X):
        return X[:, 1].copy()


def _features(n, val, out):
    """Validation half: recon separates (in 0, out 1), max softmax all tied at 0.7. Test half: recon
    is reversed, max softmax separates (in 0.95, out 0.6). Validation picks recon; test would pick msp."""
    X = np.zeros((n, 2))
    for i in range(n):
        if i in val:
            X[i] = (0.7, 1.0 if out else 0.0)
        else:
            X[i] = (0.6, 0.0) if out else (0.95, 1.0)
    return X


def test_stage_reports_the_validation_chosen_score_on_the_test_half(monkeypatch):
    n_in, n_far, data_seed = 40, 30, 11
    val_in, test_in = _halves(n_in, data_seed)
    val_far, test_far = _halves(n_far, data_seed)
    X_test = _features(n_in, val_in, out=False)
    X_far = _features(n_far, val_far, out=True)
    X_noisy = _features(n_in, val_in, out=True)  # the noisy copy of image i lives in image i's half
    X_uniform = _features(n_in, val_in, out=True)  # as many noise images as test images: the same halves
    test = ImageSet(np.zeros((n_in, 4, 4, 1), np.uint8), np.zeros(n_in, int), ["x"], source="stub")
    far = ImageSet(np.zeros((n_far, 4, 4, 1), np.uint8), np.full(n_far, -1), [], source="far stub")
    uniform = ood_stage.uniform_noise_set(test, data_seed)

    def features(images, **_):
        assert images is far or np.array_equal(images.images, uniform.images)
        return X_far if images is far else X_uniform

    monkeypatch.setattr(ood_stage, "far_ood_set", lambda dataset, like, seed: ("far", far))
    monkeypatch.setattr(ood_stage, "corrupted_features", lambda *args: X_noisy)
    rng = np.random.default_rng(0)
    X_train = np.r_[rng.normal(0.8, 0.05, (50, 2)), rng.normal(0.3, 0.05, (50, 2))]
    y_train = np.repeat([0, 1], 50)
    out = ood_stage.run_ood(features, {("vfe", 0): _StubHead()}, X_train, y_train, X_test, {}, test,
                            "stub", data_seed, "auto")

    row, chosen = out["per_head"]["vfe"]["0"], out["selection"]["per_head"]["vfe"]["0"]
    for ood_set, X_out, test_out in (("far", X_far, test_far), ("gaussian_noise_s5", X_noisy, test_in),
                                     ("uniform_noise", X_uniform, test_in)):
        assert chosen[ood_set]["chosen"] == "recon"
        recon = _auroc(X_test[sorted(test_in), 1], X_out[sorted(test_out), 1])
        msp = _auroc(-X_test[sorted(test_in), 0], -X_out[sorted(test_out), 0])
        assert (recon, msp) == (0.0, 1.0)
        assert row[f"selected_auroc_{ood_set}"] == row[f"recon_auroc_{ood_set}"] == recon
        assert row[f"msp_auroc_{ood_set}"] == msp  # kept, on the test half, but not the reported one
        assert row[f"selected_fpr95_{ood_set}"] == 1.0
    assert all(isinstance(v, float) for v in row.values())  # the summary averages every per-head value
    assert out["selection"]["n_validation"] == {"in": 20, "far": 15, "gaussian_noise_s5": 20, "uniform_noise": 20}

    # the feature baseline: whichever Mahalanobis score wins on validation, measured on the test half
    detector = MahalanobisScore().fit(X_train, y_train)
    for ood_set, X_out, val_out, test_out in (("far", X_far, val_far, test_far),
                                              ("gaussian_noise_s5", X_noisy, val_in, test_in)):
        val_auroc = {name: _auroc(detector.score(X_test, rel)[sorted(val_in)],
                                  detector.score(X_out, rel)[sorted(val_out)])
                     for name, rel in (("mahalanobis", False), ("relative_mahalanobis", True))}
        best = max(val_auroc, key=val_auroc.get)
        assert out["selection"]["feature_baselines"][ood_set]["chosen"] == best
        rel = best == "relative_mahalanobis"
        expected = _auroc(detector.score(X_test, rel)[sorted(test_in)],
                          detector.score(X_out, rel)[sorted(test_out)])
        assert out["feature_baselines"][f"selected_auroc_{ood_set}"] == pytest.approx(expected)

    # a pipeline detector's Mahalanobis (the covariance shrunk by Ledoit-Wolf, scikit-learn's estimator here) on
    # the same halves, recorded beside the choice and never chosen from
    means = np.stack([X_train[y_train == k].mean(0) for k in (0, 1)])
    centred = X_train - means[y_train]
    precision = LedoitWolf(assume_centered=True).fit(centred).precision_

    def shrunk(X):
        return np.min([np.einsum("nd,de,ne->n", X - m, precision, X - m) for m in means], axis=0)

    for ood_set, X_out, val_out, test_out in (("far", X_far, val_far, test_far),
                                              ("gaussian_noise_s5", X_noisy, val_in, test_in)):
        got = out["selection"]["detector_mahalanobis"][ood_set]
        assert got["validation_auroc"] == pytest.approx(_auroc(shrunk(X_test)[sorted(val_in)],
                                                               shrunk(X_out)[sorted(val_out)]))
        assert got["auroc"] == pytest.approx(_auroc(shrunk(X_test)[sorted(test_in)], shrunk(X_out)[sorted(test_out)]))
        assert set(got) == {"validation_auroc", "auroc", "fpr95"}


def _results(selection=True):
    stat = {"mean": 0.6, "std": 0.01, "n": 2}
    best_on_test = {"mean": 0.99, "std": 0.0, "n": 2}
    table = {"linear": {"ood:msp_auroc_digits": stat, "ood:selected_auroc_digits": stat},
             "vfe": {"ood:msp_auroc_digits": best_on_test, "ood:recon_auroc_digits": stat,
                     "ood:selected_auroc_digits": stat, "ood:selected_fpr95_digits": stat}}
    baselines = {"mahalanobis_auroc_digits": {"0": 0.69, "1": 0.71}, "selected_auroc_digits": {"0": 0.69, "1": 0.71}}
    ood = {"per_head": {}, "feature_baselines": baselines,
           "ood_sets": {"digits": {"n": 10, "source": "sklearn"}}, "n_in": 10}
    if selection:
        ood["selection"] = {"per_head": {"linear": {"0": {"digits": {"chosen": "msp"}},
                                                    "1": {"digits": {"chosen": "msp"}}},
                                         "vfe": {"0": {"digits": {"chosen": "recon"}},
                                                 "1": {"digits": {"chosen": "msp"}}}},
                            "feature_baselines": {"0": {"digits": {"chosen": "mahalanobis"}},
                                                  "1": {"digits": {"chosen": "mahalanobis"}}},
                            "n_validation": {"in": 5}, "n_test": {"in": 5}}
    else:
        table = {head: {k: v for k, v in row.items() if "selected" not in k} for head, row in table.items()}
        ood["feature_baselines"] = {"mahalanobis_auroc_digits": 0.7}  # before replicates: one number
    return {"setting": {"replicates": 2}, "summary": {"table": table}, "ood": ood}


def _text(blocks):
    parts = []
    for b in blocks:
        if isinstance(b, Table):
            parts += [b.caption, " | ".join(b.header)] + [" | ".join(map(str, r)) for r in b.rows]
        else:
            parts += getattr(b, "items", None) or [getattr(b, "text", "")]
    return "\n".join(parts)


def test_report_quotes_the_validation_chosen_score_beside_the_feature_baseline():
    results = _results()
    narrative = _text(what_this_says(results))
    assert "vfe 60.0 ± 1.0 % with the reconstruction error (replicate 0), max softmax (replicate 1) score" \
        in narrative
    assert "linear 60.0 ± 1.0 % with the max softmax score" in narrative
    # the head-free baseline is fitted on each replicate's features: mean 0.70, std of (0.69, 0.71) = 0.014
    assert "head-free Mahalanobis on the backbone features 70.0 ± 1.4 %" in narrative
    assert "99.0" not in narrative and "best" not in narrative  # vfe's test-best msp is never quoted
    section = _text(ood_section(Context(results)).blocks)
    assert "digits: AUROC (%) | 60.0 ± 1.0 | 60.0 ± 1.0 | 70.0 ± 1.4 | higher" in section
    assert "digits: score chosen on validation | max softmax | reconstruction error (replicate 0), " \
           "max softmax (replicate 1) | Mahalanobis" in section


def test_report_of_old_results_quotes_no_best_on_test_figure():
    results = _results(selection=False)
    narrative = _text(what_this_says(results))
    assert "No head's OOD figure is quoted" in narrative and "99.0" not in narrative
    section = _text(ood_section(Context(results)).blocks)
    assert "predate choosing each head's OOD score" in section


class _BatchStandardising:
    """A head that adapts to each call, like linear-tts: it standardises the rows of the call before a fixed
    linear map, so a row's probabilities depend on the other rows it is scored with."""

    classes_ = np.array([0, 1])

    def predict_proba(self, X):
        z = (X - X.mean(0)) / X.std(0)
        logits = np.c_[z[:, 0], -z[:, 0]]
        e = np.exp(logits - logits.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)


def test_an_adapting_head_scores_in_and_out_of_distribution_rows_in_one_shuffled_call():
    rng = np.random.default_rng(0)
    X_in, X_out = rng.normal(0, 1, (6, 2)), rng.normal(5, 3, (4, 2))
    head = _BatchStandardising()
    scores_in, scores_out = ood_stage.mixed_scores(head, X_in, X_out, seed=9)
    # by hand: the one call sees the 10 rows in the seeded order; each row's max-softmax score is -max p
    order = np.random.default_rng(9).permutation(10)
    joint = head.predict_proba(np.r_[X_in, X_out][order])
    by_row = np.empty(10)
    by_row[order] = -joint.max(1)
    np.testing.assert_allclose(scores_in["msp"], by_row[:6])
    np.testing.assert_allclose(scores_out["msp"], by_row[6:])
    # scored apart, the OOD rows are standardised on themselves and look like the in-distribution ones
    apart = -head.predict_proba(X_out).max(1)
    assert not np.allclose(apart, scores_out["msp"])


def test_only_heads_that_adapt_at_test_time_are_scored_mixed():
    from vfe.heads.registry import adapts_at_test_time

    assert adapts_at_test_time("t3a") and adapts_at_test_time("linear-tts")
    assert not any(adapts_at_test_time(h) for h in ("linear", "vfe", "linear-augmix", "linear+bn"))


def test_run_stage_splits_each_replicate_by_its_own_seed_not_the_data_seed(monkeypatch):
    """Features laid out by the replicate's halves (seed 11): recon separates validation, msp the test half.
    Split by the data seed (0) instead, neither test-half figure would be exactly 0 or 1."""
    n_in, n_far, seed = 40, 30, 11
    val_in, val_far = _halves(n_in, seed)[0], _halves(n_far, seed)[0]
    X_test, X_far = _features(n_in, val_in, out=False), _features(n_far, val_far, out=True)
    X_noisy = _features(n_in, val_in, out=True)
    test = ImageSet(np.zeros((n_in, 4, 4, 1), np.uint8), np.zeros(n_in, int), ["x"], source="stub")
    far = ImageSet(np.zeros((n_far, 4, 4, 1), np.uint8), np.full(n_far, -1), [], source="far stub")
    monkeypatch.setattr(ood_stage, "far_ood_set", lambda dataset, like, seed: ("far", far))
    monkeypatch.setattr(ood_stage, "corrupted_features", lambda *args: X_noisy)
    rng = np.random.default_rng(0)
    X_train = np.r_[rng.normal(0.8, 0.05, (50, 2)), rng.normal(0.3, 0.05, (50, 2))]
    X_uniform = _features(n_in, val_in, out=True)  # the pure-noise set: as many images as the test set
    replicate = SimpleNamespace(features=lambda images, **_: X_far if images is far else X_uniform, X_train=X_train,
                                train=SimpleNamespace(labels=np.repeat([0, 1], 50)), X_test=X_test, test=test,
                                dataset="stub", seed=seed)
    ctx = SimpleNamespace(replicates=[replicate], models_of=lambda r: {("vfe", r): _StubHead()}, clean_probs={},
                          data_seed=0, corruption_params="auto", noise_seed=lambda r: 0,
                          mahalanobis=lambda r: mahalanobis_scorer(*shrunk_precision(X_train, replicate.train.labels)))
    out = ood_stage.run_stage(OODSettings(), ctx)["ood"]
    row = out["per_head"]["vfe"]["0"]
    for ood_set in ("far", "gaussian_noise_s5", "uniform_noise"):
        assert out["selection"]["per_head"]["vfe"]["0"][ood_set]["chosen"] == "recon"
        assert (row[f"recon_auroc_{ood_set}"], row[f"msp_auroc_{ood_set}"]) == (0.0, 1.0)
        assert row[f"selected_auroc_{ood_set}"] == 0.0
    assert out["selection"]["seed"] == {"0": seed}
