"""Selective classification under corruption: what a classifier's error becomes when it may abstain on the
inputs a detector finds least familiar (Geifman & El-Yaniv 2017), clean and per corruption family.

For each replicate, each classifier head of `selective_heads` and each detector:

    msp          the head's own negated max softmax probability (Hendrycks & Gimpel 2017)
    mahalanobis  the backbone features' Mahalanobis distance to the closest class mean (Lee et al. 2018; the
                 shrunk covariance a pipeline's detector uses, fitted on the replicate's training features)
    vfe-recon    the replicate's VFE head's reconstruction error of the features
    vfe-elbo     its negative ELBO

(the VFE detectors where the run fitted the `vfe` head) ranks the inputs of a group; the head answers the
lowest-scoring share and abstains on the rest. A group pools every image of its corrupted test sets, every
severity, into one stream (a deployed model meets them mixed, and a good detector abstains first on the
severities where the head errs): "clean"; each family's benchmark corruptions ("noise", "blur", "weather",
"digital"); "held_out", every benchmark corruption the head did not train on (the leaderboard's held-out set;
all 15 for heads that saw none). No threshold is fitted: risk at coverage c is the error rate over the
ceil(c n) lowest-scoring inputs of the group itself (`vfe.robustness.selective`), as the literature reports it.

Every detector is compared with max softmax of the same head, replicate by replicate (paired t over
replicates: `vfe.robustness.stats.paired_comparison`, lower risk is better): "vs_msp".

The corrupted test sets' features come from the feature cache, which the corruption stage filled: this
stage extracts nothing. Only the sets some group pools are scored: the 4 extra corruptions belong to none.
"""
from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from vfe.experiment.context import RunContext
from vfe.experiment.stages import Stage
from vfe.experiment.stages.corruptions.settings import CorruptionSettings
from vfe.experiment.stages.corruptions.stage import corrupted_features, corruption_names
from vfe.experiment.stages.selective.section import selective_section
from vfe.experiment.stages.selective.settings import SelectiveSettings, check_selective
from vfe.heads.registry import is_augmented
from vfe.robustness.corruptions import BENCHMARK_CORRUPTIONS
from vfe.robustness.corruptions.registry import families
from vfe.robustness.detectors import VFE_METHODS
from vfe.robustness.ood import max_softmax_score
from vfe.robustness.selective import COVERAGES, aurc, risk_key, selective_risk
from vfe.robustness.stats import mean_std, paired_comparison

REFERENCE_DETECTOR = "msp"
VFE_HEAD = "vfe"  # whose reconstruction error and ELBO the VFE detectors are


METRICS = (*(risk_key(c) for c in COVERAGES), "aurc")


def selective_heads(settings: SelectiveSettings, ctx: RunContext) -> list[str]:
    """The heads of `selective_heads` that the run fitted, in the run's order."""
    return [h for h in ctx.heads if h in settings.selective_heads]


def groups_of(names: list[str], seen: list[str]) -> dict[str, list[str]]:
    """{group: its corruptions} of the measured corruptions `names` for a head that trained on `seen`: each
    family's benchmark corruptions, and "held_out", the benchmark corruptions outside `seen`. Empty groups
    are left out."""
    bench = [c for c in names if c in BENCHMARK_CORRUPTIONS]
    out = {family: [c for c in bench if c in members] for family, members in families().items()}
    out["held_out"] = [c for c in bench if c not in seen]
    return {g: cs for g, cs in out.items() if cs}


def run_stage(settings: SelectiveSettings, corruptions: CorruptionSettings, ctx: RunContext) -> dict:
    """results.json's "selective": {"per_head": {head: {replicate: {group: {detector: {risk_80, risk_90,
    aurc}}}}}, "summary": the same with mean/std over replicates, "vs_msp": {head: {group: {detector:
    {metric: paired comparison}}}}, "groups": {head: {group: its corruptions}} ("clean" aside), "detectors",
    "coverages", "n_images": {head: {group: images in its stream, per replicate}}}."""
    names, severities = corruption_names(corruptions), list(corruptions.severities)
    heads = selective_heads(settings, ctx)
    seen = list((ctx.replicates[0].augmentation or {}).get("train_corruptions", []))
    head_groups = {h: groups_of(names, seen if is_augmented(h) else []) for h in heads}
    scored = {c for groups in head_groups.values() for cs in groups.values() for c in cs}  # the 4 extra: none
    per_head: dict = {h: {} for h in heads}
    detectors: list[str] = []
    n_images: dict = {h: {} for h in heads}
    for r, p in enumerate(ctx.replicates):
        models = {h: ctx.models[(h, r)] for h in heads}
        vfe = ctx.models.get((VFE_HEAD, r))
        score_features = _feature_detectors(ctx.mahalanobis(r), vfe)
        keys = ["clean", *((name, severity) for name in names if name in scored for severity in severities)]
        per_set: dict = {h: {} for h in heads}  # {head: {set: (errors, {detector: scores})}}, one set at a time
        with torch.random.fork_rng(devices=[]):  # the ELBO samples z: seeded by the replicate
            torch.manual_seed(p.seed)
            for key in tqdm(keys, desc=f"selective classification{f' (replicate {r})' if r else ''}",
                            unit="set", disable=not ctx.progress, dynamic_ncols=True):
                X = p.X_test if key == "clean" else corrupted_features(
                    p.features, p.test, *key, ctx.noise_seed(r), corruptions.corruption_params)
                shared = {d: np.asarray(f(X), dtype=np.float64) for d, f in score_features.items()}
                for h, model in models.items():
                    probs = model.predict_proba(X)
                    errors = (model.classes_[probs.argmax(1)] != p.test.labels).astype(np.float64)
                    per_set[h][key] = errors, {REFERENCE_DETECTOR: max_softmax_score(probs), **shared}
        detectors = [REFERENCE_DETECTOR, *score_features]
        for h in heads:
            groups = {"clean": ["clean"], **{g: [(c, s) for c in cs for s in severities]
                                              for g, cs in head_groups[h].items()}}
            row = {}
            for group, keys in groups.items():
                errors = np.concatenate([per_set[h][k][0] for k in keys])
                n_images[h][group] = len(errors)
                row[group] = {d: _metrics(np.concatenate([per_set[h][k][1][d] for k in keys]), errors)
                              for d in detectors}
            per_head[h][str(r)] = row
    return {"selective": {"per_head": per_head, "summary": summarise(per_head), "vs_msp": versus_msp(per_head),
                          "groups": head_groups,
                          "detectors": detectors, "coverages": list(COVERAGES), "n_images": n_images}}


def _feature_detectors(mahalanobis, vfe) -> dict:
    """{detector: features -> scores} of the detectors that read the features alone (the head's max softmax is
    added per head): Mahalanobis (the replicate's fitted scorer), and the VFE's where the replicate has a VFE
    head."""
    out = {"mahalanobis": mahalanobis.score}
    if vfe is not None:
        out.update({name: getattr(vfe, method) for name, method in VFE_METHODS.items()})
    return out


def _metrics(scores: np.ndarray, errors: np.ndarray) -> dict[str, float]:
    return {**{risk_key(c): selective_risk(scores, errors, c) for c in COVERAGES}, "aurc": aurc(scores, errors)}


def summarise(per_head: dict) -> dict:
    """{head: {group: {detector: {metric: mean/std over replicates}}}}."""
    out: dict = {}
    for h, reps in per_head.items():
        first = next(iter(reps.values()), {})
        out[h] = {g: {d: {m: mean_std([reps[r][g][d][m] for r in reps]) for m in METRICS} for d in dets}
                  for g, dets in first.items()}
    return out


def versus_msp(per_head: dict) -> dict:
    """{head: {group: {detector: {metric: paired comparison with the head's max softmax}}}} (lower is better)."""
    out: dict = {}
    for h, reps in per_head.items():
        first = next(iter(reps.values()), {})
        out[h] = {g: {d: {m: paired_comparison({int(r): reps[r][g][d][m] for r in reps},
                                               {int(r): reps[r][g][REFERENCE_DETECTOR][m] for r in reps},
                                               higher_is_better=False) for m in METRICS}
                      for d in dets if d != REFERENCE_DETECTOR}
                  for g, dets in first.items()}
    return out


STAGE = Stage("selective", ("selective_classification", "corruptions"), run_stage, selective_section,
              enabled=lambda own, corr: corr.corruptions != [] and own.selective and bool(own.selective_heads),
              label=lambda own, corr: "selective classification",
              check=lambda own, corr, heads: check_selective(own))
