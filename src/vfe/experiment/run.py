"""The main job: the reference experiment, then its robustness benchmark, stage by stage.

    load data and backbone -> per replicate: subset -> (fine-tune) -> cached features -> heads
        -> clean accuracy -> the robustness stages of vfe.experiment.stages (corruptions, attacks, OOD), each over
        every replicate -> summary (paired over replicates) -> leaderboard -> report

Every stage is timed; every expensive artefact comes from the feature cache, so a re-run with the same
settings skips extraction and gives the same numbers. The run folder is locked while the run writes it, and
the run is written beside it and put in its place only when complete (vfe.rundir): a run stopped anywhere
leaves the folder as it was, and the same command run again resumes from the cache.
"""
from __future__ import annotations

import platform
import time
from dataclasses import replace
from pathlib import Path

import torch

from vfe.backbones import resolve_device
from vfe.experiment.augment import training_record
from vfe.experiment.background import Ahead, Background, Entry
from vfe.experiment.best import BestDetector, check_detector_room, save_best
from vfe.experiment.clean import evaluate_clean
from vfe.experiment.config import check_run_dir, check_trainable, compared_results
from vfe.experiment.context import RunContext
from vfe.experiment.fanout import cluster_session
from vfe.experiment.fit import TrainingDraw, fit_replicates
from vfe.experiment.leaderboard import leaderboard
from vfe.experiment.prepare import Prepared, load_shared, prepare_replicate, skipped_files, write_skipped
from vfe.experiment.processes import local_workers, start_early
from vfe.experiment.replicates import FIXED, NOISE, REDRAWN, Replicate, noise_seed, replicates
from vfe.experiment.run_settings import RunSettings, check
from vfe.experiment.stages.corruptions.adapted_bn import base_head
from vfe.experiment.stages.registry import STAGES
from vfe.experiment.stages.sections import SECTIONS
from vfe.experiment.summary import by_head, summarise
from vfe.experiment.timer import StageTimer, peak_rss_mb
from vfe.heads.registry import expand_heads, is_augmented, is_augmix
from vfe.io import write_json
from vfe.report import write_report
from vfe.report.inputs import report_inputs
from vfe.report.protocols import comparable
from vfe.report.results_check import check_written
from vfe.report.schema import SCHEMA_VERSION
from vfe.rundir import claimed, staged_folder


def run(settings: RunSettings, overwrite: bool = False, log=print, wait: bool = False) -> Path:
    """Run every stage; write results.json and the report into runs/<name>/. Returns that folder.

    Another run (or sweep) writing the same folder makes this an error naming it, or with `wait` a wait for it.
    """
    check(settings, overwrite)  # every cheap check before any image is loaded
    with claimed(settings.run_dir, "--name", wait, log):
        check_run_dir(settings.run_dir, overwrite)  # again: the run that held the lock may have finished
        with staged_folder(settings.run_dir, marker="results.json") as out:
            write_run(settings, out, log)
    return settings.run_dir


def write_run(settings: RunSettings, out: Path, log) -> None:
    """Every stage of the run, its results.json and its report, written into `out`."""
    heads = expand_heads(settings.heads.heads)
    device = str(resolve_device(settings.backbone.device))
    timer = StageTimer(log=log)
    started = time.perf_counter()

    # --engine ray: connected before the data is prepared (a wrong --address costs nothing) and kept for every
    # stage (heads x seeds, corruption shards and attacked heads go to the cluster); local: connects to nothing
    with cluster_session(settings.cluster):
        measured, models, prepared, detector = measure(settings, heads, device, out, timer, log)
        results = {"schema_version": SCHEMA_VERSION, **measured}
    results["summary"] = summarise(results)
    results["leaderboard"] = leaderboard(results, {h: base_head(h) in heads and is_augmented(base_head(h))
                                                   for h in results["clean"]})  # "vfe-aug+bn" saw what vfe-aug saw
    if settings.compare_with is not None:
        results["compared_run"] = {"path": settings.compare_with,
                                   **comparable(compared_results(settings.compare_with))}
    if settings.save_best:  # the best head that needs nothing at test time, as a pipeline + its card
        with timer.timed("save best pipeline"):
            save_best(results, models, prepared, out, log, shown=settings.run_dir, detector=detector)
    results["timings"] = {**timer.seconds, "total": round(time.perf_counter() - started, 3)}
    results["peak_rss_mb"] = peak_rss_mb()
    results["peak_rss_mb_after_stage"] = timer.peak_rss_mb
    results["cpu_percent_per_stage"] = timer.cpu_percent  # 200 = both cores of a 2-core machine busy all along
    results = check_written(results)  # vfe.report.schema's shape, or a bug naming the field
    write_json(out / "results.json", results)
    with timer.timed("report"):
        write_report(out, results, SECTIONS)


def measure(settings: RunSettings, heads: list[str], device: str, out: Path, timer: StageTimer, log
            ) -> tuple[dict, dict, list[Prepared], BestDetector | None]:
    """Prepare and fit every replicate, evaluate clean, run every enabled robustness stage: results.json's
    measurements (the summary, leaderboard and timings are added from them), the fitted heads {(head, replicate):
    model}, each replicate's prepared draw (--save-best saves one of them) and the detector --save-best fits."""
    augmented = any(is_augmented(h) for h in heads)
    draws = replicates(settings.data.data_seed, settings.heads.replicates)
    shared = load_shared(settings.data, settings.backbone, settings.cache_dir, timer, log, settings.finetune)
    check_trainable(shared.pool, shared.dataset, settings.data.n_train)  # before any feature is extracted
    detector = None
    if settings.save_best and settings.best_detector != "none":
        detector = BestDetector(settings.best_detector, settings.best_coverage, shared.pool, settings.data.n_train)
        check_detector_room(detector, draws[0].seed)
    workers = local_workers(device) if settings.cluster.engine == "local" else 1
    start_early(workers)  # the worker processes' imports, meanwhile
    stages = [(stage, own) for stage in STAGES if stage.enabled(*(own := stage.settings_of(settings)))]
    noise_seeds = [noise_seed(rep.seed, settings.data.data_seed, settings.corruptions.noise_per_replicate)
                   for rep in draws]
    ahead = Ahead(shared, [], noise_seeds, settings.data.data_seed)
    with Background(enabled=workers > 1, log=log) as background:  # idle cores compute what later stages read
        background.start(entries_ahead(stages, ahead), "fine-tuning and fitting")
        prepared, training = [], []
        for rep in draws:
            p = prepare_replicate(shared, settings.data.n_train, rep.seed, finetune=settings.finetune,
                                  augment_family=settings.heads.augment_family if augmented else None,
                                  corruption_params=settings.corruptions.corruption_params,
                                  augmix_views=settings.heads.augmix_views if any(map(is_augmix, heads)) else None,
                                  progress=settings.progress, timer=timer, log=log,
                                  label=rep.label if len(draws) > 1 else "")
            training.append(TrainingDraw(rep.index, rep.seed, p.X_train, p.train.labels, p.X_aug, p.X_views))
            p.X_aug = p.X_views = None  # the draw holds the views' features (hundreds of MB) until the heads are fit
            prepared.append(p)
        # every replicate's heads at once: two fits side by side keep both cores busy (vfe.experiment.processes)
        with timer.timed("fit heads"):
            models, fit_seconds = fit_replicates(settings.heads, heads, training, device=device,
                                                 progress=settings.progress, cluster=settings.cluster, workers=workers)
        del training
        skipped = skipped_files(shared.pool, shared.test)
        write_skipped(out / "skipped_files.txt", skipped, log=lambda _: None)  # `out` is staged: logged with its place
        if skipped:
            log(f"[vfe] skipped {len(skipped)} unreadable file(s); the list is in "
                f"{settings.run_dir / 'skipped_files.txt'}")
        with timer.timed("clean evaluation"):
            clean, clean_probs = {}, {}
            for p, rep in zip(prepared, draws):
                c, probs = evaluate_clean({k: m for k, m in models.items() if k[1] == rep.index}, p.X_test,
                                          p.test.labels)
                clean.update(c)
                clean_probs.update(probs)

        results = {"setting": setting_of(settings, heads, prepared, draws, device), "config": settings.to_dict(),
                   "clean": by_head(clean), "fit_seconds": fit_seconds,
                   "histories": {f"{h}/replicate{r}": getattr(m, "history_", None) for (h, r), m in models.items()}}
        augmentation = training_record(heads, prepared[0].augmentation, prepared[0].augmix)
        if augmentation is not None:
            results["augmentation"] = augmentation
        if prepared[0].finetune is not None:
            results["finetune"] = {str(rep.index): p.finetune for p, rep in zip(prepared, draws)}

        ctx = RunContext(prepared, heads, models, clean, clean_probs, device, settings.data.data_seed,
                         settings.corruptions.corruption_params, settings.progress, timer, settings.cluster,
                         settings.backbone, settings.corruptions.noise_per_replicate)
        ahead = replace(ahead, replicates=prepared)
        for i, (stage, own) in enumerate(stages):
            background.start(entries_ahead(stages[i + 1:], ahead), stage.name)  # what the stages after it read
            with timer.timed(stage.label(*own)):
                results.update(stage.run(*own, ctx))
    results["background"] = background.record
    results.update(report_inputs(models, shared.test, clean_probs))  # the report reads results.json only
    return results, models, prepared, detector


def entries_ahead(stages: list, ahead: Ahead) -> list[Entry]:
    """The cache entries the given (stage, its settings) pairs will read that the background may compute, in the
    order the stages run."""
    return [entry for stage, own in stages if stage.ahead is not None for entry in stage.ahead(*own, ahead)]


def setting_of(settings: RunSettings, heads: list[str], prepared: list[Prepared], draws: list[Replicate],
               device: str) -> dict:
    """What a reader needs to interpret every number of the run."""
    bb = prepared[0].backbone
    parts = (prepared[0].finetune or {}).get("runtime")  # the reference protocol: bottom and top, each its own
    runtime = bb.runtime if parts is None else ", ".join(f"{part} {name}" for part, name in parts.items())
    return {"dataset": prepared[0].dataset, "protocol": settings.finetune.protocol, "backbone": bb.name,
            "weights": settings.backbone.weights, "runtime": runtime,
            "image_size": int(bb.data_config["input_size"][-1]), "feature_dim": int(bb.feature_dim),
            "n_train": len(prepared[0].train), "n_test": len(prepared[0].test), "replicates": len(draws),
            "replicate_seeds": [rep.seed for rep in draws],
            "redrawn_per_replicate": [*REDRAWN, *(NOISE if settings.corruptions.noise_per_replicate else [])],
            "fixed_across_replicates": [f for f in FIXED if not (settings.corruptions.noise_per_replicate
                                                                 and f in NOISE)],
            "heads": heads, "data_seed": settings.data.data_seed, "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "machine": f"{platform.machine()}, {torch.get_num_threads()} threads", "device": device}
