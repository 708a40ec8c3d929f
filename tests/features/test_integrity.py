"""Cache integrity: damaged files are named or recomputed, never used; concurrent and killed writers are safe."""
from __future__ import annotations

import json
import logging
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from fakes import TinyBackbone, tiny_set
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vfe.errors import CacheError
from vfe.features import FeatureCache, FeatureSet

TESTS = str(Path(__file__).parent)
MISMATCH = "checksum mismatch (truncated, corrupted, or copied from another entry or shard)"
FAST = settings(max_examples=50, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def extract(root: Path, backbone: TinyBackbone | None = None) -> FeatureSet:
    return FeatureCache(root).extract(backbone or TinyBackbone(), tiny_set(), shard_size=16, progress=False)


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> FeatureSet:
    """A complete entry never touched by a test: copy it (`copy_of`) before damaging anything."""
    return extract(tmp_path_factory.mktemp("clean"))


def copy_of(clean: FeatureSet, root: Path) -> FeatureSet:
    shutil.copytree(clean.path, root / clean.path.name)
    return FeatureSet(root / clean.path.name, clean.manifest)


def shard(fs: FeatureSet, i: int) -> Path:
    return fs.path / fs.manifest["shards"][i]


def test_a_truncated_shard_is_named_on_read_and_recomputed_alone_by_extract(tmp_path, clean, caplog):
    fs = copy_of(clean, tmp_path)
    bad = shard(fs, 1)
    bad.write_bytes(bad.read_bytes()[:300])
    with pytest.raises(CacheError, match=rf"{bad.name}: checksum mismatch .*`vfe cache verify --repair`"):
        fs.array()
    counting = TinyBackbone()
    with caplog.at_level(logging.WARNING, logger="vfe.features.cache"):
        again = extract(tmp_path, counting)
    assert counting.images == 16  # that shard only
    assert caplog.messages == [(f"vfe: {bad} failed verification ({MISMATCH}); "
                                "removed it, that shard is recomputed")]
    np.testing.assert_array_equal(again.array(), clean.array())


def test_sign_bits_flipped_in_60_rows_are_never_used(tmp_path):
    data = tiny_set(200)
    cache = FeatureCache(tmp_path)
    fs = cache.extract(TinyBackbone(), data, shard_size=100, progress=False)
    want = fs.array()
    path = shard(fs, 0)
    raw = np.load(path)
    raw[:60] = -raw[:60]  # what a flipped sign bit does to a float32
    np.save(path, raw)
    with pytest.raises(CacheError, match=path.name):
        fs.array()
    counting = TinyBackbone()
    again = cache.extract(counting, data, shard_size=100, progress=False)
    assert counting.images == 100
    np.testing.assert_array_equal(again.array(), want)


def test_a_truncated_manifest_breaks_no_cache_operation(tmp_path, clean, caplog):
    fs = copy_of(clean, tmp_path)
    manifest = fs.path / "manifest.json"
    manifest.write_bytes(manifest.read_bytes()[:100])
    cache = FeatureCache(tmp_path)
    (listed,) = cache.entries()
    assert listed["key"] == fs.key and listed["status"] == "damaged"
    assert listed["problem"] == "manifest.json: not valid JSON (truncated or corrupted)"
    (checked,) = cache.verify()
    assert checked["status"] == "damaged" and checked["bad_shards"] == []

    counting = TinyBackbone()
    with caplog.at_level(logging.WARNING, logger="vfe.features.cache"):
        again = extract(tmp_path, counting)
    assert counting.images == 0  # rebuilt from the shards, which verify
    assert caplog.messages == [(f"vfe: {manifest} was damaged (not valid JSON (truncated or corrupted)); "
                                "rebuilt it from the shards that verify")]
    np.testing.assert_array_equal(again.array(), clean.array())
    assert [e["status"] for e in cache.entries()] == ["ok"]

    manifest.write_bytes(b'{"version": 3, "ke')
    assert cache.remove(fs.key[:4]) == [fs.key] and cache.entries() == []
    copy_of(clean, tmp_path)
    manifest.write_bytes(b"")
    assert cache.remove(everything=True) == [fs.key] and cache.entries() == []


def test_verify_reports_each_entry_and_repair_keeps_what_verifies(tmp_path, clean):
    fs = copy_of(clean, tmp_path)
    cache = FeatureCache(tmp_path)
    partial = cache.extract(TinyBackbone(), tiny_set(30), shard_size=16, shard_ids=[1], progress=False)
    assert partial is None
    records = {r["key"]: (r["status"], r["bad_shards"], r["message"]) for r in cache.verify()}
    (other,) = set(records) - {fs.key}
    incomplete = "no manifest: 1 verified shard of an interrupted or partial extraction, which the next extraction " \
                 "completes"
    assert records == {fs.key: ("ok", [], "3 shards verified"), other: ("incomplete", [], incomplete)}
    assert cache.verify(key_prefix=fs.key[:6])[0]["key"] == fs.key

    bad = shard(fs, 2)
    bad.write_bytes(bad.read_bytes()[:-1])
    (damaged,) = cache.verify(key_prefix=fs.key)
    assert damaged["status"] == "damaged" and damaged["bad_shards"] == [bad.name] and not damaged["repaired"]
    assert bad.exists()
    (repaired,) = cache.verify(key_prefix=fs.key, repair=True)
    assert repaired["repaired"] and repaired["message"] == (
        f"{bad.name}: {MISMATCH} - repaired: removed 1 file(s) and the manifest, "
        "kept 2 verified shards")
    assert not bad.exists() and cache.verify(key_prefix=fs.key)[0]["status"] == "incomplete"
    counting = TinyBackbone()
    np.testing.assert_array_equal(extract(tmp_path, counting).array(), clean.array())
    assert counting.images == 8  # the last shard only
    assert cache.verify(key_prefix=fs.key)[0]["status"] == "ok"


def plant(fs: FeatureSet, source: Path, index: int) -> Path:
    """Replace shard `index` of `fs` with the file `source`, keeping its checksum: a user's misplaced copy."""
    shard(fs, index).unlink()
    planted = fs.path / f"shard-{index:05d}-{source.name[-20:]}"
    shutil.copyfile(source, planted)
    return planted


def inverted(root: Path) -> FeatureSet:
    """Another entry of the same images and shard size: the images inverted first."""
    return FeatureCache(root).extract(TinyBackbone(), tiny_set(), transform=lambda x, row: 255 - x,
                                      transform_key="invert", shard_size=16, progress=False)


@pytest.mark.parametrize("where", ["another entry", "another shard"])
def test_a_shard_copied_from_another_entry_or_index_is_recomputed_not_adopted(tmp_path, clean, where):
    """Such a file verified against its own bytes, so extract used to adopt it (other features, no warning)
    and verify then said OK; its checksum now covers the entry's key and the shard's index."""
    fs = copy_of(clean, tmp_path)
    source = shard(inverted(tmp_path), 1) if where == "another entry" else shard(fs, 0)
    planted = plant(fs, source, 1)
    (record,) = FeatureCache(tmp_path).verify(fs.key)
    assert record["status"] == "damaged" and planted.name in record["bad_shards"]
    assert f"{planted.name}: {MISMATCH}" in record["message"]
    counting = TinyBackbone()
    np.testing.assert_array_equal(extract(tmp_path, counting).array(), clean.array())
    assert counting.images == 16 and not planted.exists()
    assert FeatureCache(tmp_path).verify(fs.key)[0]["status"] == "ok"


def test_repair_removes_a_shard_copied_from_another_entry(tmp_path, clean):
    fs = copy_of(clean, tmp_path)
    planted = plant(fs, shard(inverted(tmp_path), 2), 2)
    (record,) = FeatureCache(tmp_path).verify(fs.key, repair=True)
    assert record["repaired"] and planted.name in record["bad_shards"] and not planted.exists()
    counting = TinyBackbone()
    np.testing.assert_array_equal(extract(tmp_path, counting).array(), clean.array())
    assert counting.images == 8  # the last shard only


def test_repair_removes_an_entry_with_nothing_that_verifies(tmp_path):
    """An entry written before checksums (cache version 2): its shards cannot be verified."""
    entry = tmp_path / "0123456789abcdef01234567"
    entry.mkdir()
    np.save(entry / "shard-00000.npy", np.zeros((4, 8), np.float32))
    (entry / "manifest.json").write_text(json.dumps({"version": 2, "key": entry.name, "n": 4, "dim": 8}))
    cache = FeatureCache(tmp_path)
    assert cache.entries()[0]["problem"] == "manifest.json: cache version 2, this vfe reads version 4"
    (record,) = cache.verify(repair=True)
    assert record["status"] == "damaged" and record["bad_shards"] == ["shard-00000.npy"]
    assert record["message"].endswith("repaired: removed the entry (nothing in it verified)")
    assert not entry.exists() and cache.entries() == []


_EXTRACT = """
import logging, sys
import numpy as np
sys.path.insert(0, {tests!r})
from pathlib import Path
from fakes import TinyBackbone, tiny_set
from vfe.features import FeatureCache

Path({ready!r}).touch()
backbone = TinyBackbone(log=Path({log!r}), gate=Path({gate!r}))
np.save({out!r}, FeatureCache({root!r}).extract(backbone, tiny_set(), shard_size=16, progress=False).array())
"""


def _start(tmp_path: Path, name: str) -> subprocess.Popen:
    script = tmp_path / f"{name}.py"
    script.write_text(_EXTRACT.format(tests=TESTS, root=str(tmp_path / "cache"), log=str(tmp_path / "computed.log"),
                                      gate=str(tmp_path / "gate"), ready=str(tmp_path / f"{name}.ready"),
                                      out=str(tmp_path / f"{name}.npy")))
    with open(tmp_path / f"{name}.err", "w") as err:
        return subprocess.Popen([sys.executable, str(script)], stderr=err)


def _wait_until(condition, what: str, workers: list[subprocess.Popen], seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert all(w.poll() is None for w in workers), f"a worker exited before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.slow
def test_a_second_extraction_of_the_same_entry_waits_then_reuses_the_shards(tmp_path):
    log = tmp_path / "computed.log"
    first = _start(tmp_path, "first")
    workers = [first]
    try:
        _wait_until(log.exists, "the first worker's first batch", workers)  # it holds all three shards now
        workers.append(second := _start(tmp_path, "second"))
        _wait_until(lambda: "waiting for it" in (tmp_path / "second.err").read_text()
                    or f"{second.pid} " in log.read_text(), "the second to wait or compute", workers)
        (tmp_path / "gate").touch()
        assert [w.wait(timeout=120) for w in workers] == [0, 0]
    finally:
        for w in workers:
            w.kill()
    computed = [line.split() for line in log.read_text().splitlines()]
    assert {pid for pid, _ in computed} == {str(first.pid)} and sum(int(n) for _, n in computed) == 40
    np.testing.assert_array_equal(np.load(tmp_path / "second.npy"), np.load(tmp_path / "first.npy"))
    assert (tmp_path / "second.err").read_text().count("waiting for it") == 1, (tmp_path / "second.err").read_text()


_KILLED_MID_WRITE = """
import os, signal, sys
sys.path.insert(0, {tests!r})
from fakes import TinyBackbone, tiny_set
from vfe.features import FeatureCache

real_fdopen, opened = os.fdopen, 0


class HalfThenKilled:
    def __init__(self, f):
        self.f = f

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def write(self, data):
        self.f.write(data[:len(data) // 2])
        self.f.flush()
        os.kill(os.getpid(), signal.SIGKILL)


def fdopen(fd, *args, **kwargs):  # vfe.io.atomic_write_bytes writes through it
    global opened
    opened += 1
    f = real_fdopen(fd, *args, **kwargs)
    return HalfThenKilled(f) if opened == {kill_at} else f


os.fdopen = fdopen
FeatureCache({root!r}).extract(TinyBackbone(), tiny_set(), shard_size=16, progress=False)
"""


@pytest.mark.slow
def test_a_process_killed_in_the_middle_of_any_write_leaves_nothing_partial_to_read(tmp_path, clean):
    writes = ["shard 0", "shard 1", "shard 2", "labels", "manifest"]
    kill_ats = [1, 2, 5]  # the first write, one after a shard landed, the last
    workers = []
    for kill_at in kill_ats:
        script = tmp_path / f"kill{kill_at}.py"
        script.write_text(_KILLED_MID_WRITE.format(tests=TESTS, root=str(tmp_path / f"cache{kill_at}"),
                                                   kill_at=kill_at))
        workers.append(subprocess.Popen([sys.executable, str(script)], stderr=subprocess.PIPE))
    for kill_at, worker in zip(kill_ats, workers):
        _, err = worker.communicate(timeout=180)
        assert worker.returncode == -signal.SIGKILL, err.decode()
        root = tmp_path / f"cache{kill_at}"
        (entry,) = root.iterdir()
        assert len(list(entry.glob(".*.tmp"))) == 1, f"killed writing {writes[kill_at - 1]}: no half-written file"
        (record,) = FeatureCache(root).verify()
        assert record["status"] == "incomplete" and record["bad_shards"] == []
        counting = TinyBackbone()
        np.testing.assert_array_equal(extract(root, counting).array(), clean.array())
        assert counting.images == [40, 24, 8, 0, 0][kill_at - 1]


def test_every_truncation_of_the_manifest_is_reported_as_damaged(tmp_path, clean):
    fs = copy_of(clean, tmp_path)
    manifest = fs.path / "manifest.json"
    whole = manifest.read_bytes()
    cache = FeatureCache(tmp_path)
    for offset in range(len(whole)):
        manifest.write_bytes(whole[:offset])
        assert [e["status"] for e in cache.entries()] == ["damaged"], offset
        assert [r["status"] for r in cache.verify()] == ["damaged"], offset


@FAST
@given(keep=st.floats(0, 1, exclude_max=True))
def test_a_truncated_manifest_is_rebuilt_without_recomputing(clean, keep):
    with tempfile.TemporaryDirectory() as tmp:
        fs = copy_of(clean, Path(tmp))
        manifest = fs.path / "manifest.json"
        whole = manifest.read_bytes()
        manifest.write_bytes(whole[:int(keep * len(whole))])
        counting = TinyBackbone()
        np.testing.assert_array_equal(extract(Path(tmp), counting).array(), clean.array())
        assert counting.images == 0 and manifest.read_bytes() != whole[:int(keep * len(whole))]


def _flip(path: Path, flips: list[tuple[int, int]]) -> None:
    data = bytearray(path.read_bytes())
    for offset, mask in flips:
        data[offset % len(data)] ^= mask
    path.write_bytes(bytes(data))


FLIPS = st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)), min_size=1, max_size=4)


@FAST
@given(i=st.integers(0, 2), flips=FLIPS)
def test_flipped_bytes_in_a_shard_give_the_right_features_or_a_cache_error(clean, i, flips):
    with tempfile.TemporaryDirectory() as tmp:
        fs = copy_of(clean, Path(tmp))
        _flip(shard(fs, i), flips)
        try:
            np.testing.assert_array_equal(fs.array(), clean.array())
        except CacheError as err:
            assert fs.manifest["shards"][i] in str(err)
        FeatureCache(tmp).entries()
        assert FeatureCache(tmp).verify()[0]["bad_shards"] in ([], [fs.manifest["shards"][i]])
        counting = TinyBackbone()
        np.testing.assert_array_equal(extract(Path(tmp), counting).array(), clean.array())
        assert counting.images in (0, [16, 16, 8][i])


@FAST
@given(keep=st.integers(0, 10_000), i=st.integers(0, 2))
def test_a_truncated_shard_gives_a_cache_error_and_is_recomputed(clean, keep, i):
    with tempfile.TemporaryDirectory() as tmp:
        fs = copy_of(clean, Path(tmp))
        path = shard(fs, i)
        path.write_bytes(path.read_bytes()[:keep % path.stat().st_size])
        with pytest.raises(CacheError, match=path.name):
            fs.array()
        np.testing.assert_array_equal(extract(Path(tmp)).array(), clean.array())


@FAST
@given(flips=FLIPS)
def test_flipped_bytes_in_the_manifest_never_change_the_features(clean, flips):
    with tempfile.TemporaryDirectory() as tmp:
        fs = copy_of(clean, Path(tmp))
        _flip(fs.path / "manifest.json", flips)
        cache = FeatureCache(tmp)
        assert [e["status"] for e in cache.entries()] in (["ok"], ["damaged"])
        counting = TinyBackbone()
        again = extract(Path(tmp), counting)
        assert counting.images == 0 and len(again) == 40 and again.dim == 8
        np.testing.assert_array_equal(again.array(), clean.array())
        np.testing.assert_array_equal(again.labels, tiny_set().labels)
