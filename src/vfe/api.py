"""The Python API: the same operations as the command line, as functions.

    >>> from vfe.api import fit_pipeline, evaluate_pipeline
    >>> pipe, train_acc = fit_pipeline("digits", head="vfe", image_size=64)
    >>> pipe.save("digits-vfe.safetensors")
    >>> evaluate_pipeline("digits-vfe.safetensors", "digits")["accuracy"]

The main job (the robustness benchmark) is `run(RunSettings(...))`; `vfe.benchmark.config` has the
settings, `quick_settings()` the `--quick` ones. The reference's protocol (fine-tune the top first):

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
from dataclasses import replace
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from vfe import defaults
from vfe.backbones import Backbone, create_backbone
from vfe.backbones.weights import WeightsInfo
from vfe.benchmark.augment import augmix_features
from vfe.benchmark.config import (
    FinetuneSettings,
    RunSettings,
    SweepSettings,
    check_trainable,
    quick_settings,
    with_overrides,
)
from vfe.benchmark.prepare import skipped_files, write_skipped
from vfe.benchmark.run import run
from vfe.benchmark.sweep import run_sweep_job
from vfe.data import IMAGE_SUFFIXES, load_train_test, read_image
from vfe.data.errors import MissingDataError
from vfe.data.split import balanced_subset
from vfe.errors import DataError, SettingsError
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

ENGINES = ("local", "ray")


def _check_count(n: int | None, flag: str) -> None:
    """A number of images given by `flag` (the caller's option, named in the error) is 1 or more, or None for all."""
    if n is not None and n < 1:
        raise SettingsError(f"{flag} must be at least 1 (or left out for all images), got {n}")


def _load_split(dataset: str, split: str, data_dir: str | None, skip_bad: bool = False, download: bool = False):
    """Every image of a split (a class folder's test split: 20 % of it)."""
    options = {k: v for k, v in (("skip_bad", skip_bad), ("download", download)) if v}
    train, test = load_train_test(dataset, data_dir=data_dir, **options)
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
                     gpus_per_actor: float = 0.0, shared_cache: str = "auto", runtime: str = "torch") -> FeatureSet:
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
                 augmix_views: int = DEFAULT_VIEWS) -> tuple[Pipeline, float]:
    """Fit a head on the training split and return the pipeline and its training accuracy.

    With `skip_bad`, the unreadable files left out are listed in `skipped_list` (when given).
    `head`: a registered name, or "package.module:Class" (vfe.heads.registry.resolve_head).
    A feature head is fitted on (cached) backbone features; an AugMix head (`linear-augmix`, ...) also on
    those of `augmix_views` AugMix views of each training image (cached too). An image head (`finetune`) trains the top of
    the backbone itself; its pipeline holds the fine-tuned backbone and its Dropout -> Dense layer.
    """
    head = resolve_head(head, "--head")  # "package.module:Class": imported and registered now
    head_params = dict(head_params or {})
    check_params(head, head_params)  # unknown names, wrong types and values out of range: before any work
    if not callable(getattr(head_class_of(head), "export_state", None)):
        raise SettingsError(f"--head {head}: a pipeline file holds the head's state as tensors (export_state / "
                            "from_state); subclass vfe.heads.base.Head to save it")
    _check_count(n_train, "--n-train")
    pool = _load_split(dataset, "train", data_dir, skip_bad, download)
    check_trainable(pool, dataset, n_train)  # one class, or fewer images than classes: before any extraction
    data = balanced_subset(pool, n_train, seed, "train")
    if spec(head).inputs == "images":
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
        model = make_head(head, **{"random_state": seed, **head_params})
        if "device" in model.get_params():
            model.set_params(device=str(bb.device))
        model.fit(X, data.labels, **views)
        if "device" in model.get_params():
            model.set_params(device="cpu")  # the saved pipeline predicts wherever it is loaded
        pipe, score = Pipeline(bb, model, data.class_names), float(model.score(X, data.labels))
    if skipped_list is not None:  # once the fit succeeded; an earlier fit's list never outlives it
        _record_skipped(Path(skipped_list), skipped_files(data))
    return pipe, score


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
    bb.weights = WeightsInfo("finetuned", f"finetuned:{digest.hexdigest()[:32]}",
                             f"{old.source}, fine-tuned (top {model.unfreeze_blocks} blocks)", old.arch,
                             old.has_classifier)
    for p in bb.model.parameters():
        p.requires_grad_(False)
    linear = LinearHead(dropout=model.dropout, random_state=model.random_state)
    linear.classes_, linear.n_features_in_ = model.classes_, int(bb.feature_dim)
    linear.module_ = model.module_.head.cpu()
    linear.history_ = getattr(model, "history_", None)
    return Pipeline(bb, linear, class_names)


def evaluate_pipeline(pipeline: str | os.PathLike | Pipeline, dataset: str, split: str = "test",
                      n_test: int | None = None, data_dir: str | None = None, cache_dir: str | None = None,
                      progress: bool = True, skip_bad: bool = False, allow_class_mismatch: bool = False) -> dict:
    """Accuracy, negative log-likelihood and expected calibration error on a data set split.

    Labels are indices into class names, so a data set whose class names differ from the model's would
    be scored against the wrong classes: that is refused unless `allow_class_mismatch`.
    """
    _check_count(n_test, "--n-test")  # before the pipeline loads
    pipe = pipeline if isinstance(pipeline, Pipeline) else Pipeline.load(pipeline)
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
    return {"n": len(labels), **probability_metrics(probs, index)}


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
                  skip_bad: bool = False) -> Iterator[tuple[str, list[tuple[str, float]] | str]]:
    """(file, [(class name, probability), ...top]) for each image file, or every image in the folders
    named, one at a time as they are predicted.

    An unreadable file stops the run with an error naming it, unless `skip_bad`: then it is yielded as
    (file, reason) and the rest go on.
    """
    if top < 1:
        raise SettingsError(f"--top must be at least 1, got {top}")
    files = image_files(images)  # a missing file or an empty folder is reported before the model loads
    pipe = pipeline if isinstance(pipeline, Pipeline) else Pipeline.load(pipeline)
    for path in files:
        try:
            image = read_image(path)
        except DataError as err:
            if not skip_bad:
                raise DataError(f"{err}; pass --skip-bad to skip unreadable files") from None
            yield str(path), str(err)
            continue
        probs = pipe.predict_proba(image[None])[0]
        order = np.argsort(-probs)[:top]
        yield str(path), [(pipe.class_name(pipe.head.classes_[i]), float(probs[i])) for i in order]


__all__ = ["FinetuneSettings", "RunSettings", "benchmark", "evaluate_pipeline", "extract_features",
           "finetuned_pipeline", "fit_pipeline", "image_files", "predict_files", "quick_settings", "replace", "run", "sweep", "with_overrides"]
