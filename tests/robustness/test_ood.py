"""OOD metrics on Gaussians of known separability; Mahalanobis scores against their formulas; the
scores of real heads; the OOD sets; the OOD stage end to end on digits features."""
import numpy as np
import pytest
from scipy.stats import norm

from vfe.data.types import ImageSet
from vfe.experiment.stages.ood.stage import far_ood_set, match_shape, texture_crops, uniform_noise_set
from vfe.heads import make_head
from vfe.robustness.ood import (
    MahalanobisScore,
    auroc,
    fpr_at_95_tpr,
    head_scores,
    max_softmax_score,
    select_score,
)


@pytest.mark.parametrize("shift", [0.5, 1.0, 2.0])
def test_auroc_and_fpr95_of_shifted_gaussians_match_theory(shift):
    rng = np.random.default_rng(0)
    scores_in, scores_out = rng.normal(size=40000), rng.normal(loc=shift, size=40000)
    # P(out > in) for two unit Gaussians `shift` apart; the 95% TPR threshold is shift - z_0.95
    assert auroc(scores_in, scores_out) == pytest.approx(norm.cdf(shift / np.sqrt(2)), abs=0.006)
    assert fpr_at_95_tpr(scores_in, scores_out) == pytest.approx(norm.sf(shift - norm.ppf(0.95)), abs=0.01)


def test_convention_higher_score_means_more_ood():
    scores_in, scores_out = np.arange(100.0), np.arange(100.0) + 1000
    assert auroc(scores_in, scores_out) == 1.0 and fpr_at_95_tpr(scores_in, scores_out) == 0.0
    assert auroc(scores_out, scores_in) == 0.0 and fpr_at_95_tpr(scores_out, scores_in) == 1.0
    with pytest.raises(ValueError, match="NaN"):
        auroc(np.array([0.0, np.nan]), np.array([1.0]))


def test_max_softmax_score_is_low_for_confident_predictions():
    probs = np.array([[0.98, 0.01, 0.01], [0.4, 0.3, 0.3]])
    assert max_softmax_score(probs).tolist() == [-0.98, -0.4]


def _classes_with_shared_covariance(rng, n_per_class=3000, dim=8):
    scales = np.linspace(0.2, 3.0, dim)  # anisotropic: distance must be measured in the covariance's units
    means = rng.normal(scale=3.0, size=(3, dim))
    X = np.concatenate([m + rng.normal(size=(n_per_class, dim)) * scales for m in means])
    return X, np.repeat(np.arange(3), n_per_class), means, scales


def test_mahalanobis_scores_follow_their_formulas():
    rng = np.random.default_rng(1)
    X, y, _, _ = _classes_with_shared_covariance(rng)
    X_new = rng.normal(scale=3.0, size=(50, X.shape[1]))
    means = np.stack([X[y == k].mean(0) for k in range(3)])
    precision = np.linalg.inv(np.cov((X - means[y]).T, bias=True))
    by_hand = np.stack([np.einsum("ij,jk,ik->i", X_new - m, precision, X_new - m) for m in means], 1).min(1)
    detector = MahalanobisScore().fit(X, y)
    assert detector.score(X_new) == pytest.approx(by_hand, rel=1e-6)
    centred = X_new - X.mean(0)
    background = np.einsum("ij,jk,ik->i", centred, np.linalg.inv(np.cov(X.T, bias=True)), centred)
    assert detector.score(X_new, relative=True) == pytest.approx(by_hand - background, rel=1e-6)


def test_mahalanobis_detects_a_shift_along_a_low_variance_direction():
    """OOD points 2 units off a class mean along the direction of std 0.2 are 10 standard deviations
    out; a Euclidean distance barely notices them (the same 2 units is 0.7 std along the widest axis)."""
    rng = np.random.default_rng(2)
    X, y, means, scales = _classes_with_shared_covariance(rng)
    X_in = means[0] + rng.normal(size=(2000, X.shape[1])) * scales
    X_out = X_in.copy()
    X_out[:, 0] += 2.0
    detector = MahalanobisScore().fit(X, y)
    assert auroc(detector.score(X_in), detector.score(X_out)) > 0.99
    def euclidean(Z):
        return ((Z[:, None, :] - means[None]) ** 2).sum(-1).min(1)
    assert auroc(euclidean(X_in), euclidean(X_out)) < 0.8


def test_head_scores_of_real_heads(digits_features):
    X_train, X_test, y_train, _ = digits_features
    linear = make_head("linear", epochs=10).fit(X_train, y_train)
    vfe = make_head("vfe", latent_dim=8, encoder_units=32, decoder_units=32, vae_epochs=15, epochs=10,
                    recon_weight=10.0).fit(X_train, y_train)
    noise = np.random.default_rng(3).uniform(0, 1, size=X_test.shape).astype(np.float32)
    assert set(head_scores(linear, X_test)) == {"msp"}
    scores_in, scores_out = head_scores(vfe, X_test), head_scores(vfe, noise)
    assert set(scores_in) == {"msp", "recon", "elbo"}
    assert all(len(v) == len(X_test) and np.isfinite(v).all() for v in scores_in.values())
    # uniform noise in [0, 1]^64 is nothing like a digit: the VFE's own scores must say so
    assert auroc(scores_in["recon"], scores_out["recon"]) > 0.95
    assert auroc(scores_in["elbo"], scores_out["elbo"]) > 0.95


def test_far_ood_set_is_digits_for_fashion_shaped_images():
    like = ImageSet(np.zeros((40, 28, 28, 1), np.uint8), np.zeros(40), ["x"], source="fashion")
    name, ood = far_ood_set("fashion-mnist", like, seed=0)
    assert name == "digits" and ood.images.shape == (40, 28, 28, 1) and ood.images.dtype == np.uint8
    # real digits: dark background, bright strokes
    assert ood.images[:, :3, :3].mean() < 20 and ood.images.max() > 200


@pytest.mark.parametrize("shape", [(40, 28, 28, 1), (30, 32, 32, 3)])
def test_the_uniform_noise_set_is_seeded_noise_shaped_like_the_test_images(shape):
    like = ImageSet(np.zeros(shape, np.uint8), np.zeros(shape[0]), ["x"], source="test")
    noise = uniform_noise_set(like, seed=3)
    assert noise.images.shape == shape and noise.images.dtype == np.uint8 and (noise.labels == -1).all()
    assert abs(noise.images.mean() - 127.5) < 3 and noise.images.min() == 0 and noise.images.max() == 255
    assert np.array_equal(noise.images, uniform_noise_set(like, seed=3).images)
    assert not np.array_equal(noise.images, uniform_noise_set(like, seed=4).images)


def test_match_shape_resizes_and_converts_channels():
    crops = texture_crops(6, seed=0)
    assert crops.shape == (6, 64, 64) and crops.std() > 10  # real texture, not a flat patch
    like_rgb = ImageSet(np.zeros((3, 32, 32, 3), np.uint8), np.zeros(3), ["x"])
    matched = match_shape(crops, like_rgb, n=4, seed=0, source="textures")
    assert matched.images.shape == (4, 32, 32, 3)
    assert np.array_equal(matched.images[..., 0], matched.images[..., 2])


@pytest.mark.slow
def test_ood_stage_end_to_end(fashion_mnist, small_backbone, fashion_heads, tmp_path):
    from vfe.experiment.stages.ood.stage import run_ood
    from vfe.features.cache import FeatureCache
    from vfe.features.source import BackboneFeatures

    train, test = fashion_mnist
    X_train, X_test, models = fashion_heads
    clean_probs = {key: model.predict_proba(X_test) for key, model in models.items()}
    out = run_ood(BackboneFeatures(FeatureCache(tmp_path), small_backbone, progress=False), models, X_train,
                  train.labels, X_test, clean_probs, test, "fashion-mnist", data_seed=0, corruption_params="auto")

    sets = ("digits", "gaussian_noise_s5", "uniform_noise")
    assert set(out["ood_sets"]) == set(sets) and out["n_in"] == len(test) == out["ood_sets"]["uniform_noise"]["n"]
    assert set(out["per_head"]["linear"]["0"]) == {f"{score}_{s}_{o}" for score in ("msp", "selected")
                                                   for s in ("auroc", "fpr95") for o in sets}
    assert set(out["per_head"]["vfe"]["0"]) == {f"{score}_{s}_{o}" for score in ("msp", "recon", "elbo", "selected")
                                                for s in ("auroc", "fpr95") for o in sets}
    assert out["selection"]["per_head"]["linear"]["0"]["digits"]["chosen"] == "msp"  # its only score
    assert out["selection"]["per_head"]["vfe"]["0"]["digits"]["chosen"] in {"msp", "recon", "elbo"}
    values = [v for per_seed in out["per_head"].values() for m in per_seed.values() for v in m.values()]
    assert all(0.0 <= v <= 1.0 for v in values + list(out["feature_baselines"].values()))
    # 8x8 digits blown up to 28x28 and sigma-0.38 noise are far from Fashion-MNIST in feature space
    baselines = out["feature_baselines"]
    assert baselines["mahalanobis_auroc_digits"] > 0.9
    assert baselines["mahalanobis_auroc_gaussian_noise_s5"] > 0.9
    assert len(baselines) == 3 * 2 * len(sets)  # (plain, relative, selected) x (auroc, fpr95) x OOD sets
    assert 0 < baselines["relative_mahalanobis_auroc_digits"] <= 1
    # the pipeline detector's own Mahalanobis (the covariance shrunk), recorded beside the choice
    shrunk = out["selection"]["detector_mahalanobis"]
    assert set(shrunk) == set(sets) and all(0 <= v["auroc"] <= 1 and 0 <= v["validation_auroc"] <= 1
                                            for v in shrunk.values())


def test_fpr95_keeps_the_threshold_that_first_reaches_95_tpr_among_tied_scores():
    """20 OOD, 20 in: 17 OOD at 10, then one OOD and one in tied at each of 5, 4, 3, the rest in at 0.
    By hand: score >= 4 catches 17 + 2 = 19/20 = 95% of OOD and flags 2/20 in-distribution: 0.10.
    (The ROC points at 5 and 4 are collinear; dropping them jumps to score >= 3, 3/20 = 0.15.)"""
    scores_out = np.r_[np.full(17, 10.0), 5.0, 4.0, 3.0]
    scores_in = np.r_[5.0, 4.0, 3.0, np.zeros(17)]
    assert fpr_at_95_tpr(scores_in, scores_out) == pytest.approx(0.10)


def test_fpr95_never_splits_a_tie_of_confident_max_softmax_scores():
    """Max softmax 1.0 (score -1.0) for half the in-distribution and a quarter of the OOD images: a
    threshold keeps or drops the whole tie, so catching 95% of OOD flags every in-distribution image."""
    scores_in = np.r_[np.full(10, -1.0), np.full(10, -0.6)]
    scores_out = np.r_[np.full(15, -0.4), np.full(5, -1.0)]
    assert fpr_at_95_tpr(scores_in, scores_out) == 1.0


@pytest.mark.parametrize("seed", range(5))
def test_fpr95_matches_its_definition_on_heavily_tied_scores(seed):
    rng = np.random.default_rng(seed)
    scores_in = rng.integers(0, 6, size=37).astype(float)
    scores_out = rng.integers(2, 9, size=23).astype(float)
    # definition: the smallest in-distribution share flagged by a threshold flagging >= 95% of OOD
    by_hand = min((scores_in >= t).mean() for t in np.unique(np.r_[scores_in, scores_out])
                  if (scores_out >= t).mean() >= 0.95)
    assert fpr_at_95_tpr(scores_in, scores_out) == pytest.approx(by_hand)


@pytest.mark.parametrize("order", [("b", "a", "c"), ("a", "c", "b")])
def test_select_score_breaks_a_validation_tie_towards_the_first_score_offered(order):
    """"a" and "b" both separate the validation halves perfectly (AUROC 1.0, a tie), "c" is reversed there;
    on the test halves "a" is reversed (0.0) and "b" perfect (1.0): the first of the tied, as offered in the
    in-distribution scores, is chosen, whatever order the OOD scores come in."""
    split = (np.arange(3), np.arange(3, 6))
    scores_in = {"a": np.array([0, 1, 2, 9, 9, 9.0]), "b": np.array([0, 1, 2, 0, 0, 0.0]),
                 "c": np.array([9, 9, 9, 0, 0, 0.0])}
    scores_out = {"a": np.array([5, 6, 7, 0, 1, 2.0]), "b": np.array([5, 6, 7, 5, 5, 5.0]),
                  "c": np.array([0, 0, 0, 5, 5, 5.0])}
    picked = select_score({k: scores_in[k] for k in order}, dict(reversed(list(scores_out.items()))), split, split)
    assert picked["validation_auroc"] == {"a": 1.0, "b": 1.0, "c": 0.0}
    assert picked["chosen"] == order[0]
    assert picked["test"]["a"]["auroc"] == 0.0 and picked["test"]["b"]["auroc"] == 1.0
