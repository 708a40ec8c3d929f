"""Corrupt the test images (every corruption x severity), extract their features through the cache,
and measure every head on them; then the corruption metrics (mCE with the linear head as normaliser).
With `--test-time-bn` the chosen heads are measured again on features from test-time-adapted BatchNorm,
as heads "<head>+bn" (`vfe.experiment.stages.corruptions.adapted_bn`).
"""
from __future__ import annotations

import copy
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from tqdm.auto import tqdm

from vfe.backbones import resolve_device
from vfe.data.types import ImageSet
from vfe.experiment.background import Ahead, Entry
from vfe.experiment.clean import evaluate_clean
from vfe.experiment.config import BackboneSettings
from vfe.experiment.context import RunContext
from vfe.experiment.prepare import Prepared
from vfe.experiment.stages import Stage
from vfe.experiment.stages.corruptions import adapted_bn
from vfe.experiment.stages.corruptions.section import corruption_section
from vfe.experiment.stages.corruptions.settings import CorruptionSettings, check_corruptions
from vfe.experiment.summary import BASELINE, by_head
from vfe.features.cache import ImageTransform
from vfe.features.ray_engine import ExtractionJob
from vfe.features.source import FeatureSource
from vfe.hardware import usable_cores, user_fixed_threads
from vfe.robustness import metrics as cm
from vfe.robustness.calibration import probability_metrics
from vfe.robustness.corruptions import BENCHMARK_CORRUPTIONS, CORRUPTIONS_VERSION, EXTRA_CORRUPTIONS, corrupt


def corruption_names(settings: CorruptionSettings) -> list[str]:
    """The corruptions a run measures: the settings' list, or all 19 (the 15 benchmark ones first)."""
    if settings.corruptions is not None:
        return list(settings.corruptions)
    return list(BENCHMARK_CORRUPTIONS) + list(EXTRA_CORRUPTIONS)


def run_stage(settings: CorruptionSettings, ctx: RunContext) -> dict:
    """results.json's "corruptions" (per head and replicate, and mCE against the baseline of the same replicate)
    and "corruption_seconds" (per corruption, summed over severities and replicates: a worker's seconds computing
    its sets, `fill_cache`, and the seconds reading them and running the heads); with `test_time_bn` also
    "test_time_bn" and "clean" with the "+bn" heads' clean metrics added (so the summary, the report and the
    leaderboard list them as heads).

    By default the corrupted test sets are the same for every replicate (one noise draw, seeded by the run's base
    seed), so their images (frozen protocol: their features; reference protocol: their activations at the cut)
    come from the cache after the first replicate; each replicate runs them through its own backbone and heads.
    With `noise_per_replicate` each replicate draws its own noise (`RunContext.noise_seed`)."""
    names = corruption_names(settings)
    per_model, clean, seconds, records = {}, dict(ctx.clean), {}, {}
    for r, p in enumerate(ctx.replicates):
        if ctx.cluster.engine == "ray":  # every corrupted test set into the cache at once; the loop below reads them
            from vfe.experiment.fanout import extract_on_cluster

            jobs = [ExtractionJob(p.test, *corruption_transform(name, severity, ctx.noise_seed(r),
                                                                settings.corruption_params))
                    for name in names for severity in settings.severities]
            extract_on_cluster(p.features, jobs, ctx.cluster, progress=ctx.progress,
                               desc=f"corruptions ({len(names)} x {len(settings.severities)} severities, ray)")
            filled = {}
        else:
            filled = fill_cache(p.features, p.test, names, settings.severities, ctx.noise_seed(r),
                                settings.corruption_params, workers=cache_workers(ctx.backbone_settings),
                                progress=ctx.progress)
        measured = run_corruptions(p.features, p.test, ctx.models_of(r), names, settings.severities,
                                   ctx.noise_seed(r), settings.corruption_params)
        per_model.update(measured["per_model"])
        for name, t in measured["seconds"].items():
            seconds[name] = round(seconds.get(name, 0.0) + filled.get(name, 0.0) + t, 3)
        if settings.test_time_bn:
            adapted = run_adapted(settings, ctx, p, r, names)
            per_model.update(adapted["per_model"])
            clean.update(adapted["clean"])
            records[str(r)] = adapted["record"]
    extra = {"clean": by_head(clean), "test_time_bn": records} if settings.test_time_bn else {}
    return {"corruptions": corruption_summary(per_model, clean, settings.severities),
            "corruption_seconds": seconds, **extra}


def run_adapted(settings: CorruptionSettings, ctx: RunContext, p: Prepared, replicate: int, names: list[str]
                ) -> dict:
    """One replicate's "+bn" heads, refitted on adapted training features: {"per_model": as run_corruptions',
    "clean": {(head+bn, replicate): metrics} on adapted clean test batches, "record": its "test_time_bn" entry}."""
    extractor, source = adapted_bn.adapted_source(settings, p, ctx.progress)
    started = time.perf_counter()
    models, fit_seconds = adapted_bn.fit_adapted(ctx.models_of(replicate), settings.bn_heads,
                                                 source(p.train, desc="train (adapted BatchNorm)"), p.train.labels)
    clean, _ = evaluate_clean(models, source(p.test, desc="test (adapted BatchNorm)"), p.test.labels)
    measured = run_corruptions(source, p.test, models, names, settings.severities, ctx.noise_seed(replicate),
                               settings.corruption_params)
    seconds = {"total": round(time.perf_counter() - started, 3), "per_corruption": measured["seconds"]}
    cost = adapted_bn.extraction_cost(p.backbone, extractor, p.test.images)
    ctx.adapted[replicate] = extractor, models  # the attack stage attacks them
    return {"per_model": measured["per_model"], "clean": clean,
            "record": adapted_bn.record(extractor, models, seconds, fit_seconds, cost)}


def cache_workers(backbone: BackboneSettings) -> int:
    """How many corrupted test sets `fill_cache` computes at once: one per usable core on the CPU (one per thread
    the user allowed, with OMP_NUM_THREADS / MKL_NUM_THREADS), one where the network runs on a GPU."""
    if resolve_device(backbone.device).type != "cpu":
        return 1
    return torch.get_num_threads() if user_fixed_threads() else usable_cores()


def fill_cache(features: FeatureSource, test: ImageSet, names: list[str], severities: list[int], seed: int,
               params: str, workers: int, progress: bool = True) -> dict[str, float]:
    """Every corrupted test set's features into the run's cache, `workers` sets at a time, each worker a thread
    running the network at one intra-op thread; `run_corruptions` then reads them all from the cache.

    Why: the network's small convolutions (EfficientNet-Lite at 112 px, and the reference protocol's top at
    4 x 4) keep two intra-op threads on one batch well under 2x one thread's speed, while two batches on one
    thread each keep both cores busy (benchmarks/bench_corruption_workers.py). The features are those of the
    sequential path bit for bit: extraction returns one intra-op thread's bits at any count
    (`vfe.backbones.engine.OneThreadBits`), and each set's noise is seeded by its own name, severity and rows.
    Returns {corruption: seconds its sets took in their workers} ({} when there is one worker: nothing is done)."""
    jobs = [(name, severity) for name in names for severity in severities]
    if workers < 2 or len(jobs) < 2:
        return {}
    quiet = copy.copy(features)
    quiet.progress = False  # one bar for all the sets, below

    def one(job: tuple[str, int]) -> float:
        torch.set_num_threads(1)  # this thread's own setting (OpenMP's is per thread)
        started = time.perf_counter()
        corrupted_features(quiet, test, *job, seed, params)
        return time.perf_counter() - started

    seconds: dict[str, float] = {}
    with ThreadPoolExecutor(min(workers, len(jobs))) as pool, \
            tqdm(total=len(jobs), desc=f"corrupted test sets ({workers} at a time)", unit="set",
                 disable=not progress, dynamic_ncols=True) as bar:
        for (name, _), took in zip(jobs, pool.map(one, jobs), strict=True):
            seconds[name] = seconds.get(name, 0.0) + took
            bar.update()
    return seconds


def entries_ahead(settings: CorruptionSettings, ahead: Ahead) -> list[Entry]:
    """The corrupted test sets' part that no replicate changes (the reference protocol's activations at the cut,
    the frozen protocol's features), every noise draw the replicates use: what the background computes while the
    replicates are fine-tuned and their heads fitted."""
    common = ahead.shared.common_features()
    return [Entry(common, ahead.shared.test, corruption_transform, (name, severity, seed, settings.corruption_params))
            for seed in dict.fromkeys(ahead.noise_seeds)
            for name in corruption_names(settings) for severity in settings.severities]


def corruption_transform(name: str, severity: int, seed: int, params: str) -> tuple[ImageTransform, str]:
    """The image transform of one corruption x severity and the cache key naming it."""

    def transform(images: np.ndarray, first_row: int) -> np.ndarray:
        # the seed depends on the shard's first row, so every shard draws its own noise
        return corrupt(images, name, severity, seed=seed + first_row, params=params)

    return transform, f"corrupt:{name}:s{severity}:seed{seed}:params={params}:v{CORRUPTIONS_VERSION}"


def corrupted_features(features: FeatureSource, test: ImageSet, name: str, severity: int, seed: int,
                       params: str) -> np.ndarray:
    """Features of the test images under one corruption (from the run's feature source, cached under a key
    naming the corruption)."""
    transform, key = corruption_transform(name, severity, seed, params)
    return features(test, transform=transform, transform_key=key, desc=f"{name} s{severity}")


def run_corruptions(features: FeatureSource, test: ImageSet, models: dict, names: list[str],
                    severities: list[int], seed: int, params: str) -> dict:
    """{(head, seed): {corruption: {severity: metrics}}} plus per-corruption seconds."""
    table: dict = {key: {} for key in models}
    seconds: dict[str, float] = {}
    for name in names:
        start = time.perf_counter()
        for severity in severities:
            X = corrupted_features(features, test, name, severity, seed, params)
            for key, model in models.items():
                table[key].setdefault(name, {})[severity] = probability_metrics(model.predict_proba(X),
                                                                                test.labels)
        seconds[name] = round(time.perf_counter() - start, 3)
    return {"per_model": table, "seconds": seconds}


def corruption_summary(per_model: dict, clean: dict, severities: list[int]) -> dict:
    """Per head and replicate: accuracy per corruption/severity, mean corruption accuracy, CE, mCE, relative mCE
    and summed relative mCE (docs/leaderboard.md).

    The normaliser of CE is the baseline head of the same replicate (Hendrycks & Dietterich
    normalise by AlexNet; here the classic transfer head plays that role).
    """
    out: dict = {}
    for (head, replicate), table in per_model.items():
        errors = error_table(table)
        clean_error = 1.0 - clean[(head, replicate)]["accuracy"]
        base_key = (BASELINE, replicate)
        row = {"accuracy": {c: {str(s): m["accuracy"] for s, m in sev.items()} for c, sev in table.items()},
               "nll": {c: {str(s): m["nll"] for s, m in sev.items()} for c, sev in table.items()},
               "ece": {c: {str(s): m["ece"] for s, m in sev.items()} for c, sev in table.items()},
               "mean_accuracy": 1.0 - cm.mean_corruption_error(errors, [c for c in errors
                                                                         if c in BENCHMARK_CORRUPTIONS]),
               "mean_accuracy_all": 1.0 - cm.mean_corruption_error(errors, list(errors)),
               "mean_nll": float(np.mean([m["nll"] for sev in table.values() for m in sev.values()])),
               "mean_ece": float(np.mean([m["ece"] for sev in table.values() for m in sev.values()]))}
        if base_key in per_model:
            base_errors = error_table(per_model[base_key])
            base_clean = 1.0 - clean[base_key]["accuracy"]
            bench = [c for c in errors if c in BENCHMARK_CORRUPTIONS]
            row["CE"] = {c: cm.corruption_error(errors[c], base_errors[c]) for c in errors}
            row["mCE"] = cm.mce(errors, base_errors, bench)
            row["relative_mCE"] = cm.relative_mce(errors, clean_error, base_errors, base_clean, bench)
            # defined wherever the baseline degrades overall (relative mCE needs it on every corruption)
            row["summed_relative_mCE"] = cm.summed_relative_mce(errors, clean_error, base_errors, base_clean, bench)
        out.setdefault(head, {})[str(replicate)] = row
    return {"per_head": out, "normaliser": BASELINE, "severities": list(severities),
            "benchmark_corruptions": [c for c in BENCHMARK_CORRUPTIONS]}


def error_table(per_corruption: dict) -> dict[str, dict[int, float]]:
    """{corruption: {severity: error}} from {corruption: {severity: metrics}}."""
    return {c: {s: 1.0 - m["accuracy"] for s, m in sev.items()} for c, sev in per_corruption.items()}


STAGE = Stage("corruptions", ("corruptions",), run_stage, corruption_section,
              enabled=lambda own: own.corruptions != [],
              label=lambda own: f"corruptions ({len(corruption_names(own))} x {len(own.severities)} severities)",
              check=check_corruptions, ahead=entries_ahead)
