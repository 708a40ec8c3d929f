"""The small CNN baseline: its layout, its augmentation layer, that it learns, and its command."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from vfe.io import read_json
from vfe.lab.common import load_data
from vfe.lab.config import LabSettings
from vfe.training import TrainConfig
from vfe.viz.small_cnn import (
    VARIANTS,
    RandomAugment,
    SmallCNNConfig,
    build_small_cnn,
    fit_small_cnn,
    load_small_cnn,
    predict_classes,
    run_small_cnn,
    save_small_cnn,
)


def test_three_conv_pool_blocks_then_dense_128():
    model = build_small_cnn(SmallCNNConfig())
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    pools = [m for m in model.features if isinstance(m, nn.MaxPool2d)]
    assert [c.out_channels for c in convs] == [16, 32, 64] and len(pools) == 3
    dense = [m for m in model.classifier if isinstance(m, nn.Linear)]
    assert [(d.in_features, d.out_features) for d in dense] == [(64 * 3 * 3, 128), (128, 10)]
    regularised = build_small_cnn(SmallCNNConfig(**VARIANTS["augmented"]))
    assert isinstance(regularised.augment, RandomAugment) and regularised.classifier[0].p == 0.2
    assert isinstance(model.augment, nn.Identity) and model.classifier[0].p == 0.0


def test_augmentation_is_identity_in_eval_and_flips_per_image_in_training():
    torch.manual_seed(0)
    x = torch.rand(64, 1, 28, 28)
    flip_only = RandomAugment(flip=True, rotation=0.0, zoom=0.0)
    assert torch.equal(flip_only.eval()(x), x)
    out = flip_only.train()(x)
    same = (out - x).abs().flatten(1).max(1).values < 1e-5
    mirrored = (out - x.flip(-1)).abs().flatten(1).max(1).values < 1e-5
    assert (same ^ mirrored).all() and 10 < int(mirrored.sum()) < 54  # each image one or the other, both occur
    moved = RandomAugment(flip=False, rotation=10.0, zoom=0.1).train()(x)
    assert moved.shape == x.shape and (moved - x).abs().mean() > 0.05


@pytest.mark.slow
def test_it_learns_fashion_mnist_from_a_few_hundred_images():
    data = load_data(LabSettings(n_train=600, n_test=300))
    model = build_small_cnn(SmallCNNConfig(), seed=0)
    history = fit_small_cnn(model, data.x_train, data.train.labels,
                            TrainConfig(epochs=6, batch_size=32, lr=3e-3, patience=None, seed=0))
    accuracy = (predict_classes(model, data.x_test) == data.test.labels).mean()
    assert accuracy > 0.65, accuracy  # ten classes: chance is 0.1
    assert history.series("val_acc")[-1] > history.series("val_acc")[0]


def test_save_and_load_restore_the_same_model(tmp_path):
    model = build_small_cnn(SmallCNNConfig(**VARIANTS["augmented"]), seed=1)
    loaded = load_small_cnn(save_small_cnn(model, tmp_path / "m"))
    assert loaded.config == model.config and not loaded.training
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(FileNotFoundError, match="small-cnn"):
        load_small_cnn(tmp_path / "nothing")


@pytest.mark.slow
def test_the_command_trains_both_variants_and_plots_their_histories(tmp_path):
    settings = LabSettings(n_train=300, n_test=100, epochs=2, batch_size=32, lr=3e-3, patience=None,
                           progress=False)
    run = run_small_cnn(settings, out=tmp_path / "cnn")
    rows = read_json(run.dir / "metrics.json")["variants"]
    assert [r["variant"] for r in rows] == ["plain", "augmented"]
    assert all(0.1 < r["test_accuracy"] <= 1 for r in rows)
    page = (run.dir / "index.html").read_text()
    for variant in ("plain", "augmented"):
        assert (run.dir / variant / "history.png").exists() and f"{variant}/history.png" in page
        assert len(read_json(run.dir / variant / "history.json")["records"]) == 2
        load_small_cnn(run.dir / variant)
    with pytest.raises(ValueError, match="variants"):
        run_small_cnn(settings, out=tmp_path / "other", variants=("fancy",))
