"""Test-time BatchNorm adaptation in `vfe run` (`--test-time-bn`): heads on features whose backbone BatchNorm
adapts to each batch (`vfe.backbones.adapt_bn`), as heads "<head>+bn".

A "+bn" head is its twin's head (same class, parameters and seed) fitted on adapted features of the
training images (batches of the training set, by the same rule), then evaluated on adapted batches of
the clean test set and of every corrupted one. Refitting is what makes this Schneider et al.'s method in
a transfer setting: there the network's running statistics are those of the data its classifier was
trained on, so a clean test batch normalised with its own statistics lands where training data did. Here
the heads were trained on digits or clothes normalised with ImageNet's statistics; evaluating them as they
are on adapted features moves every test batch, clean ones included, away from what they were fitted on
(measured in docs/test_time_bn.md: digits, Gaussian noise s5, 0.61 -> 0.13). With N -> inf the adapted
features are the plain ones and the "+bn" head is its twin again.

Heads fitted on corrupted or AugMix views of the training images are left out: their "+bn" twins would need
those views adapted too. The corruption stage fits and runs the rest (`vfe.experiment.stages.corruptions.stage.run_adapted`);
the attack stage attacks them as heads that adapt at test time (ATTACKS; `vfe.experiment.stages.adversarial.stage._attack`);
the OOD stage leaves them out, for the reason in NOT_EVALUATED (both written into results.json).
"""
from __future__ import annotations

import time

import numpy as np
from sklearn.base import clone

from vfe.backbones import Backbone
from vfe.backbones.adapt_bn import AdaptedFeatures
from vfe.experiment.prepare import Prepared
from vfe.experiment.stages.corruptions.settings import CorruptionSettings
from vfe.features.source import BackboneFeatures, FeatureSource
from vfe.heads.registry import is_augmented, is_augmix

SUFFIX = "+bn"
COST_IMAGES = 512  # images timed through both paths for the cost record
ATTACKS = ("the attacked images form one test batch (adapted in batches as always) and the attacker perturbs all "
           "of them; worst case per image over: direct (gradient through the adapted network and its batch "
           "statistics), transfer (crafted on the plain backbone and the head it was refitted from), BPDA "
           "(adapted forward, plain backward)")
NOT_EVALUATED = {
    "ood": "a batch of out-of-distribution images normalised with its own statistics looks in-distribution "
           "by construction; scoring it fairly needs batches that mix in- and out-of-distribution images, not "
           "measured here",
}


def base_head(name: str) -> str:
    """The fitted head a result belongs to: "vfe+bn" -> "vfe", "vfe" -> "vfe"."""
    return name.removesuffix(SUFFIX)


def refittable(head: str) -> bool:
    """Whether a head can have a "+bn" twin: it is fitted on the training features alone."""
    return not (is_augmented(head) or is_augmix(head))


def fit_adapted(models: dict, heads: list[str] | None, X: np.ndarray, y: np.ndarray
                ) -> tuple[dict, dict[str, list[float]]]:
    """{(head + "+bn", seed): a clone of the fitted head (same parameters and seed) fitted on the adapted training
    features X}, for the chosen heads (every refittable one when `heads` is None); and the fit seconds."""
    fitted, seconds = {}, {}
    for (head, seed), model in models.items():
        if (head in heads) if heads is not None else refittable(head):
            started = time.perf_counter()
            fitted[(head + SUFFIX, seed)] = clone(model).fit(X, y)
            seconds.setdefault(head + SUFFIX, []).append(round(time.perf_counter() - started, 3))
    return fitted, seconds


def adapted_source(settings: CorruptionSettings, prepared: Prepared,
                   progress: bool = True) -> tuple[AdaptedFeatures, FeatureSource]:
    """The adapted extractor on the run's backbone (the fine-tuned one under the reference protocol), and a
    feature source that caches its features in the run's cache, under their own fingerprint."""
    extractor = AdaptedFeatures(prepared.backbone, settings.bn_batch_size, settings.bn_prior)
    return extractor, BackboneFeatures(prepared.cache, extractor, progress)


def extraction_cost(backbone: Backbone, extractor: AdaptedFeatures, images, n: int = COST_IMAGES) -> dict:
    """Images per second through the plain backbone (its fast path: traced on CPU, prefetching) and with adapted
    BatchNorm, on the same first `n` images, neither from the cache: what adaptation costs."""
    sample = np.asarray(images[:n])
    backbone.extract(sample[:2 * backbone.settings.batch_size], progress=False)  # trace and warm up, untimed
    started = time.perf_counter()
    backbone.extract(sample, progress=False)
    plain = time.perf_counter() - started
    started = time.perf_counter()
    extractor.extract(sample)
    adapted = time.perf_counter() - started
    return {"images": len(sample), "plain_images_per_second": round(len(sample) / plain, 1),
            "adapted_images_per_second": round(len(sample) / adapted, 1), "slowdown": round(adapted / plain, 2)}


def record(extractor: AdaptedFeatures, models: dict, seconds: dict, fit_seconds: dict, cost: dict) -> dict:
    """results.json's "test_time_bn": what was adapted and how, which heads, what it cost, what was left out."""
    return {"heads": list(dict.fromkeys(head for head, _ in models)), "batch_size": extractor.batch_size,
            "prior": extractor.prior, "adaptation": extractor.describe(), "batchnorm_layers": extractor.n_layers,
            "fingerprint": extractor.fingerprint(), "heads_refitted_on": "adapted features of the training images",
            "seconds": seconds, "fit_seconds": fit_seconds, "cost": cost, "attacks": ATTACKS,
            "not_evaluated": NOT_EVALUATED}
