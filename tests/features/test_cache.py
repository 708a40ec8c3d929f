"""The feature cache (src/vfe/features/cache.py): once per key, sharded, atomic, resumable, bounded memory."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import weakref
from pathlib import Path

import numpy as np
import pytest
from conftest import digits_set
from fakes import TinyBackbone, tiny_set

from vfe.cli import main
from vfe.data.types import ImageSet
from vfe.features import FeatureCache, FeatureSet, default_cache_root
from vfe.features.cache import cache_key


def test_features_are_computed_once_and_read_back_memory_mapped(tmp_path, counting, backbone, digits):
    cache = FeatureCache(tmp_path)
    first = cache.extract(counting, digits, shard_size=16, progress=False)
    assert isinstance(first, FeatureSet) and counting.images == len(digits) == len(first)
    assert [len(s) for s in first.shard_arrays()] == [16, 16, 8]
    assert all(isinstance(s, np.memmap) for s in first.shard_arrays())
    np.testing.assert_allclose(first.array(), backbone.extract(digits, progress=False), rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(first.labels, digits.labels)

    again = cache.extract(counting, digits_set(), shard_size=16, progress=False)  # equal content, new object
    assert counting.images == len(digits)  # nothing recomputed
    assert again.path == first.path and again.dim == 1280
    np.testing.assert_array_equal(again.array(), first.array())


def test_default_root_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("VFE_CACHE", str(tmp_path / "here"))
    assert default_cache_root() == tmp_path / "here" and FeatureCache().root == tmp_path / "here"


def test_key_follows_backbone_images_transform_and_shard_size(backbone, digits):
    base = cache_key(backbone.fingerprint(), digits)
    flipped = ImageSet(digits.images[:, :, ::-1].copy(), digits.labels, digits.class_names)
    relabelled = ImageSet(digits.images, (digits.labels + 1) % 10, digits.class_names)
    renamed = ImageSet(digits.images, digits.labels, digits.class_names, source="another name")
    others = [cache_key("another-backbone", digits), cache_key(backbone.fingerprint(), flipped),
              cache_key(backbone.fingerprint(), relabelled), cache_key(backbone.fingerprint(), digits, "blur:s3"),
              cache_key(backbone.fingerprint(), digits, shard_size=8),
              cache_key(backbone.fingerprint(), digits.subset(np.arange(20), tag="first-20"))]
    assert len({base, *others}) == 1 + len(others)
    assert cache_key(backbone.fingerprint(), renamed) == base  # content-addressed: the name is for people


def test_a_transform_runs_shard_by_shard_and_is_part_of_the_key(tmp_path, backbone, digits):
    calls = []

    def invert(images: np.ndarray, first_row: int) -> np.ndarray:
        calls.append((first_row, len(images)))
        return 255 - images

    cache = FeatureCache(tmp_path)
    fs = cache.extract(backbone, digits, transform=invert, transform_key="invert", shard_size=16, progress=False)
    assert calls == [(0, 16), (16, 16), (32, 8)]
    np.testing.assert_allclose(fs.array(), backbone.extract(255 - digits.images, progress=False),
                               rtol=1e-4, atol=1e-4)
    plain = cache.extract(backbone, digits, shard_size=16, progress=False)
    assert plain.key != fs.key
    with pytest.raises(ValueError, match="transform_key"):
        cache.extract(backbone, digits, transform=invert)


def test_workers_share_an_extraction_through_shard_ids(tmp_path, counting, digits):
    cache = FeatureCache(tmp_path)
    assert cache.extract(counting, digits, shard_size=16, shard_ids=[1], progress=False) is None
    (entry,) = cache.entries()
    assert entry["incomplete"] and counting.images == 16
    fs = cache.extract(counting, digits, shard_size=16, shard_ids=[0, 2], progress=False)
    assert fs is not None and len(fs) == 40 and counting.images == 40
    with pytest.raises(ValueError, match=r"shard_ids must lie in \[0, 3\)"):
        cache.extract(counting, digits_set(41), shard_size=16, shard_ids=[3], progress=False)


def test_a_deleted_shard_is_recomputed_alone(tmp_path, counting, digits):
    cache = FeatureCache(tmp_path)
    fs = cache.extract(counting, digits, shard_size=16, progress=False)
    want = fs.array()
    (fs.path / fs.manifest["shards"][1]).unlink()
    again = cache.extract(counting, digits, shard_size=16, progress=False)
    assert counting.images == 40 + 16
    np.testing.assert_allclose(again.array(), want, rtol=1e-4, atol=1e-4)


_WORKER = """
import sys, time
import torch
sys.path.insert(0, {tests!r})
from conftest import digits_set
from vfe.backbones import create_backbone
from vfe.features import FeatureCache

torch.set_num_threads(1)

def stall_after_first_shard(images, first_row):
    if first_row > 0:
        time.sleep(600)  # the test kills us here
    return images

backbone = create_backbone("efficientnet_lite0", image_size=32, device="cpu", jit=False, precision="fp32")
FeatureCache({root!r}).extract(backbone, digits_set(), transform=stall_after_first_shard, transform_key="identity",
                               shard_size=16, progress=False)
"""


@pytest.mark.slow
def test_an_extraction_killed_with_sigkill_resumes_without_redoing_finished_shards(tmp_path, counting, backbone,
                                                                                   digits):
    root = tmp_path / "cache"
    script = tmp_path / "worker.py"
    script.write_text(_WORKER.format(tests=str(Path(__file__).parent), root=str(root)))
    worker = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while not list(root.glob("*/shard-00000-*.npy")):
            assert worker.poll() is None, worker.stdout.read().decode()
            assert time.monotonic() < deadline, "the worker never wrote its first shard"
            time.sleep(0.1)
    finally:
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait()
    (entry,) = root.iterdir()
    (first_shard,) = entry.glob("shard-00000-*.npy")
    landed = first_shard.stat().st_mtime_ns
    assert not (entry / "manifest.json").exists() and not list(entry.glob("shard-00001-*"))

    fs = FeatureCache(root).extract(counting, digits, transform=lambda images, row: images,
                                    transform_key="identity", shard_size=16, progress=False)
    assert counting.images == 40 - 16  # only the two unfinished shards
    assert first_shard.stat().st_mtime_ns == landed
    np.testing.assert_allclose(fs.array(), backbone.extract(digits, progress=False), rtol=1e-4, atol=1e-4)


class _CountedImages:
    """Images decoded on slicing (like LazyImages), recording how many decoded images are alive at once."""

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(self, images: np.ndarray):
        self.source, self.alive, self.max_alive = images, 0, 0

    @property
    def shape(self):
        return self.source.shape

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, rows: slice) -> np.ndarray:
        batch = self.source[rows].copy()  # a fresh array, as a decoder returns
        self.alive += len(batch)
        self.max_alive = max(self.max_alive, self.alive)
        weakref.finalize(batch, self._release, len(batch))
        return batch

    def _release(self, n: int) -> None:
        self.alive -= n


def test_a_lazy_source_is_never_held_more_than_one_shard_at_a_time(tmp_path, backbone, digits):
    lazy = _CountedImages(np.repeat(digits.images, 3, axis=0))
    data = ImageSet(lazy, np.repeat(digits.labels, 3), digits.class_names, source="lazy digits")
    fs = FeatureCache(tmp_path).extract(backbone, data, shard_size=16, progress=False)
    assert len(fs) == 120 and lazy.max_alive == 16 and lazy.alive == 0
    np.testing.assert_allclose(fs.array()[::3], backbone.extract(digits, progress=False), rtol=1e-4, atol=1e-4)


def test_entries_list_and_remove_by_key_prefix(tmp_path, backbone, digits):
    cache = FeatureCache(tmp_path)
    assert cache.entries() == []
    kept = cache.extract(backbone, digits, shard_size=16, progress=False)
    gone = cache.extract(backbone, digits, transform=lambda x, row: x[:, ::-1], transform_key="flip",
                         progress=False)
    listed = {e["key"]: e for e in cache.entries()}
    assert set(listed) == {kept.key, gone.key}
    assert listed[kept.key]["n"] == 40 and listed[kept.key]["dim"] == 1280
    assert listed[kept.key]["bytes"] >= 40 * 1280 * 4 and listed[gone.key]["transform"] == "flip"
    assert cache.remove(gone.key[:6]) == [gone.key]
    assert [e["key"] for e in cache.entries()] == [kept.key] and not gone.path.exists()
    with pytest.raises(ValueError, match="key prefix"):
        cache.remove()
    assert cache.remove(everything=True) == [kept.key] and cache.entries() == []


def test_an_empty_set_is_refused(tmp_path, backbone, digits):
    empty = digits.subset(np.arange(0), tag="none")
    with pytest.raises(ValueError, match="no images"):
        FeatureCache(tmp_path).extract(backbone, empty)


def test_cache_commands_name_a_mistyped_key_and_the_all_flag(tmp_path, capsys):
    """`verify MISTYPED` used to print nothing and exit 0; `rm` without a key named the Python argument."""
    root = tmp_path / "cache"
    fs = FeatureCache(root).extract(TinyBackbone(), tiny_set(), shard_size=16, progress=False)
    assert main(["cache", "verify", "MISTYPED", "--cache-dir", str(root)]) == 2
    assert capsys.readouterr().err == (f"vfe cache: error: no cache entry 'MISTYPED' in {root}; list them with "
                                       "vfe cache ls\n")
    assert main(["cache", "verify", fs.key[:6], "--cache-dir", str(root)]) == 0
    assert capsys.readouterr().out.startswith(f"{fs.key}          OK  3 shards verified")
    assert main(["cache", "rm", "--cache-dir", str(root)]) == 2
    err = capsys.readouterr().err
    assert "--all" in err and "everything" not in err and err.count("\n") == 1
    assert fs.path.exists()
    assert main(["cache", "rm", "--all", "--cache-dir", str(root)]) == 0 and not fs.path.exists()
    assert main(["cache", "verify", "--cache-dir", str(root)]) == 0
    assert capsys.readouterr().out.endswith(f"(empty) {root}\n")
