"""run_sweep / train_size_sweep: heads x hyperparameters x sizes x seeds, resumable, summarised."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from vfe.experiment import sweep
from vfe.experiment.sweep import (
    expand_grid,
    markdown_table,
    pixel_features,
    run_sweep,
    summarise_cells,
    train_size_sweep,
    transfer_gain,
)

GRID = {"heads": {"svm": {"C": [0.1, 1.0]}, "pca": {"latent_dim": 8, "epochs": 20, "lr": 3e-2}}, "seeds": [0, 1],
        "train_sizes": [100, 400]}


def test_grid_expands_to_every_cell_and_rejects_unknown_heads():
    cells = expand_grid(GRID)
    assert len(cells) == (2 + 1) * 2 * 2
    assert {"head": "svm", "params": {"C": 0.1}, "train_size": 100, "seed": 1} in cells
    assert {"head": "pca", "params": {"epochs": 20, "latent_dim": 8, "lr": 3e-2}, "train_size": 400, "seed": 0} in cells
    with pytest.raises(ValueError, match="unknown head 'nope'"):
        expand_grid({"heads": ["svm", "nope"]})
    with pytest.raises(ValueError, match="head 'finetune' takes images"):
        expand_grid({"heads": ["finetune"]})
    with pytest.raises(ValueError, match="sweep grid: keys"):
        expand_grid({"heads": ["svm"], "seed": [0]})


@pytest.mark.slow
def test_sweep_writes_cells_resumes_and_summarises(digits_features, tmp_path, monkeypatch):
    X_train, X_test, y_train, y_test = digits_features
    out = tmp_path / "runs" / "demo" / "sweep"
    records = run_sweep(GRID, X_train, y_train, X_test, y_test, out, progress=False)
    assert len(list(out.glob("*.json"))) == len(records) == 12
    assert {r["n_train"] for r in records} == {100, 400}
    assert all(r["metrics"]["accuracy"] > 0.5 for r in records)

    def no_fitting(*args, **kwargs):
        raise AssertionError("a finished cell was fitted again")

    monkeypatch.setattr(sweep, "fit_head", no_fitting)
    assert run_sweep(GRID, X_train, y_train, X_test, y_test, out, progress=False) == records
    with pytest.raises(AssertionError, match="fitted again"):  # other data: nothing is reused
        run_sweep(GRID, X_train, y_train, X_test[:-1], y_test[:-1], out, progress=False)

    rows = summarise_cells(records)
    assert len(rows) == 6 and all(r["n_seeds"] == 2 for r in rows)
    row = next(r for r in rows if r["head"] == "svm" and r["params"] == {"C": 1.0} and r["train_size"] == 100)
    accuracies = [r["metrics"]["accuracy"] for r in records
                  if r["head"] == "svm" and r["params"] == {"C": 1.0} and r["train_size"] == 100]
    assert row["accuracy_mean"] == pytest.approx(np.mean(accuracies))
    assert row["accuracy_std"] == pytest.approx(np.std(accuracies, ddof=1))
    table = markdown_table(rows)
    assert table.count("\n") == 1 + len(rows) and f"{row['accuracy_mean']:.4f} ± {row['accuracy_std']:.4f}" in table


def test_augmented_heads_need_corrupted_views(digits_features, tmp_path):
    X_train, X_test, y_train, y_test = digits_features
    with pytest.raises(ValueError, match=r"\['vfe-aug'\] train on corrupted-image features: pass X_aug"):
        run_sweep({"heads": ["vfe-aug"]}, X_train, y_train, X_test, y_test, tmp_path, progress=False)


@pytest.mark.slow
def test_train_size_sweep_compares_features_with_raw_pixels(tmp_path):
    """'Features' here are a fixed random ReLU projection of the pixels: a stand-in for a backbone."""
    digits = load_digits()
    images = (digits.images * (255 / 16)).round().astype(np.uint8)
    train, test = train_test_split(np.arange(len(images)), test_size=0.3, random_state=0, stratify=digits.target)
    pixels = pixel_features(images)
    projection = np.random.default_rng(0).normal(size=(64, 256)).astype(np.float32)
    features = np.maximum(pixels @ projection, 0)
    rows = train_size_sweep((features[train], features[test]), (pixels[train], pixels[test]),
                            digits.target[train], digits.target[test], tmp_path, sizes=(30, 300), seeds=(0, 1),
                            transfer_heads={"svm": {}}, scratch_heads={"svm": {}}, progress=False)
    assert {(r["input"], r["n_train"]) for r in rows} == {(i, n) for i in ("features", "pixels") for n in (30, 300)}
    gains = transfer_gain(rows)
    assert [g["n_train"] for g in gains] == [30, 300]
    for g in gains:
        assert g["gain"] == pytest.approx(g["transfer_accuracy"] - g["scratch_accuracy"])
    assert "| features | svm |" in markdown_table(rows)
