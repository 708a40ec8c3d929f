"""The selective-classification stage against brute force: risk at coverage, AURC, the pooled streams per family
and held-out set, the paired comparisons with max softmax, and the report's section printing those numbers.

Features are scikit-learn's digits (8 x 8 pixels as 64 features), the "corrupted test sets" the test images
plus seeded Gaussian noise whose strength grows with the severity; heads are vfe's linear and VFE heads, fitted
per replicate with the replicate's seed.
"""
from __future__ import annotations

import math
import zlib
from types import SimpleNamespace

import numpy as np
import pytest
from scipy import stats
from sklearn.datasets import load_digits

from vfe.errors import SettingsError
from vfe.experiment.config import with_overrides
from vfe.experiment.run_settings import RunSettings, check
from vfe.experiment.stages.corruptions.settings import CorruptionSettings
from vfe.experiment.stages.corruptions.stage import corruption_transform
from vfe.experiment.stages.selective.section import selective_section
from vfe.experiment.stages.selective.settings import SelectiveSettings
from vfe.experiment.stages.selective.stage import groups_of, run_stage
from vfe.heads import make_head
from vfe.report.document import Document
from vfe.report.sections import Context
from vfe.report.to_markdown import to_markdown
from vfe.robustness.detectors import mahalanobis_scorer, shrunk_precision

CORRUPTIONS = ["gaussian_noise", "shot_noise", "defocus_blur", "speckle_noise"]  # speckle: not a benchmark one
SEVERITIES = [1, 3]


class NoisyFeatures:
    """A feature source: the test features, plus noise seeded by the corruption's cache key."""

    def __init__(self, X_test: np.ndarray):
        self.X_test = X_test
        self.calls = []

    def __call__(self, images, transform=None, transform_key=None, desc=""):
        self.calls.append(transform_key)
        severity = int(transform_key.split(":")[2][1:])
        rng = np.random.default_rng(zlib.crc32(transform_key.encode()))
        return (self.X_test + rng.normal(0, 2.0 * severity, self.X_test.shape)).astype(np.float32)


@pytest.fixture(scope="module")
def stage():
    X, y = load_digits(return_X_y=True)
    X = X.astype(np.float32)
    train, test = np.arange(0, 1200), np.arange(1200, 1500)
    replicates, models = [], {}
    for r, seed in enumerate((11, 22)):
        rows = np.random.default_rng(seed).choice(train, 600, replace=False)
        features = NoisyFeatures(X[test])
        replicates.append(SimpleNamespace(X_train=X[rows], train=SimpleNamespace(labels=y[rows]), X_test=X[test],
                                          test=SimpleNamespace(labels=y[test]), features=features, seed=seed,
                                          augmentation=None))
        models[("linear", r)] = make_head("linear", epochs=15, random_state=seed).fit(X[rows], y[rows])
        models[("vfe", r)] = make_head("vfe", encoder_units=32, latent_dim=8, decoder_units=32, vae_epochs=15,
                                       epochs=15, random_state=seed).fit(X[rows], y[rows])
    ctx = SimpleNamespace(replicates=replicates, heads=["linear", "vfe"], models=models, progress=False,
                          noise_seed=lambda r: 0, mahalanobis=lambda r: mahalanobis_scorer(
                              *shrunk_precision(replicates[r].X_train, replicates[r].train.labels)))
    settings = CorruptionSettings(corruptions=CORRUPTIONS, severities=SEVERITIES)
    return ctx, run_stage(SelectiveSettings(), settings, ctx)["selective"]


def brute_risk(scores: np.ndarray, errors: np.ndarray, coverage: float) -> float:
    """Error rate over every input scoring at most the k-th smallest score, k = ceil(coverage n)."""
    k = math.ceil(round(coverage * len(scores), 9))
    return float(errors[scores <= np.sort(scores)[k - 1]].mean())


def brute_aurc(scores: np.ndarray, errors: np.ndarray) -> float:
    """Mean over k of the error rate of the k lowest scores (scores without ties)."""
    assert len(np.unique(scores)) == len(scores)
    ordered = errors[np.argsort(scores)]
    return float(np.mean(np.cumsum(ordered) / np.arange(1, len(scores) + 1)))


def stream(ctx, r: int, corruptions: list[str]) -> list[np.ndarray]:
    """The features of `corruptions` x SEVERITIES of replicate r, one array per set, as the stage reads them (a
    set at a time: the VFE head samples z by row position within a call, as in the corruption stage)."""
    p = ctx.replicates[r]
    keys = [corruption_transform(c, s, 0, "auto")[1] for c in corruptions for s in SEVERITIES]
    assert set(keys) <= set(p.features.calls)  # the stage read these sets
    return [p.features(None, transform_key=k) for k in keys]


def test_groups_pool_each_family_and_the_held_out_benchmark_corruptions():
    assert groups_of(CORRUPTIONS, seen=[]) == {"noise": ["gaussian_noise", "shot_noise"], "blur": ["defocus_blur"],
                                                "held_out": ["gaussian_noise", "shot_noise", "defocus_blur"]}
    assert groups_of(CORRUPTIONS, seen=["gaussian_noise", "shot_noise"])["held_out"] == ["defocus_blur"]


def test_risk_and_aurc_equal_brute_force_on_every_pooled_stream(stage):
    ctx, selective = stage
    assert selective["detectors"] == ["msp", "mahalanobis", "vfe-recon", "vfe-elbo"]
    assert selective["n_images"]["linear"] == {"clean": 300, "noise": 1200, "blur": 600, "held_out": 1800}
    for r in (0, 1):
        p = ctx.replicates[r]
        for head in ("linear", "vfe"):
            model = ctx.models[(head, r)]
            for group, corruptions in (("clean", None), ("noise", ["gaussian_noise", "shot_noise"]),
                                       ("held_out", ["gaussian_noise", "shot_noise", "defocus_blur"])):
                sets = [p.X_test] if corruptions is None else stream(ctx, r, corruptions)
                X = np.concatenate(sets)
                labels = np.tile(p.test.labels, len(sets))
                probs = np.concatenate([model.predict_proba(x) for x in sets])
                errors = (probs.argmax(1) != labels).astype(float)
                row = selective["per_head"][head][str(r)][group]
                msp = -probs.max(1)
                assert row["msp"]["risk_90"] == pytest.approx(brute_risk(msp, errors, 0.9), abs=1e-12)
                assert row["msp"]["risk_80"] == pytest.approx(brute_risk(msp, errors, 0.8), abs=1e-12)
                recon = ctx.models[("vfe", r)].reconstruction_error(X)
                assert row["vfe-recon"]["risk_90"] == pytest.approx(brute_risk(recon, errors, 0.9), abs=1e-12)
                assert row["vfe-recon"]["aurc"] == pytest.approx(brute_aurc(recon, errors), abs=1e-9)
                for detector in selective["detectors"]:  # a detector can only reorder: at full coverage all agree
                    assert 0 <= row[detector]["risk_90"] <= 1


def test_mahalanobis_is_the_shrunk_class_conditional_distance_of_the_training_features(stage):
    from sklearn.covariance import ledoit_wolf

    ctx, selective = stage
    p, model = ctx.replicates[0], ctx.models[("linear", 0)]
    X = p.X_test.astype(np.float64)
    means = np.stack([p.X_train[p.train.labels == k].mean(0) for k in range(10)]).astype(np.float64)
    precision = np.linalg.inv(ledoit_wolf(p.X_train - means[p.train.labels], assume_centered=True)[0])
    distance = np.min([np.einsum("nd,de,ne->n", X - m, precision, X - m) for m in means], axis=0)
    errors = (model.predict_proba(p.X_test).argmax(1) != p.test.labels).astype(float)
    got = selective["per_head"]["linear"]["0"]["clean"]["mahalanobis"]
    assert got["risk_90"] == pytest.approx(brute_risk(distance, errors, 0.9), abs=1e-12)
    assert got["aurc"] == pytest.approx(brute_aurc(distance, errors), abs=1e-9)


def test_summary_and_paired_comparison_with_max_softmax_are_over_the_replicates(stage):
    _, selective = stage
    reps = selective["per_head"]["vfe"]
    a = np.array([reps[r]["held_out"]["vfe-recon"]["risk_90"] for r in ("0", "1")])
    b = np.array([reps[r]["held_out"]["msp"]["risk_90"] for r in ("0", "1")])
    summary = selective["summary"]["vfe"]["held_out"]["vfe-recon"]["risk_90"]
    assert summary["mean"] == pytest.approx(a.mean()) and summary["std"] == pytest.approx(a.std(ddof=1))
    comparison = selective["vs_msp"]["vfe"]["held_out"]["vfe-recon"]["risk_90"]
    d = a - b
    half = stats.t.ppf(0.975, 1) * d.std(ddof=1) / math.sqrt(2)
    assert comparison["mean_diff"] == pytest.approx(d.mean())
    assert (comparison["low"], comparison["high"]) == pytest.approx((d.mean() - half, d.mean() + half))
    expected = ("worse than baseline" if d.mean() - half > 0 else "better than baseline" if d.mean() + half < 0
                else "no difference shown")  # lower risk is better
    assert comparison["verdict"] == expected
    assert "msp" not in selective["vs_msp"]["vfe"]["held_out"]


def test_the_report_section_prints_the_stage_numbers(stage):
    _, selective = stage
    text = to_markdown(Document("t", "s", [selective_section(Context({"selective": selective}))]))
    summary = selective["summary"]["linear"]["held_out"]
    for detector, label in (("msp", "max softmax"), ("vfe-recon", "VFE reconstruction error")):
        cell = summary[detector]["risk_90"]
        assert f"{cell['mean'] * 100:.1f} ± {cell['std'] * 100:.1f}" in text
        assert label in text
    comparison = selective["vs_msp"]["linear"]["held_out"]["vfe-recon"]["risk_90"]
    sign = "+" if comparison["mean_diff"] > 0 else "−"
    assert f"{sign}{abs(comparison['mean_diff']) * 100:.1f} points" in text
    assert "held-out corruptions: AURC" in text
    assert "Skipped" in to_markdown(Document("t", "s", [selective_section(Context({}))]))


def test_an_unknown_selective_head_is_refused_before_any_work():
    settings = with_overrides(RunSettings(), {"selective_heads": ["linaer"]})
    with pytest.raises(SettingsError, match="--selective-heads: linaer is not a head"):
        check(settings)
