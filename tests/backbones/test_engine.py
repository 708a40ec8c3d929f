"""The fast path (src/vfe/backbones/engine.py, precision.py): prefetching, tracing, precision choice."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from vfe.backbones import create_backbone
from vfe.backbones.engine import Prefetcher, ThreadModeChoice, TracedFeatures, iter_uint8_batches
from vfe.backbones.precision import FAITHFUL_COSINE, min_cosine
from vfe.hardware import cpu_has_native_bf16


def test_prefetcher_keeps_order_and_runs_ahead_in_another_thread():
    seen_threads = set()

    def work(i):
        seen_threads.add(threading.current_thread().name)
        return i * i

    assert list(Prefetcher(iter(range(10)), work)) == [i * i for i in range(10)]
    assert seen_threads == {"vfe-prefetch"}
    assert list(Prefetcher(iter(range(4)), work, enabled=False)) == [0, 1, 4, 9]


def test_prefetcher_raises_the_workers_error_in_the_caller():
    def work(i):
        if i == 3:
            raise KeyError("bad batch 3")
        return i

    outputs = iter(Prefetcher(iter(range(10)), work))
    assert [next(outputs) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(KeyError, match="bad batch 3"):
        next(outputs)


def test_prefetcher_stops_working_when_the_caller_stops_reading():
    produced = []
    prefetcher = Prefetcher(iter(range(1000)), lambda i: produced.append(i) or i, depth=2)
    for out in prefetcher:
        if out == 1:
            break
    time.sleep(0.5)
    assert len(produced) <= 5  # two queued, one waiting to be queued, then it gives up


def _timed_modes(slow_mode: bool, calls: list):
    """A stand-in for Backbone._run_mode whose `slow_mode` takes 20 ms per batch, the other 2 ms."""
    def run_mode(batches, prefetch):
        for batch in batches:
            calls.append(prefetch)
            time.sleep(0.02 if prefetch == slow_mode else 0.002)
            yield batch
    return run_mode


@pytest.mark.parametrize("slow_mode", [True, False])
def test_pipeline_choice_measures_both_modes_keeps_the_faster_and_loses_no_batch(slow_mode):
    choice, calls = ThreadModeChoice(batches=4, ttl=60), []
    batches = [np.full((2, 4, 4), i, np.uint8) for i in range(30)]
    out = list(choice.run(iter(batches), _timed_modes(slow_mode, calls)))
    assert [int(b[0, 0, 0]) for b in out] == list(range(30))  # every batch, in order
    assert choice.prefetch is (not slow_mode) and choice.rates[not slow_mode] > 3 * choice.rates[slow_mode]
    # 3 warm-up batches, 4 per mode, then the rest in the faster mode
    assert calls[:11] == [False] * 3 + [False] * 4 + [True] * 4 and set(calls[11:]) == {not slow_mode}
    calls.clear()  # within ttl the next extraction reuses the choice without measuring again
    assert len(list(choice.run(iter(batches[:5]), _timed_modes(slow_mode, calls)))) == 5
    assert calls == [not slow_mode] * 5


def test_pipeline_choice_with_too_few_batches_to_measure_keeps_them_all():
    choice, calls = ThreadModeChoice(batches=4), []
    batches = [np.zeros((1, 4, 4), np.uint8)] * 6
    assert len(list(choice.run(iter(batches), _timed_modes(True, calls)))) == 6
    assert choice.prefetch is None and calls == [False] * 6  # nothing measured yet: all cores


def test_an_iterable_source_is_read_lazily_and_rebatched():
    produced = []

    def source():
        for i in range(5):
            produced.append(i)
            yield np.full((4, 8, 8), i, np.uint8), np.zeros(4)  # (images, labels) as a DataLoader yields

    batches, total = iter_uint8_batches(source(), batch_size=3)
    assert total is None and produced == []
    assert len(next(batches)) == 3 and produced == [0]
    assert [len(b) for b in batches] == [1] + [3, 1] * 4


class _Noisy(torch.nn.Module):
    """Stochastic: a trace of it cannot reproduce the eager output."""

    def forward(self, x):
        return x.mean((2, 3)) + torch.rand(len(x), 1)


class _Untraceable(torch.nn.Module):
    def forward(self, x):
        return torch.tensor([float(v) for v in x.flatten(1).mean(1).tolist()])[:, None]


class _Plain(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.bn = torch.nn.BatchNorm2d(4).eval()

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x))).mean((2, 3))


def test_a_faithful_trace_serves_its_batch_size_and_other_sizes_run_eagerly():
    module = _Plain().eval()
    traced = TracedFeatures(module)
    x = torch.rand(8, 3, 12, 12)
    with torch.inference_mode():
        torch.testing.assert_close(traced(x), module(x), rtol=1e-4, atol=1e-5)
        (size, fn), = traced.cache.values()
        assert size == 8 and isinstance(fn, torch.jit.ScriptModule)
        torch.testing.assert_close(traced(x[:5]), module(x[:5]))  # partial batch: eager, no new trace
        assert len(traced.cache) == 1


@pytest.mark.parametrize("module", [_Noisy(), _Untraceable()], ids=["differs", "fails"])
def test_a_trace_that_differs_or_fails_is_replaced_by_the_eager_module(module):
    traced = TracedFeatures(module)
    x = torch.rand(6, 3, 4, 4)
    with torch.inference_mode(), pytest.warns(RuntimeWarning, match="eagerly"):
        assert traced(x).shape == module(x).shape
    (_, fn), = traced.cache.values()
    assert fn is module


def test_min_cosine_is_the_worst_image():
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    b = torch.tensor([[1.0, 0.0], [1.0, -1.0]])
    assert min_cosine(a, b) == pytest.approx(0.0)
    assert min_cosine(np.ones((3, 4)), np.ones((3, 4))) == pytest.approx(1.0)


@pytest.mark.skipif(not cpu_has_native_bf16(), reason="needs a CPU with native bf16 (AVX512-BF16 or AMX)")
def test_auto_precision_keeps_fp32_when_bf16_is_unfaithful_for_these_weights():
    # with its ImageNet weights Lite0's bf16 features drift (cosine ~0.99 on photos): auto must refuse
    bb = create_backbone("efficientnet_lite0", image_size=112, device="cpu", jit=False, reduced_precision=True)
    check = bb.precision_check
    assert check["candidate"] == "bf16" and check["photos"] == 8
    assert check["min_cosine"] < FAITHFUL_COSINE and bb.precision == "fp32"
    forced = create_backbone("efficientnet_lite0", image_size=112, device="cpu", jit=False, precision="bf16")
    assert forced.precision == "bf16" and forced.precision_check is None
