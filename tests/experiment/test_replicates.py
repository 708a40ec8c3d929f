"""Replicates redraw every random factor of a run and nothing else: two replicates differ in their training
subset, fine-tuning, head initialisation and attacked images; the same replicate computed twice (in runs with a
different number of replicates, from separate caches) is identical; the test set is shared."""
from __future__ import annotations

import json

import pytest
import torch
from threadpoolctl import threadpool_limits

from vfe.data import load_train_test
from vfe.data.split import balanced_index
from vfe.experiment.config import with_overrides
from vfe.experiment.replicates import replicate_seed, replicates
from vfe.experiment.run import run
from vfe.experiment.run_settings import RunSettings
from vfe.features.cache import FeatureCache

TINY = {"dataset": "digits", "image_size": 32, "n_train": 200, "n_test": 100, "heads": ["linear", "t3a"],
        "head_params": {"linear": {"epochs": 20}}, "corruptions": ["gaussian_noise"], "severities": [3],
        "n_attack": 12, "attack_eps_linf": [2 / 255], "attack_eps_l2": [], "attack_steps": 2, "n_eot": 2,
        "progress": False}


def _run(tmp, name: str, **overrides) -> dict:
    settings = with_overrides(RunSettings(), {**TINY, "name": name, "runs_dir": str(tmp / "runs"),
                                              "cache_dir": str(tmp / f"cache-{name}"), **overrides})
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # module fixtures are outside conftest's one-thread fixture
    try:
        with threadpool_limits(limits=1):
            out = run(settings, log=lambda *_: None)
    finally:
        torch.set_num_threads(before)
    return json.loads((out / "results.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("replicates")
    return {"three": _run(tmp, "three", replicates=3), "one": _run(tmp, "one", replicates=1)}


def test_replicate_seeds_are_fixed_distinct_and_do_not_depend_on_how_many_replicates():
    assert [r.seed for r in replicates(0, 3)] == [replicate_seed(0, i) for i in range(3)]
    assert replicates(0, 5)[:3] == replicates(0, 3)  # replicate r is the same whatever n
    seeds = {replicate_seed(base, i) for base in range(4) for i in range(4)}
    assert len(seeds) == 16  # no two (base seed, replicate) pairs share a seed, e.g. (0, 1) and (1, 0)
    assert all(0 <= s < 2 ** 31 for s in seeds)
    with pytest.raises(ValueError):
        replicate_seed(0, -1)


@pytest.mark.slow
def test_the_run_records_what_replicates_redraw(runs):
    setting = runs["three"]["setting"]
    assert setting["replicates"] == 3 and setting["replicate_seeds"] == [replicate_seed(0, i) for i in range(3)]
    assert "training subset" in setting["redrawn_per_replicate"]
    assert "test subset" in setting["fixed_across_replicates"]
    assert set(runs["three"]["clean"]["linear"]) == {"0", "1", "2"}


@pytest.mark.slow
def test_replicates_differ_in_heads_and_attacked_images(runs):
    results = runs["three"]
    accuracy = [results["clean"]["linear"][r]["accuracy"] for r in "012"]
    nll = [results["clean"]["linear"][r]["nll"] for r in "012"]
    assert len(set(nll)) == 3, (accuracy, nll)  # another subset and initialisation each time
    # each replicate attacks its own class-balanced draw of the test set; every head of a replicate the same one
    test = load_train_test("digits", seed=0)[1]
    test_rows = balanced_index(test.labels, 100, 0)
    images = {r: results["adversarial"]["linear"][r]["images"] for r in "012"}
    for r, rows in images.items():
        assert rows == results["adversarial"]["t3a"][r]["images"]
        assert rows == balanced_index(test.labels[test_rows], 12, replicate_seed(0, int(r))).tolist()
    assert len({tuple(v) for v in images.values()}) == 3


@pytest.mark.slow
def test_the_same_replicate_computed_twice_is_identical(runs):
    # replicate 0 of a one-replicate run, from its own empty cache, equals replicate 0 of the three-replicate run
    one, three = runs["one"], runs["three"]
    for head in ("linear", "t3a"):
        assert one["clean"][head]["0"] == three["clean"][head]["0"]
        assert one["corruptions"]["per_head"][head]["0"]["accuracy"] == \
            three["corruptions"]["per_head"][head]["0"]["accuracy"]
        assert one["adversarial"][head]["0"]["correct"] == three["adversarial"][head]["0"]["correct"]
        assert one["ood"]["per_head"][head]["0"] == three["ood"]["per_head"][head]["0"]


@pytest.mark.slow
def test_the_corrupted_test_set_is_extracted_once_for_every_replicate(runs, tmp_path_factory):
    # one noise draw: the frozen backbone's features of the corrupted test set are one cache entry that all three
    # replicates read, while each replicate's training subset is an entry of its own
    cache = FeatureCache(runs["three"]["config"]["cache_dir"])
    transforms = [e.get("transform") or "" for e in cache.entries()]
    assert sum(t.startswith("corrupt:gaussian_noise:s3") for t in transforms) == 1
    sources = [e.get("data_source") or "" for e in cache.entries()]
    assert sum("train:n=200" in s for s in sources) == 3, sources


@pytest.mark.slow
def test_noise_per_replicate_draws_each_replicates_own_corrupted_test_set(tmp_path):
    results = _run(tmp_path, "noisy", replicates=2, heads=["linear"], n_attack=0, ood=False,
                   noise_per_replicate=True)
    assert "corruption noise of the test images" in results["setting"]["redrawn_per_replicate"]
    assert "corruption noise of the test images" not in results["setting"]["fixed_across_replicates"]
    transforms = [e.get("transform") or "" for e in FeatureCache(results["config"]["cache_dir"]).entries()]
    noisy = sorted(t for t in transforms if t.startswith("corrupt:gaussian_noise:s3"))
    seeds = results["setting"]["replicate_seeds"]
    assert len(noisy) == 2 and all(any(f":seed{s}:" in t for t in noisy) for s in seeds), noisy


@pytest.mark.slow
def test_reference_protocol_fine_tunes_once_per_replicate(tmp_path):
    results = _run(tmp_path, "reference", protocol="reference", replicates=2, finetune_epochs=1, heads=["linear"],
                   corruptions=[], n_attack=0, ood=False)
    ft = results["finetune"]
    assert set(ft) == {"0", "1"}
    assert [ft[r]["seed"] for r in "01"] == results["setting"]["replicate_seeds"]
    assert ft["0"]["weights_sha256"] != ft["1"]["weights_sha256"]
    assert ft["0"]["cut_point"] == ft["1"]["cut_point"]
