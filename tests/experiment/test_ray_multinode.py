"""`--engine ray` on a Ray cluster of three nodes (`ray.cluster_utils.Cluster`, Ray's own tool for multi-node
tests: a head and two worker nodes, each its own raylet and object store, all on 127.0.0.1): `vfe extract` and
a small `vfe run` give the local engine's numbers with their work spread over both worker nodes, through the
user's `--address`; and the no-shared-filesystem mode is chosen across nodes, by itself, when one worker node
looks for the cache folder on a disk of its own.

The nodes: the head holds no CPU (the driver's node: its object store holds what the driver puts, and the
worker nodes fetch it from there, as on a real cluster); worker nodes "a" and "b" have one CPU each, so the
two backbone actors (one per CPU) run one on each. Node "a" sees the driver's cache folder at its path; node
"b" looks for it at `$VFE_RAY_CACHE_DIR` (set in that node's raylet environment, hence in its workers'), a
symlink each test points either at the driver's cache folder (a share mounted at another path) or at an
empty folder (a node with its own disk, which does not see the driver's).

Why every node is pinned to 127.0.0.1 and `ENABLE_RAY_CLUSTER` is patched on the driver: this machine's
route out goes through 192.0.2.2, and Ray's `resolve_ip_for_localhost` turns any loopback address given to
`ray.init` (the head's `127.0.0.1:PORT`, or `_node_ip_address="127.0.0.1"`) into that address, where nothing
of a 127.0.0.1 cluster listens (ray.init then retries the GCS for minutes). With the constant off, Ray keeps
loopback addresses as they are (its behaviour on a laptop). On a real cluster, nodes advertise their own
addresses and none of this applies.

One cluster serves the module (~10 s to start); each test connects to the head's HOST:PORT as `--address` does.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from vfe.api import extract_features
from vfe.cli import main
from vfe.data import load_dataset
from vfe.errors import SettingsError
from vfe.experiment.config import EngineSettings
from vfe.experiment.fanout import extract_on_cluster
from vfe.experiment.stages.adversarial import stage as adversarial
from vfe.features import FeatureCache
from vfe.features.ray_engine import CACHE_DIR_ENV, ExtractionJob, RayExtractor, ray_session

pytestmark = pytest.mark.slow
ray = pytest.importorskip("ray")
cluster_utils = pytest.importorskip("ray.cluster_utils")

MB = 2**20
NODE = {"node_ip_address": "127.0.0.1", "object_store_memory": 100 * MB}
DIGITS = ["digits", "--split", "test", "--image-size", "32", "--shard-size", "64"]  # 360 digits: 6 shards
DIGITS_KWARGS = {"split": "test", "image_size": 32, "shard_size": 64}


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    """The three-node cluster: {"address": the head's HOST:PORT, "b": node b's view of the cache folder}."""
    tmp = tmp_path_factory.mktemp("multinode")
    b_view = tmp / "node-b" / "cache"  # where node b looks: a symlink the tests point
    b_view.parent.mkdir()
    b_view.symlink_to(tmp / "nowhere-yet")
    if ray.is_initialized():  # a connection left by another module would be reused instead of this cluster
        ray.shutdown()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ray._private.ray_constants, "ENABLE_RAY_CLUSTER", False)
        cluster = cluster_utils.Cluster(initialize_head=True, shutdown_at_exit=True,
                                        head_node_args={**NODE, "num_cpus": 0, "include_dashboard": False})
        try:
            cluster.add_node(**NODE, num_cpus=1, node_name="a")
            cluster.add_node(**NODE, num_cpus=1, node_name="b", env_vars={CACHE_DIR_ENV: str(b_view)})
            cluster.wait_for_nodes()
            yield {"address": cluster.address, "b": b_view}
        finally:
            if ray.is_initialized():
                ray.shutdown()
            cluster.shutdown()


def node_b_sees(nodes, folder: Path) -> None:
    """Point node b's view of the cache folder at `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    nodes["b"].unlink()
    nodes["b"].symlink_to(folder, target_is_directory=True)


@pytest.fixture
def extractors(monkeypatch):
    """What each RayExtractor did, recorded as it closes: its actors' nodes and its last run's statistics."""
    seen, real = [], RayExtractor.close

    def close(self):
        seen.append({"nodes": [info["node"] for info in self.describe()], "stats": self.last_run})
        real(self)

    monkeypatch.setattr(RayExtractor, "close", close)
    return seen


def assert_the_local_entry(cache: Path, tmp_path: Path) -> None:
    """The cache folder holds one complete entry, the one a local extraction writes, with its features."""
    (entry,) = FeatureCache(cache).entries()
    assert entry["status"] == "ok"
    remote = extract_features("digits", cache_dir=str(cache), **DIGITS_KWARGS)  # found, not computed
    local = extract_features("digits", cache_dir=str(tmp_path / "local"), **DIGITS_KWARGS)
    assert remote.key == local.key == entry["key"] and remote.manifest["shards"] == local.manifest["shards"]
    np.testing.assert_allclose(remote.array(), local.array(), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(remote.labels, local.labels)


def assert_both_worker_nodes_computed(record: dict) -> None:
    assert len(set(record["nodes"])) == 2  # one actor on each worker node
    assert len(record["stats"].images) == 2 and all(n > 0 for n in record["stats"].images.values())
    assert record["stats"].images_computed == 360


def test_vfe_extract_on_two_nodes_that_share_the_cache_folder_writes_the_local_entry(nodes, extractors, tmp_path,
                                                                                     caplog):
    cache = tmp_path / "cache"
    node_b_sees(nodes, cache)  # the same folder, mounted at another path on node b
    with caplog.at_level(logging.INFO, logger="vfe.features.ray_engine"):
        assert main(["extract", *DIGITS, "--cache-dir", str(cache), "--engine", "ray",
                     "--address", nodes["address"]]) == 0
    assert "do not see" not in caplog.text
    (record,) = extractors
    assert record["stats"].shared_cache is True  # the actors wrote the shards themselves
    assert_both_worker_nodes_computed(record)
    assert_the_local_entry(cache, tmp_path)


def test_vfe_extract_where_a_worker_node_has_its_own_disk_sends_the_features_back(nodes, extractors, tmp_path,
                                                                                  caplog):
    cache, own_disk = tmp_path / "cache", tmp_path / "node-b-disk"
    node_b_sees(nodes, own_disk)  # node b does not see the driver's folder
    with caplog.at_level(logging.INFO, logger="vfe.features.ray_engine"):
        assert main(["extract", *DIGITS, "--cache-dir", str(cache), "--engine", "ray",
                     "--address", nodes["address"]]) == 0
    assert "1 of 2 Ray nodes do not see" in caplog.text  # the probe, one actor per node: node b is blind
    (record,) = extractors
    assert record["stats"].shared_cache is False  # the features came back through the object store
    assert_both_worker_nodes_computed(record)
    assert not any(own_disk.iterdir())  # node b wrote nothing on its own disk
    assert_the_local_entry(cache, tmp_path)


def test_tasks_that_write_the_cache_are_refused_where_a_worker_node_does_not_see_it(nodes, tmp_path):
    node_b_sees(nodes, tmp_path / "node-b-disk")

    class CutSource:  # the reference protocol's source: its tasks would write its cache folder themselves
        cache = FeatureCache(tmp_path / "cache")

        def __call__(self, data, transform=None, transform_key=None, desc=None):
            raise AssertionError("nothing may be sent to the cluster")

    test = load_dataset("digits", split="test").subset(np.arange(8), tag="first-8")
    with ray_session(nodes["address"]), pytest.raises(SettingsError, match="a Ray node does not see the cache"):
        extract_on_cluster(CutSource(), [ExtractionJob(test)], EngineSettings(engine="ray"), progress=False)


RUN = ["--dataset", "digits", "--n-train", "200", "--n-test", "100", "--image-size", "32", "--no-progress",
       "--heads", "linear", "--replicates", "1", "--head-param", "linear.epochs=8", "--corruptions",
       "gaussian_noise", "contrast", "--severities", "1", "4", "--n-attack", "10", "--attack-eps-linf", "0.008",
       "--attack-steps", "2", "--no-ood"]


def test_vfe_run_across_nodes_without_a_shared_cache_gives_the_local_numbers(nodes, extractors, tmp_path,
                                                                              monkeypatch):
    """A small frozen-protocol `vfe run`: its corrupted test sets extracted by actors on both worker nodes (node
    b blind: the features come back), its head fitted and attacked in tasks; the numbers are the local run's."""
    node_b_sees(nodes, tmp_path / "node-b-disk")
    attacked, real = [], adversarial.fan_out

    def spy(function, items, shared, **kwargs):
        attacked.extend(items)
        yield from real(function, items, shared, **kwargs)

    monkeypatch.setattr(adversarial, "fan_out", spy)
    results = {}
    for engine, address in (("local", []), ("ray", ["--address", nodes["address"]])):
        assert main(["run", *RUN, "--cache-dir", str(tmp_path / engine), "--runs-dir", str(tmp_path / "runs"),
                     "--name", engine, "--engine", engine, *address]) == 0, engine
        results[engine] = json.loads((tmp_path / "runs" / engine / "results.json").read_text())
    assert len(attacked) == 1  # the one head x replicate, attacked in a task
    (record,) = extractors  # the corruption stage's actors
    assert len(set(record["nodes"])) == 2 and record["stats"].shared_cache is False
    assert not any((tmp_path / "node-b-disk").iterdir())
    local, remote = results["local"], results["ray"]
    assert remote["clean"]["linear"]["0"]["accuracy"] == local["clean"]["linear"]["0"]["accuracy"]
    assert remote["clean"]["linear"]["0"]["nll"] == pytest.approx(local["clean"]["linear"]["0"]["nll"], rel=1e-5,
                                                                  abs=1e-6)
    assert remote["corruptions"]["per_head"]["linear"]["0"]["accuracy"] == \
        local["corruptions"]["per_head"]["linear"]["0"]["accuracy"]
    assert remote["adversarial"]["linear"]["0"]["correct"] == local["adversarial"]["linear"]["0"]["correct"]
    assert {e["key"] for e in FeatureCache(tmp_path / "ray").entries()} == \
        {e["key"] for e in FeatureCache(tmp_path / "local").entries()}

