"""The corruption stage computes several corrupted test sets at once (`fill_cache`, one intra-op thread per
worker): every set lands in the cache before the stage reads it, with the bits the one-at-a-time path gives, for
both protocols' feature sources, on grayscale digits and colour photo crops."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from vfe.backbones.cut import CutActivations, CutModel, TopFeatures, reference_cut
from vfe.experiment.config import BackboneSettings
from vfe.experiment.stages.corruptions import stage as corruption
from vfe.experiment.stages.corruptions.stage import cache_workers, corrupted_features, fill_cache
from vfe.features.cache import FeatureCache
from vfe.features.source import BackboneFeatures, CutFeatures

NAMES, SEVERITIES, SEED, PARAMS = ["gaussian_noise", "fog"], [1, 5], 7, "auto"


def _source(protocol: str, backbone, cache: FeatureCache):
    if protocol == "frozen":
        return BackboneFeatures(cache, backbone, progress=False)
    cut = CutModel(backbone.model, reference_cut(backbone.model, backbone.arch))
    bottom = CutActivations(backbone, cut, "fp16")
    return CutFeatures(cache, bottom, TopFeatures(backbone, cut, bottom.shape), progress=False)


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["frozen", "reference"])
def test_sets_computed_together_have_the_bits_of_one_at_a_time(tmp_path, lite0, test_set, protocol, monkeypatch):
    one_at_a_time = _source(protocol, lite0, FeatureCache(tmp_path / "a"))
    want = {(n, s): corrupted_features(one_at_a_time, test_set, n, s, SEED, PARAMS) for n in NAMES for s in SEVERITIES}

    together = _source(protocol, lite0, FeatureCache(tmp_path / "b"))
    threads = set()
    computing = corruption.corrupted_features

    def recording(*args, **kwargs):
        threads.add((threading.get_ident(), torch.get_num_threads()))
        return computing(*args, **kwargs)

    monkeypatch.setattr(corruption, "corrupted_features", recording)
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # the main thread's count, which the workers must not run at
    try:
        seconds = fill_cache(together, test_set, NAMES, SEVERITIES, SEED, PARAMS, workers=2, progress=False)
    finally:
        torch.set_num_threads(before)
    assert set(seconds) == set(NAMES) and all(t > 0 for t in seconds.values())  # each corruption's worker time
    assert len({t for t, _ in threads}) == 2 and {n for _, n in threads} == {1}  # two workers, one thread each
    entries = FeatureCache(tmp_path / "b").entries()
    assert sum(e["status"] == "ok" for e in entries) == len(entries) == len(want) * (1 if protocol == "frozen" else 2)
    monkeypatch.setattr(corruption, "corrupt", _not_again)  # from now on every set is read, none computed
    for key, features in want.items():
        got = corrupted_features(together, test_set, *key, SEED, PARAMS)
        np.testing.assert_array_equal(got, features)
    assert not np.array_equal(want[("fog", 1)], want[("fog", 5)])  # the sets differ, so a swap would show


def _not_again(*_, **__):
    raise AssertionError("a corrupted set was computed again instead of read from the cache")


def test_the_workers_follow_the_cores_the_user_allows(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    monkeypatch.setattr(corruption, "usable_cores", lambda: 4)
    assert cache_workers(BackboneSettings(device="cpu")) == 4
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert cache_workers(BackboneSettings(device="cpu")) == 1  # OMP_NUM_THREADS=1: one set at a time
    finally:
        torch.set_num_threads(before)
