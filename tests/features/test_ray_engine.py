"""The Ray engine (src/vfe/features/ray_engine.py) on a local 2-CPU Ray cluster: the cache entry a local
extraction writes, byte for byte, whether the actors write the cache or send their features back for this
process to write; actors that build the backbone this process shipped; a rerun that computes only what is
missing; a job that survives a killed actor; and the one-line errors a user sees without Ray or without a
cluster. tests/features/test_ray_without_shared_cache.py runs `vfe extract --engine ray` with workers that do not
see the driver's cache folder.

One Ray session and one pool of two actors serve the whole module: starting Ray takes ~12 s here and
each actor imports torch and builds its backbone once (several seconds more).
"""
from __future__ import annotations

import os
import signal
import socket
import sys

import numpy as np
import pytest
from colour_data import CLASS_NAMES, colour_splits

from vfe.cli import main
from vfe.data import from_arrays, load_dataset
from vfe.data.types import ImageSet
from vfe.features import FeatureCache, ray_engine
from vfe.features.ray_engine import BackboneSpec, RayConnectionError, RayExtractor, ray_session

# fp32, eager (no trace), one thread: the settings under which features are reproducible bit for bit
SPEC = BackboneSpec("efficientnet_lite0", image_size=64, device="cpu",
                    settings={"jit": False, "precision": "fp32", "threads": 1})
SHARD = 16


def digits_images() -> ImageSet:
    """160 of scikit-learn's 8 x 8 grayscale digits (the test split, as vfe.data loads it): 10 shards."""
    return load_dataset("digits", split="test").subset(np.arange(160), tag="first-160")


def colour_images() -> ImageSet:
    """20 RGB 32 x 32 crops of four scikit-image photos: a short second shard."""
    images, labels = colour_splits(n_train=5, n_test=0)["train"]
    return from_arrays(images, labels, CLASS_NAMES, source="colour")


SETS = {"digits": digits_images, "colour": colour_images}


@pytest.fixture(scope="module")
def extractor():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", object_store_memory=100 * 2**20,
             logging_level="ERROR")
    try:
        with RayExtractor(SPEC, actors=2) as pool:  # the actors start now, in the background
            yield pool
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def backbone(extractor):
    """The same backbone in this process (built while the actors start)."""
    return SPEC.build()


@pytest.fixture(scope="module")
def local(backbone, tmp_path_factory):
    """Each set's features extracted locally, in this process: the reference."""
    root = tmp_path_factory.mktemp("local-cache")
    return {name: FeatureCache(root).extract(backbone, make(), shard_size=SHARD, progress=False)
            for name, make in SETS.items()}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SETS))
def test_ray_writes_the_entry_a_local_extraction_writes_byte_for_byte(extractor, local, name, tmp_path):
    data = SETS[name]()
    fs = extractor.extract(data, FeatureCache(tmp_path), shard_size=SHARD, progress=False)
    reference = local[name]
    assert fs.path == tmp_path / reference.key  # same key: same backbone fingerprint, images and shard size
    assert fs.manifest["shards"] == reference.manifest["shards"]  # each name carries its file's xxh3
    assert fs.array().dtype == np.float32 and fs.array().tobytes() == reference.array().tobytes()
    np.testing.assert_array_equal(fs.labels, data.labels)
    run = extractor.last_run
    assert run.images_computed == len(data) and run.shards_sent == -(-len(data) // SHARD)
    assert len(run.busy_s) == 2 and os.getpid() not in run.busy_s  # both actors worked, elsewhere
    assert run.shared_cache is True  # one node: the actors see the probe file, and write the shards themselves


@pytest.mark.slow
def test_without_a_shared_cache_the_actors_send_their_features_and_this_process_writes_them(extractor, local,
                                                                                          monkeypatch, tmp_path):
    monkeypatch.setattr(extractor, "shared_cache", "no")
    data = digits_images()
    fs = extractor.extract(data, FeatureCache(tmp_path), shard_size=SHARD, progress=False)
    run, reference = extractor.last_run, local["digits"]
    assert run.shared_cache is False and run.images_computed == len(data) and len(run.busy_s) == 2
    assert fs.path == tmp_path / reference.key and fs.manifest["shards"] == reference.manifest["shards"]
    assert fs.array().tobytes() == reference.array().tobytes()


@pytest.mark.slow
def test_the_actors_build_the_backbone_this_process_built_and_shipped(extractor):
    here = extractor.backbone
    for actor in extractor.describe():
        assert actor["pid"] != os.getpid() and actor["fingerprint"] == here.fingerprint()
        assert (actor["device"], actor["precision"], actor["runtime"]) == ("cpu", here.precision, here.runtime)


@pytest.mark.slow
def test_extract_many_fills_every_entry_in_one_queue_as_local_extraction_does(extractor, backbone, local,
                                                                              tmp_path, monkeypatch):
    """Grey and colour images, plain and transformed, in one call: each entry byte-equal to a local one,
    the shared grey set put once for its two jobs."""

    def darken(images: np.ndarray, first_row: int) -> np.ndarray:
        # depends on the shard's first row, as the corruptions' noise seeds do; a closure, so Ray ships it by value
        return (images // 2 + first_row % 7).astype(np.uint8)

    grey, colour = digits_images(), colour_images()
    jobs = [ray_engine.ExtractionJob(grey), ray_engine.ExtractionJob(grey, darken, "darken"),
            ray_engine.ExtractionJob(colour, darken, "darken")]
    ray, put = ray_engine.import_ray(), []
    monkeypatch.setattr(ray, "put", lambda value, _put=ray.put, **kw: put.append(type(value).__name__) or _put(value))
    out = extractor.extract_many(jobs, FeatureCache(tmp_path), shard_size=SHARD, progress=False)
    assert sorted(put) == ["ImageSet"] * 2 + ["_Job"] * 3  # each image set once, whatever the jobs sharing it
    assert out[0].array().tobytes() == local["digits"].array().tobytes()
    for job, fs in zip(jobs[1:], out[1:], strict=True):
        reference = FeatureCache(tmp_path / "local").extract(backbone, job.data, darken, "darken", shard_size=SHARD,
                                                             progress=False)
        assert fs.key == reference.key and fs.array().tobytes() == reference.array().tobytes()
        assert fs.array().tobytes() != out[0].array().tobytes()[:len(fs.array().tobytes())]  # the transform ran
    run = extractor.last_run
    assert run.shards_sent == run.shards == 2 * -(-len(grey) // SHARD) + -(-len(colour) // SHARD)
    assert run.images_computed == 2 * len(grey) + len(colour) and len(run.busy_s) == 2


@pytest.mark.slow
def test_a_rerun_computes_only_the_missing_shards(extractor, backbone, local, tmp_path):
    data, cache = digits_images(), FeatureCache(tmp_path)
    count = -(-len(data) // SHARD)
    # a local worker computes shards 0 and 1 (as `shard_ids` workers do); Ray fills in the rest of the entry
    assert cache.extract(backbone, data, shard_size=SHARD, shard_ids=[0, 1], progress=False) is None
    fs = extractor.extract(data, cache, shard_size=SHARD, progress=False)
    assert (extractor.last_run.shards_sent, extractor.last_run.images_computed) == (count - 2, len(data) - 2 * SHARD)
    assert fs.array().tobytes() == local["digits"].array().tobytes()

    lost = fs.path / fs.manifest["shards"][4]
    lost.unlink()
    again = extractor.extract(data, cache, shard_size=SHARD, progress=False)
    assert (extractor.last_run.shards_sent, extractor.last_run.images_computed) == (1, SHARD)
    assert lost.exists() and again.array().tobytes() == local["digits"].array().tobytes()

    extractor.extract(data, cache, shard_size=SHARD, progress=False)  # complete: verified, nothing computed
    assert (extractor.last_run.shards_sent, extractor.last_run.images_computed) == (0, 0)


@pytest.mark.slow
def test_a_killed_actor_is_restarted_and_the_job_completes_with_the_same_features(extractor, local, tmp_path):
    data = digits_images()
    first_pids = {info["pid"] for info in extractor.describe()}
    seen, killed = [], []

    def kill_once(record: dict) -> None:
        seen.append(record["pid"])
        if not killed:  # the pool has already handed this actor its next shard: it dies mid-task
            os.kill(record["pid"], signal.SIGKILL)
            killed.append(record["pid"])

    fs = extractor.extract(data, FeatureCache(tmp_path), shard_size=SHARD, progress=False, on_shard=kill_once)
    assert killed and set(seen) - first_pids  # a restarted actor (a new process) finished shards
    assert extractor.last_run.images_computed == len(data)  # each shard reported once; the lost task redone
    assert fs.array().tobytes() == local["digits"].array().tobytes()


@pytest.mark.slow
def test_the_cli_hands_its_flags_to_the_ray_engine(extractor, monkeypatch, tmp_path, capsys):
    """`vfe extract --engine ray` end to end, on the module's actors (starting more would not fit 2 CPUs)."""
    made = []

    class Borrowed:
        def __init__(self, spec, actors, cpus_per_actor, gpus_per_actor, shared_cache):
            made.append((spec, actors, cpus_per_actor, gpus_per_actor, shared_cache))

        def __enter__(self):
            return extractor

        def __exit__(self, *exc):
            return None

    monkeypatch.setattr(ray_engine, "RayExtractor", Borrowed)
    args = ["extract", "digits", "--split", "test", "--image-size", "64", "--shard-size", "180",
            "--cache-dir", str(tmp_path), "--engine", "ray", "--actors", "3", "--cpus-per-actor", "1",
            "--ray-shared-cache", "no"]
    assert main(args) == 0
    assert "360 x 1280 features at" in capsys.readouterr().out
    spec, actors, cpus, gpus, shared = made[0]
    assert (spec.name, spec.image_size, actors, cpus, gpus, shared) == ("efficientnet_lite0", 64, 2, 1.0, 0.0, "no")


def test_without_ray_the_engine_names_the_extra_in_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails, as where it is not installed
    assert main(["extract", "digits", "--engine", "ray", "--cache-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'vfe[ray]'" in err


@pytest.mark.parametrize("flag", [["--address", "auto"], ["--ray-shared-cache", "no"]])
def test_ray_flags_without_the_ray_engine_are_refused(flag, tmp_path, capsys):
    assert main(["extract", "digits", *flag, "--cache-dir", str(tmp_path)]) == 2
    assert "--engine ray" in capsys.readouterr().err


def test_an_address_where_nothing_answers_is_one_line_not_a_hang(monkeypatch, tmp_path, capsys):
    ray = pytest.importorskip("ray")
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # as in a fresh process, whatever this one holds
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
        assert main(["extract", "digits", "--engine", "ray", "--address", address, "--cache-dir", str(tmp_path)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"127.0.0.1:{port}" in err and "ray start --head" in err
    with pytest.raises(RayConnectionError, match="expected auto, local"), ray_session("nowhere"):
        pass
