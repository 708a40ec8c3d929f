"""`vfe lab pretrain`: an autoencoder's encoder as the starting point of a classifier, at few labels.

The autoencoder is trained on all training images without labels. Then, for each label count
and seed, the same classifier (encoder body -> code layer -> activation -> Dense(classes)) is
trained on that many labelled images twice: from the encoder's weights and from random weights
(the same seed), for the same number of gradient steps, and scored on the test set.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vfe.heads.base import classification_loss
from vfe.lab.common import LabSettings, load_data, make_config, train_model
from vfe.lab.models import ACTIVATIONS, ImageAutoencoder, build_model
from vfe.training import TrainConfig, train
from vfe.viz import figures
from vfe.viz.run import Run


class EncoderClassifier(nn.Module):
    """An autoencoder's encoder (body + code layer) followed by an activation and a linear layer."""

    def __init__(self, autoencoder: ImageAutoencoder, n_classes: int):
        super().__init__()
        self.body = copy.deepcopy(autoencoder.body)
        self.code = copy.deepcopy(autoencoder.code)
        self.head = nn.Sequential(ACTIVATIONS[autoencoder.config.activation](),
                                  nn.Linear(autoencoder.latent_dim, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.code(self.body(x)))


def labelled_subset(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """`n` indices with the classes as balanced as `n` allows (round-robin over shuffled classes)."""
    rng = np.random.default_rng(seed)
    pools = [rng.permutation(np.flatnonzero(labels == c)).tolist() for c in np.unique(labels)]
    chosen: list[int] = []
    while len(chosen) < n and any(pools):
        for pool in pools:
            if pool and len(chosen) < n:
                chosen.append(pool.pop())
    return np.sort(np.asarray(chosen))


@torch.no_grad()
def accuracy(module: nn.Module, x: torch.Tensor, y: np.ndarray, batch_size: int = 1024) -> float:
    module.eval()
    pred = torch.cat([module(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])
    return float((pred.numpy() == y).mean())


def fit_classifier_from(encoder_source: ImageAutoencoder, x: torch.Tensor, y: np.ndarray, n_classes: int,
                        steps: int, batch_size: int, lr: float, seed: int) -> nn.Module:
    """A classifier initialised from `encoder_source`, trained for `steps` gradient steps (no early stop)."""
    clf = EncoderClassifier(encoder_source, n_classes)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        clf.head[-1].reset_parameters()  # the new layer starts the same in both arms
        epochs = math.ceil(steps / math.ceil(len(x) / batch_size))
        train(clf, classification_loss, (x, torch.from_numpy(y)), None,
              TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, patience=None, seed=seed,
                          desc="classifier"))
    return clf


def run_pretrain(settings: LabSettings | None = None, out: str | Path | None = None, overwrite: bool = False,
                 model: str = "conv-ae", label_counts: Sequence[int] = (50, 200, 1000),
                 seeds: Sequence[int] = (0, 1), steps: int = 300, classifier_lr: float = 1e-3) -> Run:
    settings = settings or LabSettings()
    data = load_data(settings)
    config = make_config(model, data.input_shape)
    run = Run(out or Path("runs/lab/pretrain"), "vfe lab pretrain: encoder initialisation vs random, few labels",
              overwrite=overwrite, settings={"model": model, "label_counts": list(label_counts), "seeds": list(seeds),
                                             "steps": steps, "classifier_lr": classifier_lr, **settings.to_dict()})
    ae, history = train_model(config, data, settings, desc=f"{model} pre-training (no labels)")
    n_classes = data.train.num_classes
    rows = []
    for n in label_counts:
        for seed in seeds:
            idx = labelled_subset(data.train.labels, n, seed)
            x, y = data.x_train[idx], data.train.labels[idx]
            for init in ("pretrained", "random"):
                source = ae if init == "pretrained" else build_model(config, seed=seed + 1)
                clf = fit_classifier_from(source, x, y, n_classes, steps, min(settings.batch_size, 64),
                                          classifier_lr, seed)
                rows.append({"labels": n, "seed": seed, "init": init,
                             "test_accuracy": accuracy(clf, data.x_test, data.test.labels)})
    summary = []
    for n in label_counts:
        entry = {"labels": n}
        for init in ("pretrained", "random"):
            acc = np.array([r["test_accuracy"] for r in rows if r["labels"] == n and r["init"] == init])
            entry[f"{init} mean"], entry[f"{init} std"] = float(acc.mean()), float(acc.std())
        summary.append(entry)
    run.record(data=data.describe(), autoencoder_best_epoch=history.best_epoch, runs=rows, summary=summary)
    run.table(f"test accuracy ({len(data.x_test)} images), mean and std over seeds {list(seeds)}", summary)
    setting = (f"{model} pre-trained on {len(data.x_train)} unlabelled {settings.dataset} images; "
               f"{steps} steps per classifier")
    figures.line_figure(list(label_counts), {f"{init} init": [s[f"{init} mean"] for s in summary]
                                             for init in ("pretrained", "random")},
                        run.figure("pretraining.png", "test accuracy against the number of labelled images"),
                        xlabel="labelled training images", ylabel="test accuracy", logx=True, title=setting,
                        errors={f"{init} init": [s[f"{init} std"] for s in summary]
                                for init in ("pretrained", "random")})
    run.finish()
    return run
