"""The Python API: the same operations as the command line, as functions.

    >>> from vfe.api import fit_pipeline, evaluate_pipeline
    >>> pipe, train_acc = fit_pipeline("digits", head="vfe", image_size=64)
    >>> pipe.save("digits-vfe.safetensors")
    >>> evaluate_pipeline("digits-vfe.safetensors", "digits")["accuracy"]

The main job (the robustness benchmark) is `vfe.experiment.run(ExperimentConfig(...))`.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from vfe.backbones import create_backbone
from vfe.features.cache import DEFAULT_SHARD_SIZE, FeatureCache, FeatureSet
from vfe.heads import make_head
from vfe.pipeline import Pipeline
from vfe.stages.clean import probability_metrics

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def _load(dataset: str, split: str, data_dir: str | None, n: int | None, seed: int, skip_bad: bool = False,
          download: bool = False):
    from vfe.data import load_train_test
    from vfe.experiment import stratified_subset

    options = {k: v for k, v in (("skip_bad", skip_bad), ("download", download)) if v}
    train, test = load_train_test(dataset, data_dir=data_dir, **options)  # a class folder's test split: 20 % of it
    return stratified_subset(train if split == "train" else test, n, seed, split)


def extract_features(dataset: str, split: str = "train", backbone: str = "efficientnet_lite0",
                     weights: str = "default", image_size: int | None = 112, data_dir: str | None = None,
                     cache_dir: str | None = None, shard_size: int = DEFAULT_SHARD_SIZE, n: int | None = None,
                     device: str = "auto", progress: bool = True, skip_bad: bool = False,
                     download: bool = False) -> FeatureSet:
    """Backbone features of a data set split, from the feature cache or computed (and cached) now."""
    data = _load(dataset, split, data_dir, n, 0, skip_bad, download)
    bb = create_backbone(backbone, weights=weights, image_size=image_size, device=device)
    return FeatureCache(cache_dir).extract(bb, data, shard_size=shard_size, progress=progress,
                                           desc=f"extract {split}")


def fit_pipeline(dataset: str, head: str = "vfe", head_params: dict | None = None,
                 backbone: str = "efficientnet_lite0", weights: str = "default", image_size: int | None = 112,
                 n_train: int | None = None, seed: int = 0, data_dir: str | None = None,
                 cache_dir: str | None = None, device: str = "auto", progress: bool = True,
                 skip_bad: bool = False, download: bool = False) -> tuple[Pipeline, float]:
    """Fit a head on (cached) backbone features of the training split; returns the pipeline and its
    training accuracy."""
    data = _load(dataset, "train", data_dir, n_train, seed, skip_bad, download)
    bb = create_backbone(backbone, weights=weights, image_size=image_size, device=device)
    X = FeatureCache(cache_dir).extract(bb, data, progress=progress, desc="extract train").array()
    model = make_head(head, **{"random_state": seed, **(head_params or {})})
    if "device" in model.get_params():
        model.set_params(device=str(bb.device))
    model.fit(X, data.labels)
    if "device" in model.get_params():
        model.set_params(device="cpu")  # the saved pipeline predicts wherever it is loaded
    return Pipeline(bb, model, data.class_names), float(model.score(X, data.labels))


def evaluate_pipeline(pipeline: str | os.PathLike | Pipeline, dataset: str, split: str = "test",
                      n_test: int | None = None, data_dir: str | None = None, cache_dir: str | None = None,
                      progress: bool = True) -> dict:
    """Accuracy, negative log-likelihood and expected calibration error on a data set split."""
    pipe = pipeline if isinstance(pipeline, Pipeline) else Pipeline.load(pipeline)
    data = _load(dataset, split, data_dir, n_test, seed=0)
    X = FeatureCache(cache_dir).extract(pipe.backbone, data, progress=progress, desc=f"extract {split}").array()
    labels = data.labels
    known = np.isin(labels, pipe.head.classes_)
    if not known.all():
        raise ValueError(f"{dataset} {split}: {int((~known).sum())} images have labels the pipeline never saw")
    probs = pipe.head.predict_proba(X)
    index = np.searchsorted(pipe.head.classes_, labels)  # labels -> columns of predict_proba
    return {"n": len(labels), **probability_metrics(probs, index)}


def sweep(dataset: str, grid: dict, name: str = "sweep", runs_dir: str = "runs",
          backbone: str = "efficientnet_lite0", weights: str = "default", image_size: int | None = 112,
          n_train: int | None = 10000, n_test: int | None = 2000, data_seed: int = 0, augment_family: str = "noise",
          compare_pixels: bool = False, data_dir: str | None = None, cache_dir: str | None = None,
          device: str = "auto", progress: bool = True) -> dict:
    """Run a grid of heads x hyperparameters x training sizes x seeds on cached features (resumable).

    Cells land in runs/<name>/sweep/ as they finish; the summary (mean +/- std over seeds) goes to
    runs/<name>/sweep.json. `compare_pixels` adds the same sizes on raw pixels (transfer vs scratch).
    """
    from vfe.heads import is_augmented
    from vfe.io import write_json
    from vfe.sweep import (
        expand_grid,
        markdown_table,
        pixel_features,
        run_sweep,
        summarise,
        train_size_sweep,
        transfer_gain,
    )

    out = Path(runs_dir) / name
    train = _load(dataset, "train", data_dir, n_train, data_seed)
    test = _load(dataset, "test", data_dir, n_test, data_seed)
    bb = create_backbone(backbone, weights=weights, image_size=image_size, device=device)
    cache = FeatureCache(cache_dir)
    X_train = cache.extract(bb, train, progress=progress, desc="extract train").array()
    X_test = cache.extract(bb, test, progress=progress, desc="extract test").array()
    X_aug, augmentation = None, None
    if any(is_augmented(cell["head"]) for cell in expand_grid(grid)):
        from vfe.stages.augment import augmented_features
        X_aug, augmentation = augmented_features(cache, bb, train, family=augment_family, seed=data_seed + 1,
                                                 progress=progress)
    cells = run_sweep(grid, X_train, train.labels, X_test, test.labels, out / "sweep", X_aug=X_aug,
                      device=str(bb.device), progress=progress)
    rows = summarise(cells)
    result = {"setting": {"dataset": dataset, "backbone": bb.name, "image_size": bb.image_size,
                          "n_train": len(train), "n_test": len(test), "data_seed": data_seed},
              "grid": grid, "rows": rows, "augmentation": augmentation}
    if compare_pixels:
        sizes = tuple(grid.get("train_sizes", [100, 1000, None]))
        seeds = tuple(grid.get("seeds", [0, 1, 2]))
        pixel_rows = train_size_sweep((X_train, X_test), (pixel_features(train.images), pixel_features(test.images)),
                                      train.labels, test.labels, out / "train-size", sizes=sizes, seeds=seeds,
                                      device=str(bb.device), progress=progress)
        result["train_size"] = {"rows": pixel_rows, "gain": transfer_gain(pixel_rows)}
    result["markdown"] = markdown_table(rows)
    write_json(out / "sweep.json", result)
    return result


def image_files(paths: list[str | os.PathLike]) -> list[Path]:
    """The image files named, and every image file (recursively, sorted) inside folders named."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
            if not found:
                raise ValueError(f"{p}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in this folder")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    return out


def read_image(path: Path) -> np.ndarray:
    """uint8 H x W x 3 RGB; grayscale, palette and RGBA images are converted."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"{path}: not a readable image ({err})") from None


def predict_files(pipeline: str | os.PathLike | Pipeline, images: list[str | os.PathLike],
                  top: int = 1) -> list[tuple[str, list[tuple[str, float]]]]:
    """[(file, [(class name, probability), ...top]), ...] for image files or folders of images."""
    pipe = pipeline if isinstance(pipeline, Pipeline) else Pipeline.load(pipeline)
    results = []
    for path in image_files(images):
        probs = pipe.predict_proba(read_image(path)[None])[0]
        order = np.argsort(-probs)[:max(1, top)]
        results.append((str(path), [(pipe.class_name(pipe.head.classes_[i]), float(probs[i])) for i in order]))
    return results


__all__ = ["evaluate_pipeline", "extract_features", "fit_pipeline", "image_files", "predict_files", "read_image",
           "sweep"]
