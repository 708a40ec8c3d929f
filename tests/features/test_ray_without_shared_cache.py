"""`vfe extract --engine ray` where the Ray workers do not see the driver's cache folder: every worker of a local
2-CPU Ray session looks for it somewhere else ($VFE_RAY_CACHE_DIR, set for the workers only through Ray's
runtime_env, points them at another, empty folder: workers without the driver's disk). The probe file finds
them blind, so the actors send their features back and this process writes the cache: the entry is the one a
local extraction writes, and nothing lands where the workers look. The reference protocol's corruption stage,
whose tasks write the cache themselves, is refused there in one line.
"""
from __future__ import annotations

import logging

import numpy as np
import pytest

from vfe.api import extract_features
from vfe.cli import main
from vfe.data import load_dataset
from vfe.errors import SettingsError
from vfe.experiment.config import EngineSettings
from vfe.experiment.fanout import extract_on_cluster
from vfe.features import FeatureCache
from vfe.features.ray_engine import CACHE_DIR_ENV, ExtractionJob

pytestmark = pytest.mark.slow
ray = pytest.importorskip("ray")

DIGITS = {"split": "test", "image_size": 32, "shard_size": 64}  # 360 grayscale digits at 32 px: 6 shards


@pytest.fixture(scope="module")
def elsewhere(tmp_path_factory):
    """Where the workers look for the cache folder."""
    return tmp_path_factory.mktemp("another-disk")


@pytest.fixture(scope="module")
def blind_workers(elsewhere):
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", object_store_memory=100 * 2**20,
             logging_level="ERROR", runtime_env={"env_vars": {CACHE_DIR_ENV: str(elsewhere)}})
    try:
        yield
    finally:
        ray.shutdown()


def test_vfe_extract_with_workers_that_do_not_see_the_cache_writes_the_entry_a_local_extraction_writes(
        blind_workers, elsewhere, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="vfe.features.ray_engine"):
        assert main(["extract", "digits", "--split", "test", "--image-size", "32", "--shard-size", "64",
                     "--cache-dir", str(tmp_path / "ray"), "--engine", "ray"]) == 0
    assert "1 of 1 Ray nodes do not see" in caplog.text  # the probe: one actor per node
    (entry,) = FeatureCache(tmp_path / "ray").entries()
    assert entry["status"] == "ok"  # complete, written here
    assert not any(elsewhere.iterdir())  # the workers wrote nothing where they look
    remote = extract_features("digits", cache_dir=str(tmp_path / "ray"), **DIGITS)  # found, not computed
    local = extract_features("digits", cache_dir=str(tmp_path / "local"), **DIGITS)
    assert remote.key == local.key == entry["key"] and remote.manifest["shards"] == entry["shards"]
    np.testing.assert_allclose(remote.array(), local.array(), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(remote.labels, local.labels)


def test_tasks_that_write_the_cache_are_refused_where_the_workers_do_not_see_it(blind_workers, tmp_path):
    class CutSource:  # the reference protocol's source: its tasks would write its cache folder themselves
        cache = FeatureCache(tmp_path)

        def __call__(self, data, transform=None, transform_key=None, desc=None):
            raise AssertionError("nothing may be sent to the cluster")

    test = load_dataset("digits", split="test").subset(np.arange(8), tag="first-8")
    with pytest.raises(SettingsError, match="a Ray node does not see the cache folder") as err:
        extract_on_cluster(CutSource(), [ExtractionJob(test)], EngineSettings(engine="ray"), progress=False)
    assert "\n" not in str(err.value)
