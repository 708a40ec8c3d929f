"""`vfe lab features`: a classifier on the autoencoder's code vs on raw pixels (and vs PCA of equal size).

The autoencoder never sees a label; the same logistic regression (scikit-learn, standardised
inputs) is fitted on each representation of the same labelled images. Its L2 strength is chosen
per representation on a held-out fifth of the training images, by the same rule for all, so that
784 raw pixels (which over-fit without it) are not handicapped against a 10-number code.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from vfe import plotting
from vfe.data.split import holdout_index
from vfe.lab.common import load_data, make_config, train_model
from vfe.lab.config import LabSettings
from vfe.lab.figures import project_latents
from vfe.rundir import Run

C_GRID = (0.001, 0.01, 0.1)  # inverse L2 strengths tried; smaller converges faster on raw pixels


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                 seed: int = 0, reduce_to: int | None = None, c_grid: tuple[float, ...] = C_GRID) -> dict:
    """Test accuracy of a standardised logistic regression (after PCA to `reduce_to` dims if given),
    its C picked from `c_grid` on a stratified fifth of the training data, then refitted on all of it."""

    def probe(c: float):
        steps = [StandardScaler()] + ([PCA(reduce_to, random_state=seed)] if reduce_to else [])
        return make_pipeline(*steps, LogisticRegression(C=c, max_iter=1000, random_state=seed))

    start = time.perf_counter()
    fit_idx, val_idx = holdout_index(len(train_y), 0.2, seed, labels=train_y)
    val_scores = [probe(c).fit(train_x[fit_idx], train_y[fit_idx]).score(train_x[val_idx], train_y[val_idx])
                  for c in c_grid]
    best_c = c_grid[int(np.argmax(val_scores))]
    clf = probe(best_c).fit(train_x, train_y)
    return {"accuracy": float(clf.score(test_x, test_y)), "dims": int(reduce_to or train_x.shape[1]),
            "C": best_c, "val_accuracy": float(max(val_scores)), "fit_seconds": round(time.perf_counter() - start, 2)}


def run_features(settings: LabSettings | None = None, out: str | Path | None = None, overwrite: bool = False,
                 model: str = "conv-ae", projection: str = "pca", **overrides) -> Run:
    """Train `model` (preset fields overridden by `overrides`) without labels, then compare linear
    probes on its code, on raw pixels, and on PCA of the pixels to the code's size."""
    settings = settings or LabSettings()
    data = load_data(settings)
    config = make_config(model, data.input_shape, **overrides)
    run = Run(out or Path("runs/lab/features"), "vfe lab features: the encoder's code as classifier input",
              overwrite=overwrite, settings={"model": model, "projection": projection, **settings.to_dict(),
                                             **overrides})
    ae, history = train_model(config, data, settings, desc=f"{model} (no labels)")
    code_train, code_test = ae.encode_all(data.x_train).numpy(), ae.encode_all(data.x_test).numpy()
    pix_train, pix_test = data.x_train.flatten(1).numpy(), data.x_test.flatten(1).numpy()
    y_train, y_test = data.train.labels, data.test.labels
    k = config.latent_dim
    results = {
        f"raw pixels ({pix_train.shape[1]})": linear_probe(pix_train, y_train, pix_test, y_test, settings.seed),
        f"PCA of pixels ({k})": linear_probe(pix_train, y_train, pix_test, y_test, settings.seed, reduce_to=k),
        f"{model} code ({k})": linear_probe(code_train, y_train, code_test, y_test, settings.seed),
    }
    run.record(data=data.describe(), autoencoder_best_epoch=history.best_epoch, probes=results)
    run.table("logistic regression, test accuracy", [{"input": name, **r} for name, r in results.items()])
    setting = f"{model}, {settings.dataset} n_train={len(y_train)}, n_test={len(y_test)}, seed {settings.seed}"
    plotting.bar_figure({name: r["accuracy"] for name, r in results.items()},
                        run.figure("accuracy.png", "test accuracy of the same linear classifier on each input"),
                        ylabel="test accuracy", title=setting)
    points, axes = project_latents(code_test, projection, settings.seed)
    plotting.scatter_classes(points, y_test, data.test.class_names,
                             run.figure("latent.png", f"test codes coloured by class ({projection})"),
                             title=setting, axis_labels=axes)
    run.finish()
    return run
