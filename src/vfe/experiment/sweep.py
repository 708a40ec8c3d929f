"""Sweeps: heads x hyperparameters x training-set sizes x seeds on cached features, resumable.

Each finished cell is written atomically as one JSON file under `out_dir` (e.g. runs/<name>/sweep/),
named by a hash of everything that produced it (head, parameters, training size, seed and the
data), so a re-run skips finished cells and a changed setting never reuses a stale one.

    grid = {"heads": {"linear": {}, "vfe": {"beta": [0.1, 1.0, 10.0], "latent_dim": 64}},
            "seeds": [0, 1, 2], "train_sizes": [100, 1000, None]}      # None: the whole training set
    cells = run_sweep(grid, X_train, y_train, X_test, y_test, "runs/demo/sweep")
    print(markdown_table(summarise_cells(cells)))

`train_size_sweep` asks where transfer features beat learning from raw pixels as labels grow.
"""
from __future__ import annotations

import hashlib
import json
import numbers
from pathlib import Path

import numpy as np
from sklearn.model_selection import ParameterGrid
from tqdm.auto import tqdm

from vfe.data.split import balanced_index
from vfe.errors import SettingsError
from vfe.experiment.augment import training_record
from vfe.experiment.config import EngineSettings, SweepSettings, check_engine, check_sweep, check_trainable
from vfe.experiment.fanout import TASK_DEVICE, cluster_session, fan_out
from vfe.experiment.fit import fit_head
from vfe.experiment.prepare import load_shared, prepare_replicate, replicate_train
from vfe.experiment.timer import StageTimer
from vfe.heads.registry import check_params, is_augmented, is_augmix, spec
from vfe.io import read_json, write_json
from vfe.robustness.calibration import probability_metrics
from vfe.robustness.stats import mean_std
from vfe.rundir import claimed

GRID_KEYS = ("heads", "seeds", "train_sizes")
METRICS = ("accuracy", "nll", "ece")
# how a cell's training subset is drawn; part of each cell's file name, so cells drawn another way are redone
SELECTOR = "balanced_index-v1"


def expand_grid(grid: dict) -> list[dict]:
    """Every cell of a grid: {"head", "params", "train_size", "seed"}; scalar parameters count as one value.

    Every cell is checked here, before any work: its head, its parameters' names, types and ranges
    (check_params), its seed (a whole number) and its train size (a whole number >= 1, or null for all).
    """
    unknown = set(grid) - set(GRID_KEYS)
    if unknown or "heads" not in grid:
        raise SettingsError(f"sweep grid: keys must be among {GRID_KEYS} with 'heads' required, got {sorted(grid)}")
    heads = grid["heads"]
    if isinstance(heads, (list, tuple)):
        heads = {name: {} for name in heads}
    seeds = _values(grid, "seeds", [0], lambda v: _whole(v) and v >= 0, "whole numbers >= 0")
    sizes = _values(grid, "train_sizes", [None], lambda v: v is None or _whole(v) and v >= 1,
                    "whole numbers >= 1, or null for the whole training set")
    cells = []
    for head, space in heads.items():
        if spec(head).inputs != "features":  # also raises on an unknown name, before any work
            raise SettingsError(f"sweep grid: head {head!r} takes images; sweeps run on cached features")
        space = {k: v if isinstance(v, (list, tuple)) else [v] for k, v in (space or {}).items()}
        for params in ParameterGrid(space):
            check_params(head, params)
            for train_size in sizes:
                for seed in seeds:
                    cells.append({"head": head, "params": dict(sorted(params.items())), "train_size": train_size,
                                  "seed": int(seed)})
    return cells


def _whole(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _values(grid: dict, key: str, default: list, valid, what: str) -> list:
    """grid[key] as a list whose every value is `valid`; a SettingsError naming the first that is not."""
    values = grid.get(key, default)
    if not isinstance(values, (list, tuple)) or not values:
        raise SettingsError(f"sweep grid: {key!r} must be a non-empty list, got {values!r}")
    bad = [v for v in values if not valid(v)]
    if bad:
        raise SettingsError(f"sweep grid: {key!r} must be {what}, got {bad[0]!r}")
    return list(values)


def check_train_sizes(cells: list[dict], y_train: np.ndarray) -> None:
    """Each cell's train size is one image per class at least and at most the training set (known once the data
    is loaded, before any feature is extracted)."""
    n_classes = len(np.unique(y_train))
    for size in sorted({c["train_size"] for c in cells} - {None}):
        if not n_classes <= size <= len(y_train):
            raise SettingsError(f"sweep grid: train size {size} must be between the number of classes "
                                f"({n_classes}) and the training set's size ({len(y_train)}), or null for all")


def data_key(*arrays: np.ndarray) -> str:
    """Hash of the arrays a sweep runs on: cells computed on other data are never reused."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.data)
    return h.hexdigest()[:16]


def cell_file(cell: dict, key: str) -> str:
    spec = json.dumps({**cell, "data": key, "selector": SELECTOR}, sort_keys=True, default=str)
    size = "all" if cell["train_size"] is None else cell["train_size"]
    return f"{cell['head']}-n{size}-seed{cell['seed']}-{hashlib.sha256(spec.encode()).hexdigest()[:12]}.json"


def fit_cell(cell: dict, key: str, X_train: np.ndarray, y_train: np.ndarray, X_test: np.ndarray,
             y_test: np.ndarray, X_aug: np.ndarray | None = None, X_views: np.ndarray | None = None,
             device: str = "cpu") -> dict:
    """One cell fitted and evaluated: its record (what both engines run per cell; the caller writes it)."""
    index = balanced_index(y_train, cell["train_size"], cell["seed"])
    head, seconds = fit_head(cell["head"], cell["seed"], cell["params"], X_train[index], y_train[index], device,
                             X_aug=X_aug[index] if is_augmented(cell["head"]) else None,
                             X_views=X_views[index] if is_augmix(cell["head"]) else None)
    return {**cell, "n_train": len(index), "data": key, "fit_seconds": seconds,
            "metrics": probability_metrics(head.predict_proba(X_test), y_test)}


def run_sweep(grid: dict, X_train: np.ndarray, y_train: np.ndarray, X_test: np.ndarray, y_test: np.ndarray,
              out_dir: str | Path, X_aug: np.ndarray | None = None, device: str = "cpu",
              progress: bool = True, X_views: np.ndarray | None = None,
              cluster: EngineSettings | None = None) -> list[dict]:
    """Fit and evaluate every cell of `grid`; finished cells are read back, not recomputed.

    The seed sets both the head's random_state and which training subset a `train_size` draws, so
    the spread over seeds includes the luck of the labelled sample. `X_aug` (row-aligned with
    X_train) feeds the heads that train on corrupted-image features (e.g. `vfe-aug`), `X_views` (n x K x d,
    AugMix views of each training image) the AugMix heads (e.g. `linear-augmix-js`).
    Returns one record per cell: head, params, train_size, n_train, seed, metrics, fit_seconds.

    `cluster`: EngineSettings(engine="ray", address=...) fits the cells not yet on disk as Ray tasks (one CPU
    and one torch thread each, on the CPU: vfe.experiment.fanout); this process writes each cell's file as
    its task finishes, so an interrupted sweep resumes as a local one does. A rerun with every cell on disk
    connects to no cluster.
    """
    cluster = cluster or EngineSettings()
    check_engine(cluster)
    out_dir = Path(out_dir)
    cells = expand_grid(grid)
    needs_aug = sorted({c["head"] for c in cells if is_augmented(c["head"])})
    if needs_aug and X_aug is None:
        raise ValueError(f"heads {needs_aug} train on corrupted-image features: pass X_aug (see vfe.experiment.augment)")
    needs_views = sorted({c["head"] for c in cells if is_augmix(c["head"])})
    if needs_views and X_views is None:
        raise ValueError(f"heads {needs_views} train on AugMix views: pass X_views (see vfe.experiment.augment)")
    check_train_sizes(cells, y_train)
    key = data_key(X_train, y_train, X_test, y_test, *([X_aug] if needs_aug else []),
                   *([X_views] if needs_views else []))
    paths = [out_dir / cell_file(cell, key) for cell in cells]
    records: list[dict | None] = [read_json(path) if path.exists() else None for path in paths]
    todo = [i for i, record in enumerate(records) if record is None]
    shared = {"key": key, "X_train": X_train, "y_train": y_train, "X_test": X_test, "y_test": y_test,
              "X_aug": X_aug if needs_aug else None, "X_views": X_views if needs_views else None}
    bar = {"desc": "sweep", "unit": "cell", "total": len(cells), "initial": len(cells) - len(todo)}
    if cluster.engine == "ray" and todo:
        with cluster_session(cluster):
            for j, record in fan_out(fit_cell, [cells[i] for i in todo], {**shared, "device": TASK_DEVICE},
                                     progress=progress, **{**bar, "desc": "sweep (ray)"}):
                write_json(paths[todo[j]], record)
                records[todo[j]] = record
    else:
        with tqdm(disable=not progress, **bar) as progress_bar:
            for i in todo:
                records[i] = fit_cell(cells[i], **shared, device=device)
                write_json(paths[i], records[i])
                progress_bar.update()
    return records


def summarise_cells(records: list[dict], metrics: tuple[str, ...] = METRICS) -> list[dict]:
    """Mean and standard deviation (over seeds, ddof=1) of each metric per (head, params, train_size)."""
    groups: dict[str, list[dict]] = {}
    for r in records:
        group = json.dumps([r.get("input"), r["head"], r["params"], r["train_size"]], sort_keys=True)
        groups.setdefault(group, []).append(r)
    rows = []
    for members in groups.values():
        first = members[0]
        row = {"head": first["head"], "params": first["params"], "train_size": first["train_size"],
               "n_train": first["n_train"], "n_seeds": len(members)}
        if "input" in first:
            row = {"input": first["input"], **row}
        series = {m: [r["metrics"][m] for r in members] for m in metrics}
        series["fit_seconds"] = [r["fit_seconds"] for r in members]
        for m, values in series.items():
            spread = mean_std(values)
            row[f"{m}_mean"], row[f"{m}_std"] = spread["mean"], spread["std"]
        rows.append(row)
    return rows


def markdown_table(rows: list[dict], metrics: tuple[str, ...] = METRICS, digits: int = 4) -> str:
    """A markdown table of `summarise` rows: one line per cell, `mean ± std` per metric."""
    has_input = any("input" in r for r in rows)
    header = [*(["input"] if has_input else []), "head", "params", "n_train", "seeds", *metrics, "fit s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        params = ", ".join(f"{k}={v}" for k, v in r["params"].items()) or "-"
        cells = [*([r.get("input", "")] if has_input else []), r["head"], params, str(r["n_train"]),
                 str(r["n_seeds"]),
                 *(f"{r[f'{m}_mean']:.{digits}f} ± {r[f'{m}_std']:.{digits}f}" for m in metrics),
                 f"{r['fit_seconds_mean']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def pixel_features(images: np.ndarray) -> np.ndarray:
    """uint8 images -> flattened float32 pixels in [0, 1]: the "no transfer" input."""
    return (np.asarray(images, dtype=np.float32) / 255.0).reshape(len(images), -1)


def train_size_sweep(features: tuple[np.ndarray, np.ndarray], pixels: tuple[np.ndarray, np.ndarray],
                     y_train: np.ndarray, y_test: np.ndarray, out_dir: str | Path,
                     sizes: tuple[int | None, ...] = (100, 1000, 10000), seeds: tuple[int, ...] = (0, 1, 2),
                     transfer_heads: dict | None = None, scratch_heads: dict | None = None,
                     device: str = "cpu", progress: bool = True, cluster: EngineSettings | None = None) -> list[dict]:
    """Transfer (heads on backbone features) vs from scratch (heads on raw pixels) as labels grow.

    `features` and `pixels` are (train, test) pairs over the same images. By default transfer is the
    linear SVM and the linear head, and "from scratch" is logistic regression on raw pixels (the
    linear head without dropout). Returns `summarise` rows, each tagged input="features"/"pixels";
    `transfer_gain` reads the answer off them. `cluster` as in run_sweep.
    """
    transfer_heads = {"svm": {}, "linear": {}} if transfer_heads is None else transfer_heads
    scratch_heads = {"linear": {"dropout": 0.0}} if scratch_heads is None else scratch_heads
    records = []
    for tag, (X_train, X_test), heads in (("features", features, transfer_heads), ("pixels", pixels, scratch_heads)):
        grid = {"heads": heads, "seeds": list(seeds), "train_sizes": list(sizes)}
        cells = run_sweep(grid, X_train, y_train, X_test, y_test, Path(out_dir) / tag, device=device,
                          progress=progress, cluster=cluster)
        records += [{"input": tag, **c} for c in cells]
    return summarise_cells(records)


def transfer_gain(rows: list[dict]) -> list[dict]:
    """Per training size: the best transfer and best from-scratch mean accuracy, and their difference."""
    out = []
    for n in sorted({r["n_train"] for r in rows}):
        best = {tag: max((r for r in rows if r["n_train"] == n and r["input"] == tag),
                         key=lambda r: r["accuracy_mean"], default=None) for tag in ("features", "pixels")}
        if None in best.values():
            continue
        out.append({"n_train": n, "transfer_head": best["features"]["head"],
                    "transfer_accuracy": best["features"]["accuracy_mean"],
                    "scratch_head": best["pixels"]["head"], "scratch_accuracy": best["pixels"]["accuracy_mean"],
                    "gain": best["features"]["accuracy_mean"] - best["pixels"]["accuracy_mean"]})
    return out


def load_grid(text_or_path: str) -> dict:
    """A grid from JSON text or a .json file, refused with a one-line reason when it is not valid JSON."""
    text = Path(text_or_path).read_text() if text_or_path.endswith(".json") else text_or_path
    try:
        grid = json.loads(text)
    except json.JSONDecodeError as err:
        raise SettingsError(f"--grid: not valid JSON ({err})") from None
    if not isinstance(grid, dict):
        raise SettingsError(f"--grid: expected a JSON object with 'heads', got {type(grid).__name__}")
    return grid


def run_sweep_job(settings: SweepSettings, grid: dict | None = None, wait: bool = False, log=print) -> dict:
    """`vfe sweep`: prepare the data once (as `vfe run` does), run every cell, write runs/<name>/sweep.json.

    Cells land in runs/<name>/sweep/ as they finish; the summary (mean +/- std over seeds) goes to
    sweep.json. `compare_pixels` adds the same sizes on raw pixels (transfer vs scratch). With `--engine ray`
    the cells are fitted as Ray tasks (run_sweep); the cluster is connected to before the data is prepared,
    so a wrong --address costs nothing. The folder is locked while the sweep runs (vfe.rundir.claimed):
    another sweep or run of the same name is refused, or with `wait` waits for it.
    """
    grid = load_grid(settings.grid) if grid is None else grid
    cells = expand_grid(grid)  # unknown heads, parameters, seeds and sizes are refused before any work
    check_sweep(settings)
    with claimed(Path(settings.runs_dir) / settings.name, "--name", wait, log), cluster_session(settings.cluster):
        return _sweep_job(settings, grid, cells)


def _sweep_job(settings: SweepSettings, grid: dict, cells: list[dict]) -> dict:
    out = Path(settings.runs_dir) / settings.name
    timer = StageTimer(log=lambda *_: None)
    shared = load_shared(settings.data, settings.backbone, settings.cache_dir, timer)
    check_trainable(shared.pool, shared.dataset, settings.data.n_train)
    check_train_sizes(cells, replicate_train(shared, settings.data.n_train, settings.data.data_seed).labels)
    prepared = prepare_replicate(
        shared, settings.data.n_train, settings.data.data_seed,
        augment_family=settings.augment_family if any(is_augmented(c["head"]) for c in cells) else None,
        corruption_params=settings.corruption_params,
        augmix_views=settings.augmix_views if any(is_augmix(c["head"]) for c in cells) else None,
        progress=settings.progress, timer=timer)
    train, test, device = prepared.train, prepared.test, str(prepared.backbone.device)
    records = run_sweep(grid, prepared.X_train, train.labels, prepared.X_test, test.labels, out / "sweep",
                        X_aug=prepared.X_aug, device=device, progress=settings.progress, X_views=prepared.X_views,
                        cluster=settings.cluster)
    rows = summarise_cells(records)
    result = {"setting": {"dataset": prepared.dataset, "backbone": prepared.backbone.name,
                          "image_size": prepared.backbone.image_size, "n_train": len(train), "n_test": len(test),
                          "data_seed": settings.data.data_seed},
              "grid": grid, "rows": rows,
              "augmentation": training_record(list(dict.fromkeys(c["head"] for c in cells)), prepared.augmentation,
                                              prepared.augmix)}
    if settings.compare_pixels:
        sizes = tuple(grid.get("train_sizes", [100, 1000, None]))
        seeds = tuple(grid.get("seeds", [0, 1, 2]))
        pixel_rows = train_size_sweep((prepared.X_train, prepared.X_test),
                                      (pixel_features(train.images), pixel_features(test.images)),
                                      train.labels, test.labels, out / "train-size", sizes=sizes, seeds=seeds,
                                      device=device, progress=settings.progress, cluster=settings.cluster)
        result["train_size"] = {"rows": pixel_rows, "gain": transfer_gain(pixel_rows)}
    result["markdown"] = markdown_table(rows)
    write_json(out / "sweep.json", result)
    return result
