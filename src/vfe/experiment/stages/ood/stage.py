"""Out-of-distribution detection: can each head tell the test set from images it was never meant for?

Three OOD sets:
  * another data set: scikit-learn's digits for Fashion-MNIST (and any other data set); for digits,
    Fashion-MNIST when installed, else crops of scikit-image's texture photos (brick, grass, gravel);
    resized to the test images' size and channels, so only their content differs;
  * the test images under gaussian_noise at severity 5 ("gaussian_noise_s5"), through the same
    cached features as the corruption stage;
  * pure noise ("uniform_noise"): as many images as the test set, every pixel uniform in 0..255, shaped like
    the test images (Hendrycks & Gimpel 2017's noise sets). Which detector catches it is not which catches the
    other two: on Fashion-MNIST at 32 px with 100 training images, at 90 % coverage, shrunk Mahalanobis
    abstained on 30 % of the noised test images and 2 % of pure noise, max softmax on 9 % and 98.5 %
    (benchmarks/bench_detectors.py).

Protocol (an honest number per head, not the best of several on the test data):
  * a head that adapts at test time (t3a, linear-tts) scores the in-distribution and OOD rows in one mixed,
    shuffled call (`mixed_scores`), like-for-like with a deployed stream; scored apart, each set would adapt
    to itself;
  * the in-distribution test features and each OOD set are split, seeded by the replicate's seed, into a
    validation half and a test half (`vfe.robustness.ood.validation_split`); the noisy set is the test
    images corrupted, so it shares the in-distribution split: an image and its noisy copy are always in
    the same half;
  * per head, replicate and OOD set, the score ("msp"; "recon", "elbo" for the VFE) with the best AUROC on
    the validation halves is chosen, and its AUROC and FPR@95 on the test halves are reported as
    "selected_<auroc|fpr95>_<ood set>"; the choice is recorded under "selection";
  * the head-free baseline is chosen the same way between Mahalanobis and relative Mahalanobis;
  * every score's own "<score>_<auroc|fpr95>_<ood set>" is kept, also measured on the test halves only.

Result:
    {"per_head": {head: {replicate: {"<score|selected>_<auroc|fpr95>_<ood set>": value}}},   # summary: ood:<key>
     "feature_baselines": {"<mahalanobis|relative_mahalanobis|selected>_<auroc|fpr95>_<ood set>":
                           {replicate: value}},
     "selection": {"per_head": {head: {replicate: {ood set: {"chosen": score, "validation_auroc": {score: v}}}}},
                   "feature_baselines": {replicate: {ood set: {"chosen": .., "validation_auroc": ..}}},
                   "detector_mahalanobis": {replicate: {ood set: {"validation_auroc", "auroc", "fpr95"}}},
                   "n_validation": {"in": n, ood set: n}, "n_test": {"in": n, ood set: n},
                   "seed": {replicate: the replicate's seed (its halves)}},
     "ood_sets": {name: {"n": .., "source": ..}}, "n_in": .., "convention": ..}
Only numbers go in "per_head" (the summary averages every key there over replicates), so the chosen score's
name lives in "selection". The Mahalanobis scores use the backbone features alone (no head, no head seed), so
they are computed once per replicate. See vfe.robustness.ood for the convention: higher score = more OOD; AUROC with OOD
as positive; FPR at 95% TPR, lower is better.
"""
from __future__ import annotations

import numpy as np
import skimage.data
from skimage.transform import resize
from sklearn.datasets import load_digits

from vfe.data import available_fashion_mnist, load_dataset
from vfe.data.types import ImageSet
from vfe.experiment.background import Ahead, Entry
from vfe.experiment.context import RunContext
from vfe.experiment.stages import Stage
from vfe.experiment.stages.corruptions.stage import corrupted_features
from vfe.experiment.stages.ood.section import ood_section
from vfe.experiment.stages.ood.settings import OODSettings
from vfe.features.source import FeatureSource
from vfe.heads.registry import adapts_at_test_time
from vfe.robustness.detectors import mahalanobis_scorer, shrunk_precision
from vfe.robustness.ood import MahalanobisScore, head_scores, select_score, validation_split

CORRUPTED_OOD = ("gaussian_noise", 5)
UNIFORM_NOISE = "uniform_noise"
TEXTURES = ("brick", "grass", "gravel")


def run_stage(settings: OODSettings, ctx: RunContext) -> dict:
    """results.json's "ood" section for every fitted head (see the module docstring), every replicate on its own
    features and with its own validation/test halves; the OOD images themselves are the same for every replicate.
    The head-free baselines depend on the replicate's features too: "feature_baselines" is {key: {replicate:
    value}}, and the selection's "feature_baselines" {replicate: {ood set: choice}}."""
    merged: dict = {}
    for r, p in enumerate(ctx.replicates):
        one = run_ood(p.features, ctx.models_of(r), p.X_train, p.train.labels, p.X_test, ctx.clean_probs, p.test,
                      p.dataset, ctx.data_seed, ctx.corruption_params, split_seed=p.seed,
                      noise_seed=ctx.noise_seed(r), mahalanobis=ctx.mahalanobis(r))
        if not merged:
            merged = {**one, "per_head": {}, "feature_baselines": {},
                      "selection": {**one["selection"], "per_head": {}, "feature_baselines": {}, "seed": {},
                                    "detector_mahalanobis": {}}}
        for head, per_rep in one["per_head"].items():
            merged["per_head"].setdefault(head, {}).update(per_rep)
            merged["selection"]["per_head"].setdefault(head, {}).update(one["selection"]["per_head"][head])
        for key, value in one["feature_baselines"].items():
            merged["feature_baselines"].setdefault(key, {})[str(r)] = value
        merged["selection"]["feature_baselines"][str(r)] = one["selection"]["feature_baselines"]
        merged["selection"]["seed"][str(r)] = p.seed
        merged["selection"]["detector_mahalanobis"][str(r)] = one["selection"]["detector_mahalanobis"]
    return {"ood": merged}


def run_ood(features: FeatureSource, models: dict, X_train: np.ndarray, y_train: np.ndarray,
            X_test: np.ndarray, clean_probs: dict, test: ImageSet, dataset: str, data_seed: int,
            corruption_params: str, split_seed: int | None = None, noise_seed: int | None = None,
            mahalanobis=None) -> dict:
    """Every head's OOD scores, test features (in) vs each OOD set's (out); see the module docstring. The OOD
    images are drawn with `data_seed`, the validation/test halves with `split_seed` and the noisy set's noise with
    `noise_seed` (both default: `data_seed`). `mahalanobis`: the pipeline detector's Mahalanobis scorer on
    X_train (RunContext.mahalanobis), fitted here when not given."""
    split_seed = data_seed if split_seed is None else split_seed
    noise_seed = data_seed if noise_seed is None else noise_seed
    name, far = far_ood_set(dataset, test, data_seed)
    noise = uniform_noise_set(test, data_seed)
    corruption, severity = CORRUPTED_OOD
    corrupted = f"{corruption}_s{severity}"
    ood_features = {
        name: features(far, desc=f"extract OOD {name}"),
        corrupted: corrupted_features(features, test, corruption, severity, noise_seed, corruption_params),
        UNIFORM_NOISE: features(noise, desc=f"extract OOD {UNIFORM_NOISE}"),
    }
    ood_sets = {name: {"n": len(far), "source": far.source},
                corrupted: {"n": len(test), "source": f"{test.source}, {corruption} at severity {severity}"},
                UNIFORM_NOISE: {"n": len(noise), "source": noise.source}}
    split_in = validation_split(len(X_test), split_seed)
    splits = {name: validation_split(len(ood_features[name]), split_seed), corrupted: split_in,
              UNIFORM_NOISE: validation_split(len(noise), split_seed)}
    per_head: dict = {}
    chosen: dict = {}
    for (head, replicate), model in models.items():
        scores_in = head_scores(model, X_test, clean_probs.get((head, replicate)))
        row = per_head.setdefault(head, {}).setdefault(str(replicate), {})
        for ood_name, X_out in ood_features.items():
            if adapts_at_test_time(head):  # like-for-like: in and out adapt together, as one deployed stream
                mixed_in, mixed_out = mixed_scores(model, X_test, X_out, split_seed)
                picked = select_score(mixed_in, mixed_out, split_in, splits[ood_name])
            else:
                picked = select_score(scores_in, head_scores(model, X_out), split_in, splits[ood_name])
            row.update(_flat(picked, ood_name))
            chosen.setdefault(head, {}).setdefault(str(replicate), {})[ood_name] = _choice(picked)
    baselines: dict = {}
    baseline_choice: dict = {}
    detector = MahalanobisScore().fit(X_train, y_train)
    kinds = {"mahalanobis": False, "relative_mahalanobis": True}
    feature_in = {score: detector.score(X_test, relative) for score, relative in kinds.items()}
    for ood_name, X_out in ood_features.items():
        feature_out = {score: detector.score(X_out, relative) for score, relative in kinds.items()}
        picked = select_score(feature_in, feature_out, split_in, splits[ood_name])
        baselines.update(_flat(picked, ood_name))
        baseline_choice[ood_name] = _choice(picked)
    selection = {"per_head": chosen, "feature_baselines": baseline_choice, "seed": split_seed,
                 "detector_mahalanobis": detector_mahalanobis(
                     mahalanobis or mahalanobis_scorer(*shrunk_precision(X_train, y_train)), X_test, ood_features,
                     split_in, splits),
                 "n_validation": {"in": len(split_in[0]), **{k: len(v[0]) for k, v in splits.items()}},
                 "n_test": {"in": len(split_in[1]), **{k: len(v[1]) for k, v in splits.items()}},
                 "protocol": "per head, replicate and OOD set, the score with the best AUROC on a seeded "
                             "validation half is chosen; every figure is measured on the other (test) half"}
    return {"per_head": per_head, "feature_baselines": baselines, "selection": selection,
            "ood_sets": ood_sets,
            "n_in": len(X_test),
            "convention": "higher score = more OOD; AUROC with OOD as the positive class; fpr95 = share of "
                          "in-distribution test images flagged at the threshold catching 95% of the OOD set; "
                          "all figures on the test halves, the score chosen on the validation halves"}


def detector_mahalanobis(scorer, X_test: np.ndarray, ood_features: dict[str, np.ndarray], split_in: tuple,
                         splits: dict) -> dict:
    """{ood set: {"validation_auroc", "auroc", "fpr95"}} of the Mahalanobis score a pipeline's detector uses (the
    covariance shrunk, vfe.robustness.detectors.shrunk_precision), on the same halves as every other score: not
    among the scores chosen from (the reported baseline is Lee et al.'s), but what `vfe run --save-best` chooses
    a detector by, since at a few hundred training images the two differ (vfe.experiment.best). `scorer`: that
    score fitted on the replicate's training features (vfe.robustness.detectors.mahalanobis_scorer)."""
    score_in = {"mahalanobis": scorer.score(X_test)}
    out = {}
    for ood_name, X_out in ood_features.items():
        picked = select_score(score_in, {"mahalanobis": scorer.score(X_out)}, split_in, splits[ood_name])
        out[ood_name] = {"validation_auroc": picked["validation_auroc"]["mahalanobis"],
                         **picked["test"]["mahalanobis"]}
    return out


def mixed_scores(model, X_in: np.ndarray, X_out: np.ndarray, seed: int) -> tuple[dict, dict]:
    """A test-time-adapting head's scores of in- and out-of-distribution rows from ONE call on both, shuffled
    together (seeded): scored apart, each set would adapt to itself, and the OOD set would look in-distribution
    by construction. Returns (scores of X_in's rows, scores of X_out's rows), each in its original order."""
    order = np.random.default_rng(seed).permutation(len(X_in) + len(X_out))
    scores = head_scores(model, np.concatenate([X_in, X_out])[order])
    back = np.empty_like(order)
    back[order] = np.arange(len(order))
    return ({k: v[back[:len(X_in)]] for k, v in scores.items()}, {k: v[back[len(X_in):]] for k, v in scores.items()})


def _flat(picked: dict, ood_name: str) -> dict[str, float]:
    """Every score's test-half metrics, and the chosen one's again as "selected_<stat>_<ood set>"."""
    out = {f"{score}_{stat}_{ood_name}": value for score, metrics in picked["test"].items()
           for stat, value in metrics.items()}
    best = picked["test"][picked["chosen"]]
    out.update({f"selected_{stat}_{ood_name}": value for stat, value in best.items()})
    return out


def _choice(picked: dict) -> dict:
    return {"chosen": picked["chosen"], "validation_auroc": picked["validation_auroc"]}


def far_ood_set(dataset: str, like: ImageSet, seed: int) -> tuple[str, ImageSet]:
    """(name, images) of a real data set unlike `dataset`, shaped like `like`'s images, at most len(like)."""
    if dataset != "digits":
        return "digits", match_shape(digits_images(), like, len(like), seed, "sklearn-digits")
    if available_fashion_mnist() is not None:
        fashion = load_dataset("fashion-mnist", split="test")
        return "fashion-mnist", match_shape(fashion.images, like, len(like), seed, fashion.source)
    return "textures", match_shape(texture_crops(len(like), seed), like, len(like), seed, "skimage-textures")


def uniform_noise_set(like: ImageSet, seed: int) -> ImageSet:
    """len(like) images of uniform noise (every pixel and channel 0..255, seeded), shaped like `like`'s."""
    images = np.random.default_rng(seed).integers(0, 256, like.images.shape, dtype=np.uint8)
    height, width, channels = like.images.shape[1:]
    return ImageSet(images, np.full(len(images), -1), [],
                    source=f"uniform noise 0..255 (seed {seed})->{height}x{width}x{channels}")


def digits_images() -> np.ndarray:
    """scikit-learn's 1797 8x8 digits as uint8 (ink bright on dark, like Fashion-MNIST)."""
    return np.round(load_digits().images * (255 / 16)).astype(np.uint8)


def texture_crops(n: int, seed: int, size: int = 64) -> np.ndarray:
    """`n` random size x size crops of scikit-image's texture photos (brick, grass, gravel), uint8."""
    rng = np.random.default_rng(seed)
    photos = [getattr(skimage.data, name)() for name in TEXTURES]
    crops = []
    for i in range(n):
        photo = photos[i % len(photos)]
        top, left = rng.integers(0, photo.shape[0] - size + 1), rng.integers(0, photo.shape[1] - size + 1)
        crops.append(photo[top:top + size, left:left + size])
    return np.stack(crops)


def match_shape(images: np.ndarray, like: ImageSet, n: int, seed: int, source: str) -> ImageSet:
    """At most `n` of `images` (seeded choice), resized to `like`'s height x width, with its channels."""
    rng = np.random.default_rng(seed)
    if len(images) > n:
        images = images[np.sort(rng.choice(len(images), n, replace=False))]
    images = images if images.ndim == 4 else images[..., None]
    height, width, channels = like.images.shape[1:]
    if images.shape[1:3] != (height, width):
        images = np.stack([resize(im, (height, width), order=1, anti_aliasing=True, preserve_range=True)
                           for im in images])
        images = np.clip(np.round(images), 0, 255).astype(np.uint8)
    if images.shape[-1] != channels:
        images = np.repeat(images.mean(-1, keepdims=True).round().astype(np.uint8), channels, axis=-1)
    return ImageSet(images, np.full(len(images), -1), [], source=f"{source}->{height}x{width}x{channels}")


def entries_ahead(settings: OODSettings, ahead: Ahead) -> list[Entry]:
    """The far and the pure-noise OOD sets' features through each prepared replicate's backbone (before any is
    prepared: their part no replicate changes), for the background to compute while earlier stages run. The
    noised test set is the corruption stage's."""
    far, noise = far_ood_set(ahead.shared.dataset, ahead.shared.test, ahead.data_seed)[1], \
        uniform_noise_set(ahead.shared.test, ahead.data_seed)
    sources = [p.features for p in ahead.replicates] or [ahead.shared.common_features()]
    return [Entry(source, images) for source in sources for images in (far, noise)]


STAGE = Stage("ood", ("ood",), run_stage, ood_section, enabled=lambda own: own.ood,
              label=lambda own: "out-of-distribution detection", ahead=entries_ahead)
