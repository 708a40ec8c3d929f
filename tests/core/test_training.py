"""The shared training loop: early stopping restores the best epoch; checkpoints resume exactly."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from vfe.checkpoint import Checkpointer
from vfe.data.split import holdout_index
from vfe.heads.base import classification_loss
from vfe.io import read_json
from vfe.training import TrainConfig, train


def _mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Dropout(0.2), nn.Linear(256, 10))  # random too


def _tensors(X, y):
    return torch.from_numpy(X), torch.from_numpy(y.astype(np.int64))


def test_early_stopping_restores_the_best_epoch(digits_features):
    X_train, X_test, y_train, y_test = digits_features
    # 40 training images and a large learning rate: the validation loss turns up after a few epochs
    module = _mlp(0)
    val = _tensors(X_test[:300], y_test[:300])
    history = train(module, classification_loss, _tensors(X_train[:40], y_train[:40]), val,
                    TrainConfig(epochs=60, batch_size=8, lr=3e-3, patience=5, seed=0))
    val_losses = history.series("val_loss")
    assert history.stopped_early and len(val_losses) < 60
    assert history.best_epoch == int(np.argmin(val_losses)) + 1
    assert history.best_epoch < len(val_losses)  # it went on past the best epoch, then went back
    with torch.no_grad():
        loss_now, _ = classification_loss(module.eval(), val)
    assert float(loss_now) == np.float32(min(val_losses)) or abs(float(loss_now) - min(val_losses)) < 1e-5


def test_resume_from_checkpoint_continues_exactly(digits_features, tmp_path):
    X_train, X_test, y_train, y_test = digits_features
    data, val = _tensors(X_train[:200], y_train[:200]), _tensors(X_test[:100], y_test[:100])
    config = TrainConfig(epochs=6, batch_size=32, lr=1e-3, patience=None, seed=3, schedule="cosine")

    straight = _mlp(1)
    train(straight, classification_loss, data, val, config, checkpointer=Checkpointer(tmp_path / "a"))

    interrupted = _mlp(1)
    batches = {"n": 0}

    def interrupting_loss(module, batch):  # a kill at the start of epoch 4 (7 training batches per epoch)
        if module.training:
            batches["n"] += 1
            if batches["n"] > 3 * 7:
                raise KeyboardInterrupt
        return classification_loss(module, batch)

    with pytest.raises(KeyboardInterrupt):
        train(interrupted, interrupting_loss, data, val, config, checkpointer=Checkpointer(tmp_path / "b"))
    assert read_json(tmp_path / "b" / "last.json")["epoch"] == 3
    resumed = _mlp(99)  # a fresh process would start from different weights: the checkpoint replaces them
    history = train(resumed, classification_loss, data, val, config, checkpointer=Checkpointer(tmp_path / "b"))
    assert [r["epoch"] for r in history.records] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_best_only_checkpoints_keep_n_and_restore_exactly(digits_features, tmp_path):
    X_train, X_test, y_train, y_test = digits_features
    module = _mlp(2)
    ckpt = Checkpointer(tmp_path, keep=2)
    history = train(module, classification_loss, _tensors(X_train[:300], y_train[:300]),
                    _tensors(X_test[:100], y_test[:100]), TrainConfig(epochs=8, patience=None, seed=0),
                    checkpointer=ckpt)
    assert len(ckpt.best_checkpoints()) == 2
    fresh = _mlp(5)
    assert ckpt.restore_best(fresh) == history.best_epoch
    for a, b in zip(module.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)


def test_holdout_index_is_stratified_and_disjoint():
    y = np.repeat(np.arange(5), 20)
    train_idx, val_idx = holdout_index(len(y), 0.2, seed=0, labels=y)
    assert set(train_idx).isdisjoint(val_idx) and len(train_idx) + len(val_idx) == 100
    assert np.bincount(y[val_idx]).tolist() == [4] * 5


def test_bf16_precision_trains_in_bf16_evaluates_in_fp32_and_learns_as_well(digits_features):
    X_train, X_test, y_train, y_test = digits_features
    train_t, val_t = _tensors(X_train, y_train), _tensors(X_test, y_test)
    dtypes = {True: set(), False: set()}  # training mode -> dtypes of the first layer's output

    def record(layer, inputs, output):
        dtypes[layer.training].add(output.dtype)

    results = {}
    for precision in ("fp32", "bf16"):
        module = _mlp(0)
        hook = module[0].register_forward_hook(record)
        history = train(module, classification_loss, train_t, val_t,
                        TrainConfig(epochs=8, batch_size=64, lr=3e-3, patience=None, seed=0, precision=precision))
        hook.remove()
        assert all(p.dtype == torch.float32 for p in module.parameters())  # master weights stay fp32
        with torch.no_grad():
            accuracy = float((module(val_t[0]).argmax(1) == val_t[1]).float().mean())
        results[precision] = (min(history.series("val_loss")), accuracy)
    assert dtypes[True] == {torch.float32, torch.bfloat16}  # fp32 run, then bf16 run
    assert dtypes[False] == {torch.float32}  # validation always in fp32
    (fp32_loss, fp32_acc), (bf16_loss, bf16_acc) = results["fp32"], results["bf16"]
    assert fp32_acc > 0.9 and abs(bf16_acc - fp32_acc) < 0.02
    assert abs(bf16_loss - fp32_loss) < 0.05


def test_precision_auto_and_bad_values():
    from vfe.hardware import cpu_has_native_bf16
    from vfe.training import training_precision

    cpu = torch.device("cpu")
    assert training_precision("auto", cpu) == ("bf16" if cpu_has_native_bf16() else "fp32")
    assert training_precision("fp32", cpu) == "fp32"
    with pytest.raises(ValueError, match="precision"):
        training_precision("fp16", cpu)
