"""The background process (`vfe.experiment.background`) computes cache entries that a later stage reads, on idle
cores only: what it writes has the bits the stage computes, for both protocols' sources, on grayscale digits and
colour photo crops; a stop leaves the cache whole; a failure is one log line; and `vfe run` gives the same numbers
with it as without it."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from vfe.backbones.cut import CutActivations, CutModel, TopFeatures, reference_cut
from vfe.data import load_train_test
from vfe.data.split import balanced_subset
from vfe.data.types import ImageSet
from vfe.experiment import run as run_module
from vfe.experiment.background import Background, Entry
from vfe.experiment.config import with_overrides
from vfe.experiment.run_settings import RunSettings
from vfe.experiment.stages.corruptions import stage as corruption
from vfe.experiment.stages.corruptions.stage import corrupted_features, corruption_transform
from vfe.features.cache import FeatureCache
from vfe.features.source import BackboneFeatures, CutFeatures
from vfe.hardware import usable_cores

NAMES, SEVERITIES, SEED, PARAMS = ["gaussian_noise", "fog", "defocus_blur"], [1, 5], 7, "auto"


def _sources(protocol: str, backbone, cache: FeatureCache):
    """(the part no replicate changes, the stage's whole source) over `cache`, as a run builds them."""
    if protocol == "frozen":
        whole = BackboneFeatures(cache, backbone, progress=False)
        return whole, whole
    cut = CutModel(backbone.model, reference_cut(backbone.model, backbone.arch))
    bottom = CutActivations(backbone, cut, "fp16")
    return BackboneFeatures(cache, bottom, progress=False), \
        CutFeatures(cache, bottom, TopFeatures(backbone, cut, bottom.shape), progress=False)


def _corrupted_entries(source, images: ImageSet, names=NAMES, severities=SEVERITIES) -> list[Entry]:
    return [Entry(source, images, corruption_transform, (n, s, SEED, PARAMS)) for n in names for s in severities]


def _not_again(*_, **__):
    raise AssertionError("a corrupted set was computed again instead of read from the cache")


@pytest.mark.parametrize("protocol", ["frozen", "reference"])
def test_entries_computed_in_the_background_have_the_bits_the_stage_computes(tmp_path, lite0, test_set, protocol,
                                                                           monkeypatch):
    _, here = _sources(protocol, lite0, FeatureCache(tmp_path / "here"))
    want = {(n, s): corrupted_features(here, test_set, n, s, SEED, PARAMS) for n in NAMES for s in SEVERITIES}

    common, stage_source = _sources(protocol, lite0, FeatureCache(tmp_path / "ahead"))
    logs = []
    with Background(log=logs.append) as background:
        background.start(_corrupted_entries(common, test_set), "a test")
        assert background.finished(timeout=300)
    window = background.record[0]
    assert (window["window"], window["entries"], window["ready"]) == ("a test", 6, 6) and window["cpu_seconds"] > 0
    assert logs[-1].startswith("[vfe] background, during a test: 6 of 6 cache entries done (computed, or found in the cache)")
    monkeypatch.setattr(corruption, "corrupt", _not_again)  # from here on, every corrupted image is read
    for key, features in want.items():
        np.testing.assert_array_equal(corrupted_features(stage_source, test_set, *key, SEED, PARAMS), features)
    assert not np.array_equal(want[("fog", 1)], want[("fog", 5)])  # the sets differ, so a swap would show


def test_a_stop_ends_the_process_at_once_and_leaves_the_cache_whole(tmp_path, lite0):
    images = balanced_subset(load_train_test("digits")[1], 300, 0, "test")
    cache = FeatureCache(tmp_path / "cache")
    common = BackboneFeatures(cache, lite0, progress=False)
    names = list(corruption.corruption_names(corruption.CorruptionSettings()))
    entries = _corrupted_entries(common, images, names, [1, 2, 3, 4, 5])  # 95 sets: minutes at idle priority
    background = Background(log=lambda _: None)
    background.start(entries, "a test")
    deadline = time.monotonic() + 120
    while len(list(cache.root.glob("*/manifest.json"))) < 2 and time.monotonic() < deadline:  # the first one sent
        time.sleep(0.2)
    started = time.monotonic()
    background.stop()
    assert time.monotonic() - started < 10  # SIGTERM is acted on between two batches
    ready = background.record[0]["ready"]
    assert 1 <= ready < len(entries)
    assert not [p for p in cache.root.rglob("*.tmp")]  # no half-written file is left behind
    assert {e["status"] for e in cache.entries()} <= {"ok", "incomplete"}
    assert all(r["status"] != "damaged" for r in cache.verify())
    # what it finished is read, the set it was computing is computed here, both with the bits computed afresh
    fresh = BackboneFeatures(FeatureCache(tmp_path / "fresh"), lite0, progress=False)
    for entry in entries[ready - 1:ready + 1]:
        name, severity = entry.transform_args[:2]
        np.testing.assert_array_equal(corrupted_features(common, images, name, severity, SEED, PARAMS),
                                      corrupted_features(fresh, images, name, severity, SEED, PARAMS))


class _Probe:
    """A source that writes down how the process computing it is scheduled."""

    def __init__(self, path: Path):
        self.path = path
        self.progress = True

    def __call__(self, data, transform=None, transform_key=None, desc=None):
        self.path.write_text(json.dumps({"policy": os.sched_getscheduler(0), "threads": torch.get_num_threads(),
                                         "progress": self.progress}))


def test_the_process_runs_at_idle_priority_one_thread_and_no_progress_bar(tmp_path):
    probe = _Probe(tmp_path / "probe.json")
    background = Background(log=lambda _: None)
    background.start([Entry(probe, ImageSet(np.zeros((1, 8, 8, 1), np.uint8), np.zeros(1, int), ["a"], "one"))],
                     "a test")
    assert background.finished(timeout=120)
    background.stop()
    seen = json.loads((tmp_path / "probe.json").read_text())
    assert seen == {"policy": os.SCHED_IDLE, "threads": 1, "progress": False}
    assert probe.progress  # the run's own source keeps its bars: only the process's copy is silenced


class _Failing:
    def __call__(self, data, transform=None, transform_key=None, desc=None):
        raise ValueError(f"{data.source}: cannot read these images\nsecond line")


def test_a_failing_entry_is_one_log_line_and_leaves_the_rest_to_the_stage():
    logs = []
    background = Background(log=logs.append)
    images = ImageSet(np.zeros((2, 8, 8, 1), np.uint8), np.zeros(2, int), ["a"], "two blank images")
    background.start([Entry(_Failing(), images), Entry(_Failing(), images)], "a test")
    assert background.finished(timeout=120)
    background.stop()
    assert background.record[0]["ready"] == 0 and len(logs) == 1
    assert logs[0].startswith("[vfe] background, during a test: 0 of 2 cache entries done (computed, or found in the cache), ")
    assert logs[0].endswith("; it stopped early: ValueError: two blank images: cannot read these images")


def test_disabled_it_starts_nothing():
    background = Background(enabled=False, log=pytest.fail)
    background.start([Entry(_Failing(), ImageSet(np.zeros((1, 8, 8, 1), np.uint8), np.zeros(1, int), ["a"], "x"))],
                     "a test")
    background.stop()
    assert background.record == [] and background.finished(timeout=0)


def _reference_run(tmp: Path, name: str) -> dict:
    settings = {"name": name, "dataset": "digits", "image_size": 32, "n_train": 200, "n_test": 60, "heads": ["linear", "vfe"],
                "replicates": 2, "protocol": "reference", "finetune_epochs": 1,
                "head_params": {"vfe": {"encoder_units": 32, "latent_dim": 8, "decoder_units": 32, "vae_epochs": 5}},
                "corruptions": NAMES, "severities": [1, 5], "n_attack": 8, "attack_eps_linf": [8 / 255],
                "attack_eps_l2": [1.0], "attack_steps": 2, "n_eot": 2, "runs_dir": str(tmp / "runs"),
                "cache_dir": str(tmp / name), "progress": False}
    out = run_module.run(with_overrides(RunSettings(), settings), log=lambda *_: None)
    return json.loads((out / "results.json").read_text())


class _Patient(Background):
    """The run's Background, waiting in its first window until the process has computed every entry: so the
    corruption stage surely reads sets the background computed, however loaded the machine."""

    def start(self, entries, window):
        super().start(entries, window)
        if window == "fine-tuning and fitting":
            assert self.finished(timeout=300)


@pytest.mark.slow
@pytest.mark.skipif(usable_cores() < 2, reason="the background runs where two cores are usable")
def test_a_run_gives_the_same_numbers_with_the_background_as_without(tmp_path, monkeypatch):
    torch.set_num_threads(2)  # two usable threads: the run's workers and its background process are on
    monkeypatch.setattr(run_module, "Background", _Patient)
    with_it = _reference_run(tmp_path, "with")
    monkeypatch.setattr(run_module, "Background", lambda enabled, log: Background(enabled=False, log=log))
    without = _reference_run(tmp_path, "without")
    windows = with_it["background"]
    assert [w["window"] for w in windows] == ["fine-tuning and fitting", "corruptions", "selective", "adversarial"]
    assert windows[0]["entries"] == windows[0]["ready"] == len(NAMES) * 2 + 2  # the corrupted sets, the 2 OOD sets
    assert all(0 <= w["ready"] <= w["entries"] == 2 * 2 for w in windows[1:])  # OOD sets x replicates
    assert without["background"] == []
    for section in ("clean", "corruptions", "selective", "adversarial", "ood"):
        assert _numbers(with_it[section]) == _numbers(without[section]), section


def _numbers(tree):
    """`tree` without its timings (seconds differ between any two runs)."""
    if isinstance(tree, dict):
        return {k: _numbers(v) for k, v in tree.items() if "seconds" not in k}
    if isinstance(tree, list):
        return [_numbers(v) for v in tree]
    return tree
