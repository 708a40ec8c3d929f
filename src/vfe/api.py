"""The Python API: the same operations as the command line, as functions.

    >>> from vfe.api import fit_pipeline, evaluate_pipeline
    >>> pipe, train_acc = fit_pipeline("digits", head="vfe", image_size=64)
    >>> pipe.save("digits-vfe.safetensors")
    >>> evaluate_pipeline("digits-vfe.safetensors", "digits")["accuracy"]

The main job (the robustness benchmark) is `run(RunSettings(...))`; `vfe.experiment.run_settings` has the
settings (each stage's own in vfe.experiment.stages), `quick_settings()` the `--quick` ones. The reference's protocol (fine-tune the top first):

    >>> run(with_overrides(quick_settings(), {"protocol": "reference", "name": "quick-reference"}))

Your own classifier through every stage, beside the linear head:

    >>> results, folder = benchmark(MyClassifier, data="digits", n_train=500, n_attack=0)
"""
from __future__ import annotations

import hashlib
import inspect
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from vfe import defaults
from vfe.backbones import Backbone, create_backbone
from vfe.backbones.weights import WeightsInfo
from vfe.data import IMAGE_SUFFIXES, load_train_test, read_image
from vfe.data.errors import MissingDataError
from vfe.data.split import balanced_subset
from vfe.errors import DataError, SettingsError
from vfe.experiment.augment import augmix_features
from vfe.experiment.config import (
    PROTOCOLS,
    FinetuneSettings,
    SweepSettings,
    check_finetune,
    check_trainable,
    with_overrides,
)
from vfe.experiment.detection import detection_split
from vfe.experiment.prepare import skipped_files, write_skipped
from vfe.experiment.replicates import replicate_seed
from vfe.experiment.run import run
from vfe.experiment.run_settings import RunSettings, quick_settings
from vfe.experiment.sweep import run_sweep_job
from vfe.features.cache import DEFAULT_SHARD_SIZE, FeatureCache, FeatureSet
from vfe.features.source import BackboneFeatures
from vfe.heads.linear import LinearHead
from vfe.heads.registry import (
    check_params,
    head_class_of,
    is_augmix,
    make_head,
    register_head,
    registered_name,
    resolve_head,
    spec,
)
from vfe.pipeline import Pipeline
from vfe.robustness.augmix import DEFAULT_VIEWS
from vfe.robustness.calibration import probability_metrics
from vfe.robustness.detectors import (
    Abstained,
    Detector,
    check_detector,
    fit_detector,
)
from vfe.robustness.selective import check_coverage

ENGINES = ("local", "ray")


def _check_count(n: int | None, flag: str) -> None:
    """A number of images given by `flag` (the caller's option, named in the error) is 1 or more, or None for all."""
    if n is not None and n < 1:
        raise SettingsError(f"{flag} must be at least 1 (or left out for all images), got {n}")


def _load_split(dataset: str, split: str, data_dir: str | None, skip_bad: bool = False, download: bool = False,
                split_seed: int = 0):
    """Every image of a split (a class folder's test split: 20 % of it, drawn with `split_seed`)."""
    options = {k: v for k, v in (("skip_bad", skip_bad), ("download", download)) if v}
    train, test = load_train_test(dataset, data_dir=data_dir, seed=split_seed, **options)
    return train if split == "train" else test


def _load(dataset: str, split: str, data_dir: str | None, n: int | None, seed: int, skip_bad: bool = False,
          download: bool = False):
    """`n` class-balanced images of a split, chosen as `vfe run` chooses them (vfe.data.split.balanced_subset)."""
    return balanced_subset(_load_split(dataset, split, data_dir, skip_bad, download), n, seed, split)


def extract_features(dataset: str, split: str = "train", backbone: str = defaults.BACKBONE,
                     weights: str = defaults.WEIGHTS, image_size: int | None = defaults.IMAGE_SIZE, data_dir: str | None = None,
                     cache_dir: str | None = None, shard_size: int = DEFAULT_SHARD_SIZE, n: int | None = None,
                     device: str = "auto", progress: bool = True, skip_bad: bool = False,
                     download: bool = False, engine: str = "local", address: str | None = None,
                     actors: int | None = None, cpus_per_actor: float = 1.0,
                     gpus_per_actor: float = 0.0, shared_cache: str = "auto", runtime: str = "auto") -> FeatureSet:
    """Backbone features of a data set split, from the feature cache or computed (and cached) now.

    runtime: "torch", "onnxruntime", "openvino" or "auto" (vfe.backbones.runtimes): what runs the network;
    it enters the cache key. Exported networks are kept under the cache folder's `_models`.

    engine: "local" (this process) or "ray": a pool of `actors` backbone actors on the Ray cluster at
    `address` fills the same cache entry (vfe.features.ray_engine; docs/ray.md). shared_cache: "yes" (every
    node sees `cache_dir`: the actors write it), "no" (their features come back through the object store and
    this process writes the cache) or "auto" (a probe file decides).
    """
    if engine not in ENGINES:
        raise SettingsError(f"engine={engine!r}: expected one of {', '.join(ENGINES)}")
    _check_count(n, "n")
    if engine == "local" and (address is not None or actors is not None or cpus_per_actor != 1.0 or gpus_per_actor
                              or shared_cache != "auto"):
        raise SettingsError("--address, --actors, --cpus-per-actor, --gpus-per-actor and --ray-shared-cache apply to "
                            "--engine ray only")
    if engine == "ray":
        from vfe.features.ray_engine import BackboneSpec, extract_with_ray, import_ray

        import_ray()  # a missing Ray is reported before the data loads
        data = _load(dataset, split, data_dir, n, 0, skip_bad, download)
        spec = BackboneSpec(backbone, weights=weights, image_size=image_size, device=device,
                            settings={"runtime": runtime})
        return extract_with_ray(spec, data, cache_dir=cache_dir, shard_size=shard_size, address=address,
                                actors=actors, cpus_per_actor=cpus_per_actor, gpus_per_actor=gpus_per_actor,
                                progress=progress, desc=f"extract {split} (ray)", shared_cache=shared_cache)
    data = _load(dataset, split, data_dir, n, 0, skip_bad, download)
    cache = FeatureCache(cache_dir)
    bb = create_backbone(backbone, weights=weights, image_size=image_size, device=device, runtime=runtime,
                         model_dir=cache.root / "_models")
    return cache.extract(bb, data, shard_size=shard_size, progress=progress, desc=f"extract {split}")


def fit_pipeline(dataset: str, head: str = "vfe", head_params: dict | None = None,
                 backbone: str = defaults.BACKBONE, weights: str = defaults.WEIGHTS,
                 image_size: int | None = defaults.IMAGE_SIZE, n_train: int | None = None, seed: int = 0,
                 data_dir: str | None = None, cache_dir: str | None = None, device: str = "auto",
                 progress: bool = True, skip_bad: bool = False, download: bool = False,
                 skipped_list: str | os.PathLike | None = None,
                 augmix_views: int = DEFAULT_VIEWS, detector: str | None = None, coverage: float = 0.9,
                 n_val: int | None = None, protocol: str = "frozen",
                 finetune: FinetuneSettings | dict | None = None, replicate: int | None = None,
                 log=print) -> tuple[Pipeline, float]:
    """Fit a head on the training split and return the pipeline and its training accuracy.

    With `skip_bad`, the unreadable files left out are listed in `skipped_list` (when given).
    `head`: a registered name, or "package.module:Class" (vfe.heads.registry.resolve_head).
    A feature head is fitted on (cached) backbone features; an AugMix head (`linear-augmix`, ...) also on
    those of `augmix_views` AugMix views of each training image (cached too). An image head (`finetune`) trains the top of
    the backbone itself; its pipeline holds the fine-tuned backbone and its Dropout -> Dense layer.

    `detector` (vfe.robustness.detectors.DETECTORS: msp, mahalanobis, vfe-recon, vfe-elbo): the pipeline also
    carries a detector whose threshold gives `coverage` on `n_val` validation images outside the training
    subset (`detection_split` says which), so it can abstain (docs/abstention.md).

    `protocol` "reference": first stage 0 of `vfe run --protocol reference` (vfe.experiment.reference.fine_tune:
    the top of the backbone fine-tuned with Dropout -> Dense on the training subset), then the head on the
    fine-tuned backbone's features; the pipeline holds the fine-tuned backbone. `finetune`: FinetuneSettings
    fields other than protocol (a dict such as {"finetune_epochs": 1}, or a FinetuneSettings), their defaults
    the run's. The same settings, data, backbone, n_train and seed as a run's replicate reuse its cached
    fine-tuned weights and features: nothing is trained or extracted again.

    `replicate` r: fit replicate r of a `vfe run` whose --data-seed is `seed` (its training subset, fine-tuning,
    AugMix views and head initialisation are seeded by vfe.experiment.replicates.replicate_seed(seed, r), the
    run's results.json setting.replicate_seeds[r]; an image folder's train/test split by `seed`, as the run's).
    Without it, `seed` itself seeds all that, so `seed=replicate_seed(0, r)` is replicate r of a run with the
    default --data-seed 0. The run's head parameters (its --head-param) must be given as `head_params`.
    """
    settings = finetune_settings(protocol, finetune)
    if replicate is not None and replicate < 0:
        raise SettingsError(f"--replicate must be >= 0 (0 is a run's first replicate), got {replicate}")
    head = resolve_head(head, "--head")  # "package.module:Class": imported and registered now
    reference = settings.protocol == "reference"
    if reference and spec(head).inputs == "images":
        raise SettingsError(f"--head {head} fine-tunes the backbone itself; --protocol reference fine-tunes its top "
                            "first for a head on features: use one or the other")
    head_params = dict(head_params or {})
    check_params(head, head_params)  # unknown names, wrong types and values out of range: before any work
    if not callable(getattr(head_class_of(head), "export_state", None)):
        raise SettingsError(f"--head {head}: a pipeline file holds the head's state as tensors (export_state / "
                            "from_state); subclass vfe.heads.base.Head to save it")
    _check_count(n_train, "--n-train")
    if detector is not None:  # a wrong name, a VFE detector without a VFE head, a bad coverage: before any work
        check_detector(detector, head_class_of(head))
        check_coverage(coverage)
        _check_count(n_val, "--n-val")
    split_seed = seed if replicate is not None else 0  # an image folder's split: a run's is seeded by --data-seed
    if replicate is not None:
        seed = replicate_seed(seed, replicate)
    pool = _load_split(dataset, "train", data_dir, skip_bad, download, split_seed)
    check_trainable(pool, dataset, n_train)  # one class, or fewer images than classes: before any extraction
    if detector is None:
        data, validation = balanced_subset(pool, n_train, seed, "train"), None
    else:
        data, validation = detection_split(pool, n_train, seed, coverage, n_val)
    if reference:
        pipe, score = _fit_on_finetuned(head, head_params, data, settings, backbone, weights, image_size, device,
                                        seed, cache_dir, progress, augmix_views, log)
    elif spec(head).inputs == "images":
        params = {"backbone": backbone, "weights": weights, "image_size": image_size, "device": device,
                  "random_state": seed, **head_params}
        model = make_head(head, **params).fit(data.images, data.labels)
        pipe = finetuned_pipeline(model, data.class_names)
        score = float(np.mean(pipe.head.predict(pipe.features(data.images)) == data.labels))
    else:
        bb = create_backbone(backbone, weights=weights, image_size=image_size, device=device)
        cache = FeatureCache(cache_dir)
        X = cache.extract(bb, data, progress=progress, desc="extract train").array()
        views = {"X_aug": augmix_features(BackboneFeatures(cache, bb, progress), data, augmix_views, seed)[0]} \
            if is_augmix(head) else {}
        model = _fitted_head(head, head_params, seed, X, data.labels, views, str(bb.device))
        pipe, score = Pipeline(bb, model, data.class_names), float(model.score(X, data.labels))
    if detector is not None:
        pipe.detector = _fitted_detector(pipe, detector, data, validation, coverage, FeatureCache(cache_dir),
                                         progress)
    if skipped_list is not None:  # once the fit succeeded; an earlier fit's list never outlives it
        _record_skipped(Path(skipped_list), skipped_files(data))
    return pipe, score


def finetune_settings(protocol: str, finetune: FinetuneSettings | dict | None = None) -> FinetuneSettings:
    """The stage-0 settings of a fit: `protocol` with FinetuneSettings fields from `finetune` (a dict of field
    values, or a FinetuneSettings whose protocol is ignored), checked as `vfe run` checks them."""
    if isinstance(finetune, FinetuneSettings):
        values = {k: v for k, v in asdict(finetune).items() if k != "protocol"}
    else:
        values = dict(finetune or {})
        if "protocol" in values:
            raise SettingsError("finetune: give the protocol as protocol=, not among the fine-tuning settings")
    if protocol not in PROTOCOLS:
        raise SettingsError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    settings = with_overrides(FinetuneSettings(protocol=protocol), values)
    changed = [f"--{k.replace('_', '-')}" for k, v in asdict(settings).items()
               if k != "protocol" and v != getattr(FinetuneSettings(), k)]
    if protocol != "reference" and changed:
        raise SettingsError(f"{', '.join(changed)}: fine-tuning settings apply to --protocol reference only")
    check_finetune(settings)
    return settings


def _fit_on_finetuned(head: str, head_params: dict, data, settings: FinetuneSettings, backbone: str, weights: str,
                      image_size: int | None, device: str, seed: int, cache_dir: str | None, progress: bool,
                      augmix_views: int, log) -> tuple[Pipeline, float]:
    """`head` on the features of the backbone fine-tuned by the reference protocol's stage 0, run as `vfe run`
    runs it (vfe.experiment.reference.fine_tune: the same settings, seed and cache keys, so a run's replicate
    with the same draw is loaded from the cache, not trained again): (pipeline, training accuracy)."""
    from vfe.experiment.reference import fine_tune  # torchvision: loaded only when fine-tuning

    cache = FeatureCache(cache_dir)
    base = create_backbone(backbone, weights=weights, image_size=image_size, device=device)
    # `test` only reports the compare model's accuracy: the training images' cut activations, cached already,
    # stand in for it (a fit has no test subset), so the line says what was measured
    tuned = fine_tune(cache, base, data, data, settings, seed, progress,
                      lambda line: log(line.replace("compare model test accuracy", "compare model training accuracy")))
    X = tuned.features(data, desc="extract train")
    views = {"X_aug": augmix_features(tuned.features, data, augmix_views, seed)[0]} if is_augmix(head) else {}
    model = _fitted_head(head, head_params, seed, X, data.labels, views, str(tuned.backbone.device))
    return Pipeline(tuned.backbone, model, data.class_names), float(model.score(X, data.labels))


def _fitted_head(head: str, head_params: dict, seed: int, X: np.ndarray, y: np.ndarray, views: dict, device: str):
    """A feature head built with `head_params` and `seed`, fitted on `device`, then set to predict on the CPU
    (the saved pipeline predicts wherever it is loaded)."""
    model = make_head(head, **{"random_state": seed, **head_params})
    if "device" in model.get_params():
        model.set_params(device=device)
    model.fit(X, y, **views)
    if "device" in model.get_params():
        model.set_params(device="cpu")
    return model


def _fitted_detector(pipe: Pipeline, name: str, data, validation, coverage: float, cache: FeatureCache,
                     progress: bool) -> Detector:
    """The detector `name` for the fitted pipeline: Mahalanobis on its training features, the threshold
    on the validation images' features (both from the feature cache)."""
    X_train = cache.extract(pipe.backbone, data, progress=progress, desc="extract train").array()
    X_val = cache.extract(pipe.backbone, validation, progress=progress, desc="extract validation").array()
    return fit_detector(name, pipe.head, X_train, data.labels, X_val, coverage)


def _record_skipped(path: Path, lines: list[str]) -> None:
    """The files a fit skipped, listed at `path`; no list there when it skipped none."""
    if lines:
        write_skipped(path, lines)
    else:
        path.unlink(missing_ok=True)


def finetuned_pipeline(model, class_names: list[str]) -> Pipeline:
    """A fitted FinetuneHead as a feature pipeline: its fine-tuned backbone (a new weights identity, so
    the feature cache never mixes its features with the pretrained ones) and a linear head holding its
    Dropout -> Dense layer."""
    bb: Backbone = model.module_.backbone
    digest = hashlib.sha256()
    for name, tensor in sorted(bb.model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    old = bb.weights
    top = (f"from {model.cut_point or 'the reference cut'}" if model.recipe == "reference"
           else f"top {model.unfreeze_blocks} blocks")
    bb.weights = WeightsInfo("finetuned", f"finetuned:{digest.hexdigest()[:32]}",
                             f"{old.source}, fine-tuned ({model.recipe} recipe, {top})", old.arch, old.has_classifier)
    for p in bb.model.parameters():
        p.requires_grad_(False)
    linear = LinearHead(dropout=model.dropout, random_state=model.random_state)
    linear.classes_, linear.n_features_in_ = model.classes_, int(bb.feature_dim)
    linear.module_ = model.module_.head.cpu()
    linear.history_ = getattr(model, "history_", None)
    return Pipeline(bb, linear, class_names)


def evaluate_pipeline(pipeline: str | os.PathLike | Pipeline, dataset: str, split: str = "test",
                      n_test: int | None = None, data_dir: str | None = None, cache_dir: str | None = None,
                      progress: bool = True, skip_bad: bool = False, allow_class_mismatch: bool = False,
                      corruptions: bool | list[str] = False, severities: list[int] | None = None,
                      corruption_seed: int = 0, corruption_params: str = "auto", runtime: str = "auto") -> dict:
    """Accuracy, negative log-likelihood and expected calibration error on a data set split.

    `runtime` runs the backbone as `extract_features`'s does (the pipeline's network exported once).

    Labels are indices into class names, so a data set whose class names differ from the model's would
    be scored against the wrong classes: that is refused unless `allow_class_mismatch`.

    `corruptions` (True: all 19; or a list of names): also every corruption x severity of those images, as
    `vfe run`'s corruption stage makes them (`corruption_seed`: the run's --data-seed, the seed of replicate
    0's noise; `corruption_params` as the run's), under "corruptions": accuracy per corruption x severity, per
    family (vfe.card.family_accuracy) and the means results.json reports (docs/cards.md).
    """
    _check_count(n_test, "--n-test")  # before the pipeline loads
    names, severities = _corruption_choice(corruptions, severities, corruption_params)
    pipe = pipeline if isinstance(pipeline, Pipeline) else Pipeline.load(pipeline, runtime=runtime)
    data = _load(dataset, split, data_dir, n_test, seed=0, skip_bad=skip_bad)
    if list(data.class_names) != list(pipe.class_names) and not allow_class_mismatch:
        raise DataError(f"{dataset}: its classes {_short(data.class_names)} are not the model's "
                        f"{_short(pipe.class_names)}; pass --allow-class-mismatch to compare labels by index anyway")
    X = FeatureCache(cache_dir).extract(pipe.backbone, data, progress=progress, desc=f"extract {split}").array()
    labels = data.labels
    known = np.isin(labels, pipe.head.classes_)
    if not known.all():
        raise ValueError(f"{dataset} {split}: {int((~known).sum())} images have labels the pipeline never saw")
    probs = pipe.head.predict_proba(X)
    index = np.searchsorted(pipe.head.classes_, labels)  # labels -> columns of predict_proba
    out = {"n": len(labels), **probability_metrics(probs, index)}
    if names:
        out["corruptions"] = _corruption_metrics(pipe, data, index, names, severities, corruption_seed,
                                                 corruption_params, FeatureCache(cache_dir), progress)
    return out


def _corruption_choice(corruptions: bool | list[str], severities: list[int] | None, params: str
                       ) -> tuple[list[str], list[int]]:
    """(corruption names, severities) to evaluate, checked before anything loads; ([], []) for none."""
    if corruptions is False or corruptions is None:
        return [], []
    from vfe.experiment.config import check_corruption_params
    from vfe.experiment.stages.corruptions.settings import CorruptionSettings
    from vfe.experiment.stages.corruptions.stage import corruption_names
    from vfe.robustness.corruptions.registry import REGISTRY

    names = corruption_names(CorruptionSettings(corruptions=None if corruptions is True or not corruptions
                                                else list(corruptions)))
    unknown = [c for c in names if c not in REGISTRY]
    if unknown:
        raise SettingsError(f"--corruptions: unknown {', '.join(unknown)}; known: {', '.join(REGISTRY)}")
    severities = list(severities) if severities else [1, 2, 3, 4, 5]
    if any(s not in (1, 2, 3, 4, 5) for s in severities):
        raise SettingsError(f"--severities must be among 1 2 3 4 5, got {severities}")
    check_corruption_params(params)
    return names, severities


def _corruption_metrics(pipe: Pipeline, data, index: np.ndarray, names: list[str], severities: list[int],
                        seed: int, params: str, cache: FeatureCache, progress: bool) -> dict:
    """The pipeline on every corruption x severity of `data`, the corrupted images made and cached exactly as
    `vfe run` makes them (vfe.experiment.stages.corruptions.stage.corrupted_features), so a frozen-protocol pipeline saved by
    a run scores what the run measured."""
    from vfe.card import family_accuracy
    from vfe.experiment.stages.corruptions.stage import corrupted_features, error_table
    from vfe.robustness import metrics as cm
    from vfe.robustness.corruptions.registry import BENCHMARK_CORRUPTIONS

    source = BackboneFeatures(cache, pipe.backbone, progress)
    table = {c: {s: probability_metrics(pipe.head.predict_proba(corrupted_features(source, data, c, s, seed, params)),
                                        index) for s in severities} for c in names}
    accuracy = {c: {str(s): m["accuracy"] for s, m in sev.items()} for c, sev in table.items()}
    errors = error_table(table)
    bench = [c for c in names if c in BENCHMARK_CORRUPTIONS]
    return {"accuracy": accuracy, "per_family": family_accuracy(accuracy),
            "mean_accuracy": 1.0 - cm.mean_corruption_error(errors, bench) if bench else None,
            "mean_accuracy_all": 1.0 - cm.mean_corruption_error(errors, names),
            "severities": severities, "seed": seed, "corruption_params": params}


def _short(names, first: int = 6) -> str:
    names = list(names)
    return "[" + ", ".join(names[:first]) + (f", ... ({len(names)} in all)" if len(names) > first else "") + "]"


def sweep(dataset: str, grid: dict, name: str = "sweep", **settings) -> dict:
    """Run a grid of heads x hyperparameters x training sizes x seeds on cached features (resumable).

    `settings` are SweepSettings fields or their data/backbone fields (n_train, backbone, ...), as flags
    of `vfe sweep`. Cells land in runs/<name>/sweep/; the summary goes to runs/<name>/sweep.json.
    """
    base = SweepSettings(name=name, grid="(given as a dict)")
    job = with_overrides(base, {"dataset": dataset, **settings})
    return run_sweep_job(job, grid=grid)


def benchmark(estimator, data: str = defaults.DATASET, protocol: str = "frozen", head_name: str | None = None,
              overwrite: bool = False, log=print, **run_settings) -> tuple[dict, Path]:
    """Your classifier through every stage of `vfe run`, beside the linear head: (results.json's content, the run
    folder). Like `vfe run --heads linear package.module:Class`, from Python.

    `estimator`: a head class (one registered by `vfe.heads.register_head` keeps its name; another is registered
    now under `head_name` or its class name; `register_head` says what the class needs), or a factory returning an
    unfitted scikit-learn classifier (called as `factory(random_state=seed)` if it takes a seed, else `factory()`),
    registered under `head_name`. The attack stage differentiates the head's `probability_module()`: a class without
    one, and any factory, needs n_attack=0. `run_settings`: RunSettings fields by name (n_train=500, n_attack=0,
    head_params={...}, name=...; heads=[...] compares with other heads than linear).
    """
    head = _registered(estimator, head_name)
    compared = run_settings.pop("heads", ["linear"])
    base = RunSettings()
    values = {"name": f"benchmark-{head}", "dataset": data, "protocol": protocol, **run_settings,
              "heads": list(dict.fromkeys([*compared, head])),
              "head_params": {**base.heads.head_params, **run_settings.get("head_params", {})}}  # defaults kept
    out = run(with_overrides(base, values), overwrite=overwrite, log=log)
    return json.loads((out / "results.json").read_text()), out


def _registered(estimator, head_name: str | None) -> str:
    """The head name `estimator` (a class or a factory) runs under, registered now if it is not yet."""
    if isinstance(estimator, type):
        known = registered_name(estimator)
        if known is not None and head_name in (None, known):
            return known
        name = head_name or estimator.__name__
        register_head(name)(estimator)
        return name
    if not callable(estimator):
        raise SettingsError(f"benchmark: give a classifier class or a factory returning one, got {estimator!r}")
    if head_name is None:
        raise SettingsError("benchmark: a factory's head needs a name: give head_name=")
    register_head(head_name)(_factory_head(estimator, head_name))
    return head_name


def _factory_head(factory, name: str) -> type:
    """A head class around a factory of scikit-learn classifiers: each fit builds a fresh one, seeded when the
    factory takes random_state, so every replicate is drawn as a built-in head's is."""
    seeded = "random_state" in inspect.signature(factory).parameters

    class FactoryHead(ClassifierMixin, BaseEstimator):
        def __init__(self, random_state: int = 0):
            self.random_state = random_state

        def fit(self, X, y):
            self.estimator_ = factory(random_state=self.random_state) if seeded else factory()
            self.estimator_.fit(X, y)
            self.classes_ = self.estimator_.classes_
            return self

        def predict_proba(self, X) -> np.ndarray:
            return self.estimator_.predict_proba(X)

        def predict(self, X) -> np.ndarray:
            return self.classes_[self.predict_proba(X).argmax(1)]  # what the clean metrics score, argmax

    FactoryHead.__name__ = FactoryHead.__qualname__ = name  # its registry target, one per name
    FactoryHead.__doc__ = factory.__doc__  # its first line is the head's description
    return FactoryHead


def image_files(paths: list[str | os.PathLike]) -> list[Path]:
    """The image files named, and every image file (recursively, sorted) inside folders named.

    Image files are those with a suffix in vfe.data.IMAGE_SUFFIXES, as for every other command."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
            if not found:
                raise DataError(f"{p}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this folder")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise MissingDataError(f"{p}: no such file or folder")
    return out


def predict_files(pipeline: str | os.PathLike | Pipeline, images: list[str | os.PathLike], top: int = 1,
                  skip_bad: bool = False, coverage: float | None = None, runtime: str = "auto",
                  ) -> Iterator[tuple[str, list[tuple[str, float]] | str | Abstained]]:
    """(file, [(class name, probability), ...top]) for each image file, or every image in the folders
    named, one at a time as they are predicted.

    An unreadable file stops the run with an error naming it, unless `skip_bad`: then it is yielded as
    (file, reason) and the rest go on. With `coverage` (the pipeline needs a detector: fit_pipeline's
    `detector`), a file scoring past the detector's threshold for that coverage is yielded as
    (file, Abstained(detector, score, threshold)) instead of its classes; the threshold is re-derived from the
    validation scores saved in the pipeline when `coverage` is not the one it was fitted for. `runtime` runs
    the backbone as `extract_features`'s does.
    """
    if top < 1:
        raise SettingsError(f"--top must be at least 1, got {top}")
    if coverage is not None:
        check_coverage(coverage)
    files = image_files(images)  # a missing file or an empty folder is reported before the model loads
    pipe = pipeline if isinstance(pipeline, Pipeline) else Pipeline.load(pipeline, runtime=runtime)
    if coverage is not None and pipe.detector is None:
        raise SettingsError(f"{pipeline if not isinstance(pipeline, Pipeline) else 'the pipeline'} has no detector "
                            "to abstain with: fit one with vfe fit DATA --detector mahalanobis --coverage 0.9 --out "
                            "... (docs/abstention.md)")
    for path in files:
        try:
            image = read_image(path)
        except DataError as err:
            if not skip_bad:
                raise DataError(f"{err}; pass --skip-bad to skip unreadable files") from None
            yield str(path), str(err)
            continue
        if coverage is None:
            probs = pipe.predict_proba(image[None])[0]
        else:
            probs, scores, abstain = (v[0] for v in pipe.predict_or_abstain(image[None], coverage))
            if abstain:
                yield str(path), Abstained(pipe.detector.name, float(scores), pipe.detector.threshold_at(coverage))
                continue
        order = np.argsort(-probs)[:top]
        yield str(path), [(pipe.class_name(pipe.head.classes_[i]), float(probs[i])) for i in order]


__all__ = ["Abstained", "FinetuneSettings", "RunSettings", "benchmark", "evaluate_pipeline", "extract_features",
           "finetuned_pipeline", "fit_pipeline", "image_files", "predict_files", "quick_settings", "replace", "run", "sweep", "with_overrides"]
