"""The same command gives the same numbers however busy the machine is (docs/reproducibility.md).

A training step's float sums depend on the intra-op thread count, so training must run on a count fixed by the
machine, never one that follows the load; a forward pass gives the same bits at any thread count and in either
extraction pipeline, so extraction may follow the load. Load is simulated on a mocked 2-core machine.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch import nn

from vfe import hardware
from vfe.backbones import create_backbone, engine
from vfe.backbones.cut import CutActivations, CutModel, TopFeatures, reference_cut
from vfe.heads.base import fit_classifier
from vfe.heads.linear import LinearHead
from vfe.training import TrainConfig


@pytest.fixture
def two_cores(monkeypatch, tmp_path):
    """A 2-CPU machine without cgroup quota, torch at 2 threads, no user thread variables; `load(x)` makes
    other processes keep x cores busy (the load average and the runnable tasks both say so)."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(hardware, "CGROUP_ROOT", tmp_path)
    monkeypatch.setattr(hardware, "own_load", lambda: 0.0)
    for name in hardware.USER_THREAD_ENV:
        monkeypatch.delenv(name, raising=False)
    torch.set_num_threads(2)  # tests/conftest.py's autouse fixture restores 1 afterwards

    def load(busy: float) -> None:
        monkeypatch.setattr(os, "getloadavg", lambda: (busy, busy, busy))
        monkeypatch.setattr(hardware, "runnable_elsewhere", lambda: busy)
    return load


def _top() -> nn.Module:
    """A tiny stand-in for the reference protocol's fine-tuned top: convolution, BatchNorm in training mode
    (its batch statistics are a sum over the batch), Dropout -> Dense (its weight gradient is one too)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Dropout(0.3), nn.Linear(64, 10))


def _fine_tune(threads: int | None = None) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 32, 4, 4)).astype(np.float32)
    y = rng.integers(0, 10, 300).astype(np.int64)
    module = _top()
    fit_classifier(module, X, y, None, TrainConfig(epochs=1, batch_size=100, patience=None, threads=threads))
    return module.state_dict()


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_training_gives_the_same_weights_on_a_quiet_and_a_busy_machine(two_cores):
    # the premise: the thread count changes the weights, so a count that followed the load would too
    assert not _same(_fine_tune(threads=1), _fine_tune(threads=2))
    two_cores(0.0)
    assert hardware.free_cores() == 2
    quiet = _fine_tune()
    two_cores(1.0)  # another process holds one core
    assert hardware.free_cores() == 1
    busy = _fine_tune()
    assert _same(quiet, busy)
    assert _same(quiet, _fine_tune(threads=2))  # the usable cores, not the free ones


def test_feature_heads_give_the_same_weights_on_a_quiet_and_a_busy_machine(two_cores):
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(400, 256)).astype(np.float32), rng.integers(0, 10, 400)
    states = []
    for busy in (0.0, 1.0):
        two_cores(busy)
        states.append(LinearHead(epochs=2, random_state=0).fit(X, y).export_state()[0])
    assert _same(*states)


@pytest.mark.skipif(not hardware.cpu_has_native_bf16(), reason="needs a CPU with native bf16 (AVX512-BF16 or AMX)")
def test_bf16_training_repeats_exactly(two_cores):
    rng = np.random.default_rng(2)
    X, y = rng.normal(size=(300, 64)).astype(np.float32), rng.integers(0, 10, 300).astype(np.int64)
    states = []
    for _ in range(2):
        torch.manual_seed(0)
        module = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
        fit_classifier(module, X, y, None, TrainConfig(epochs=2, batch_size=64, patience=None, precision="bf16"))
        states.append(module.state_dict())
    assert _same(*states)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, size=(40, 28, 28), dtype=np.uint8)  # 2 full batches + 8


def _lite0(**settings):
    """The default backbone (packaged EfficientNet-Lite0, traced fp32), at 64 px to keep the test short."""
    return create_backbone("efficientnet_lite0", image_size=64, device="cpu", **settings)


def test_one_thread_bits_checks_each_shape_once_and_falls_back_to_one_thread(two_cores):
    calls = []

    def by_threads(x):  # a function whose bits depend on the thread count, like oneDNN on a small batch
        calls.append(torch.get_num_threads())
        return x * torch.get_num_threads()

    def steady(x):
        calls.append(torch.get_num_threads())
        return x + 1

    bits, x = engine.OneThreadBits(), torch.ones(3)
    with engine.intra_op_threads(2):
        assert torch.equal(bits(by_threads, x), x) and calls == [2, 1]  # checked: the one-thread result
        assert torch.equal(bits(by_threads, x), x) and calls == [2, 1, 1]  # then one thread for this shape
        assert torch.equal(bits(steady, x[:2]), x[:2] + 1) and calls == [2, 1, 1, 2, 1]
        assert torch.equal(bits(steady, x[:2]), x[:2] + 1) and calls[-1] == 2  # agrees: the count given
    assert torch.get_num_threads() == 2


@pytest.mark.slow
def test_extraction_gives_the_same_features_at_any_load_and_in_either_pipeline(two_cores, images, monkeypatch):
    counts = []
    real = engine.compute_threads

    def recording(requested, prefetch):
        counts.append(real(requested, prefetch))
        return counts[-1]

    monkeypatch.setattr("vfe.backbones.backbone.compute_threads", recording)
    features, activations = {}, {}
    for busy in (0.0, 1.0):
        two_cores(busy)
        for prefetch in (True, False):  # the reference protocol's parts below on the one without prefetch
            backbone = _lite0(prefetch=prefetch)
            features[(busy, prefetch)] = backbone.extract(images, progress=False)
        cut = CutModel(backbone.model, reference_cut(backbone.model, backbone.arch))
        bottom = CutActivations(backbone, cut, "fp32")
        activations[busy] = np.concatenate(list(bottom.iter_features(images)))
        features[(busy, "top")] = np.concatenate(list(TopFeatures(backbone, cut, bottom.shape).iter_features(
            [activations[busy]], batch_size=16)))  # 40 rows: 2 full chunks and a partial one
    # quiet: 1 thread beside the prefetch thread, else 2 (the extraction, the bottom, the top); busy: 1
    assert counts == [1, 2, 2, 2, 1, 1, 1, 1]
    first = features[(0.0, False)]  # 2 full batches and a partial one: all with the one-thread bits
    assert all(np.array_equal(first, f) for k, f in features.items() if k[1] != "top")
    assert np.array_equal(activations[0.0], activations[1.0])
    assert np.array_equal(features[(0.0, "top")], features[(1.0, "top")])


@pytest.mark.slow
def test_which_batches_run_traced_does_not_depend_on_what_was_extracted_first(images):
    fresh = _lite0(prefetch=False).extract(images, progress=False)
    backbone = _lite0(prefetch=False)
    backbone.extract(images[:5], progress=False)  # a small set first: its one batch of 5 must not be traced
    assert np.array_equal(backbone.extract(images, progress=False), fresh)
    eager = _lite0(prefetch=False, jit=False).extract(images, progress=False)
    assert not np.array_equal(eager[:32], fresh[:32])  # the premise: traced and eager features differ in bits
    assert np.array_equal(eager[32:], fresh[32:])  # the partial last batch runs eagerly
