"""Feature cache: backbone features computed once, stored in shards on disk, memory-mapped on read.

An entry's key is a hash of everything that produced it: the backbone's fingerprint (model,
weights, preprocessing, precision), the images' content hash, the transform applied to the
images first (e.g. a corruption and its severity) and the shard size (transforms are seeded per
shard). Each shard is written atomically, so a run killed in the middle leaves only complete
shards (and at most one orphaned temporary file per writer, removed with the entry); the next run
computes just the missing ones. Shards also let several workers share one extraction (`shard_ids`).

Images stream through shard by shard: a source whose `images` decode on slicing (LazyImages, a
NumPy memmap) never has more than one shard of images in memory, and the backbone's prefetcher
keeps running across shard boundaries.

Integrity. Each data file carries in its name the xxh3-64 checksum of its place (the entry's key and
its own name, e.g. `shard-00001`) followed by its bytes, and the manifest lists those names under a
checksum of its own fields, so every piece verifies on its own, and only where it belongs: a shard
copied from another entry, or renamed to another index, fails like a damaged one. Every read
verifies (xxh3 reads at memory speed: well under 1 % of extraction time, see
benchmarks/bench_cache_integrity.py). `extract` removes a shard that fails and recomputes just that
one; a damaged manifest is rebuilt from the shards that verify, with nothing recomputed.
`FeatureSet.array()` has no backbone or images to recompute with, so it raises CacheError naming
the shard rather than return features that are not the ones computed.

Concurrency. A writer holds a lock file per shard it computes (`.shard-00001.lock`, an flock that
the OS releases if the process dies). A second extraction of the same entry computes the shards no
one holds and waits for the others, then reuses them: each shard is computed once, and `shard_ids`
workers still run side by side.

Layout:  <root>/<key>/manifest.json, labels-<xxh3>.npy, shard-00000-<xxh3>.npy, shard-00001-<xxh3>.npy, ...
         (a file's <xxh3> is that of "<key>/<its name with {} for the checksum>\n" and then its bytes)
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xxhash
from filelock import FileLock, Timeout
from tqdm.auto import tqdm

from vfe.data.types import ImageSet
from vfe.errors import CacheError
from vfe.io import atomic_write_bytes, write_json

CACHE_VERSION = 4  # 3: checksummed files; 4: checksums bound to the entry and the file's place
DEFAULT_SHARD_SIZE = 4096
_CONTENT_HASH = "_content_hash"  # memo in ImageSet.meta (ImageSet.subset drops it; LazyImages sets it)
_SHARD = re.compile(r"shard-\d{5}-(?P<sum>[0-9a-f]{16})\.npy")
_LABELS = re.compile(r"labels-(?P<sum>[0-9a-f]{16})\.npy")
_MISMATCH = "checksum mismatch (truncated, corrupted, or copied from another entry or shard)"
_SEAL = "manifest_xxh3"
_REPAIR = "run `vfe cache verify --repair` (the next extraction recomputes what it removes)"
log = logging.getLogger(__name__)

# transform(images_uint8_nhwc, first_row_index) -> images_uint8_nhwc, applied shard by shard
ImageTransform = Callable[[np.ndarray, int], np.ndarray]


def default_cache_root() -> Path:
    """`$VFE_CACHE`, else ~/.cache/vfe/features."""
    return Path(os.environ.get("VFE_CACHE", Path.home() / ".cache" / "vfe" / "features"))


def content_hash(data: ImageSet, chunk: int = DEFAULT_SHARD_SIZE) -> str:
    """SHA-256 of the images and labels, memoised in `data.meta` (about 0.1 s for 60k 28x28 images).

    Reads `chunk` images at a time (the value does not change the hash), so hashing a memory-mapped
    or lazily decoded set stays within one chunk of memory. The memo assumes the images are not
    modified in place afterwards.
    """
    cached = data.meta.get(_CONTENT_HASH)
    if cached is None:
        h = hashlib.sha256(f"images:{tuple(data.images.shape)}".encode())
        for lo in range(0, len(data), chunk):
            h.update(np.ascontiguousarray(data.images[lo:lo + chunk], dtype=np.uint8).data)
        h.update(np.ascontiguousarray(data.labels, dtype=np.int64).data)
        cached = data.meta[_CONTENT_HASH] = h.hexdigest()
    return cached


def cache_key(backbone_fingerprint: str, data: ImageSet, transform_key: str | None = None,
              shard_size: int = DEFAULT_SHARD_SIZE) -> str:
    """The entry name: a hash of the backbone, the images, the transform and the shard size."""
    spec = {"version": CACHE_VERSION, "backbone": backbone_fingerprint, "data": content_hash(data, shard_size),
            "transform": transform_key, "shard_size": shard_size}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:24]


@dataclass
class FeatureSet:
    """A complete cache entry: features (memory-mapped shards) and the labels they belong to."""

    path: Path
    manifest: dict

    def __len__(self) -> int:
        return int(self.manifest["n"])

    @property
    def key(self) -> str:
        return self.manifest["key"]

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    def shard_arrays(self) -> list[np.ndarray]:
        """The shards as read-only memory maps, each verified first (read once against its checksum)."""
        return [_load_verified(self.path / name) for name in self.manifest["shards"]]

    def array(self) -> np.ndarray:
        """All features as one float32 N x dim array in memory (heads train on whole tensors).

        Raises CacheError naming a shard that fails verification: without the backbone and images there
        is nothing to recompute it from, and using it would silently change results.
        """
        return np.concatenate(self.shard_arrays())

    @property
    def labels(self) -> np.ndarray:
        return np.array(_load_verified(self.path / self.manifest["labels"]))


@dataclass
class EntryRows:
    """A cache entry's rows as the input of a further extraction (cut-point activations -> features).

    Keyed by the source entry's key, not by hashing its content: that key already names everything that
    produced the rows. Quacks like an ImageSet for `FeatureCache.extract` (images, labels, source, meta).
    """

    images: np.ndarray
    labels: np.ndarray
    source: str
    meta: dict

    def __len__(self) -> int:
        return len(self.labels)


def entry_rows(features: FeatureSet) -> EntryRows:
    return EntryRows(features.array(), features.labels, f"cache entry {features.key}",
                     {_CONTENT_HASH: f"entry:{features.key}"})


class FeatureCache:
    """Computes, stores, finds and verifies feature sets under `root` (default: `default_cache_root()`)."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else default_cache_root()

    def extract(self, backbone: Any, data: ImageSet, transform: ImageTransform | None = None,
                transform_key: str | None = None, shard_size: int = DEFAULT_SHARD_SIZE,
                shard_ids: Sequence[int] | None = None, progress: bool = True,
                desc: str | None = None) -> FeatureSet | None:
        """Features of `data` (after `transform`), from the cache or computed now.

        `backbone` needs `fingerprint()`, `name` and `iter_features(images)` (vfe's Backbone has them).
        With `shard_ids`, only those shards are computed (for spreading work over workers); the
        result is None until every shard exists. A transform must be named by `transform_key`,
        which enters the cache key. Shards found damaged are removed and recomputed (one log line each);
        shards another process is computing are waited for, not computed again.
        """
        if transform is not None and not transform_key:
            raise ValueError("a transform needs a transform_key naming it (it is part of the cache key)")
        if shard_size < 1:
            raise ValueError(f"shard_size must be at least 1, got {shard_size}")
        n = len(data)
        if n == 0:
            raise ValueError(f"{data.source}: no images to extract features from")
        key = cache_key(backbone.fingerprint(), data, transform_key, shard_size)
        entry = self.root / key
        count = -(-n // shard_size)
        wanted = range(count) if shard_ids is None else sorted(set(shard_ids))
        if any(not 0 <= i < count for i in wanted):
            raise ValueError(f"shard_ids must lie in [0, {count}) for {n} images in shards of {shard_size}")
        entry.mkdir(parents=True, exist_ok=True)
        good = {i: name for i in wanted if (name := _good_shard(entry, i))}
        computed = 0

        def rows(i: int) -> slice:
            return slice(i * shard_size, min(n, (i + 1) * shard_size))

        def compute(todo: list[int]) -> None:
            nonlocal computed

            def images() -> Iterator[np.ndarray]:
                for i in todo:  # no local names: the previous shard is released before the next is read
                    yield data.images[rows(i)] if transform is None else transform(data.images[rows(i)], i * shard_size)

            size = sum(rows(i).stop - rows(i).start for i in todo)
            with tqdm(total=size, unit="img", desc=desc or f"extract {data.source}", disable=not progress,
                      dynamic_ncols=True) as bar:
                good.update(_write_shards(backbone.iter_features(images()), entry, [(i, rows(i)) for i in todo], bar))
            computed += size

        started = time.perf_counter()
        todo = [i for i in wanted if i not in good]
        with ExitStack() as held:  # claim what no one else is computing, compute it in one stream
            mine = [i for i in todo if _claim(held, entry, i) and not _found(good, entry, i)]
            if mine:
                compute(mine)
        for i in todo:  # the rest: wait for its writer, then reuse its shard (or compute it if the writer died)
            if i not in good:
                with _waiting_for(entry, i):
                    if not _found(good, entry, i):
                        compute([i])
        if not all(_found(good, entry, i) for i in range(count)):
            return None
        labels = _write_verified(entry, "labels-{}.npy", _npy_bytes(np.asarray(data.labels, dtype=np.int64)))
        names = [good[i] for i in range(count)]
        old, problem = _read_manifest(entry)
        if old is not None and old["shards"] == names and old["labels"] == labels:
            return FeatureSet(entry, old)
        if problem:
            log.warning("vfe: %s was damaged (%s); rebuilt it from the shards that verify", entry / "manifest.json",
                        problem)
        manifest = {"version": CACHE_VERSION, "key": key, "n": n,
                    "dim": int(np.load(entry / names[0], mmap_mode="r").shape[1]), "shard_size": shard_size,
                    "checksum": "xxh3_64(key/name + bytes)", "shards": names, "labels": labels,
                    "backbone": backbone.fingerprint(),
                    "backbone_name": getattr(backbone, "name", "?"), "data_source": data.source,
                    "data_hash": content_hash(data), "transform": transform_key,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                    "extract_seconds_this_run": round(time.perf_counter() - started, 3), "images_this_run": computed}
        write_json(entry / "manifest.json", {**manifest, _SEAL: _digest(_canonical(manifest))})  # last: complete
        return FeatureSet(entry, manifest)

    def entries(self) -> list[dict]:
        """Every entry with its size on disk and a `status`: "ok", "incomplete" (interrupted, or workers
        still at it) or "damaged" (its manifest, with the `problem`). Reads manifests only: `verify` checks
        the data."""
        out = []
        for entry in self._entry_dirs():
            manifest, problem = _read_manifest(entry)
            if manifest is not None:
                info = {**manifest, "status": "ok"}
            elif problem is None:
                info = {"key": entry.name, "status": "incomplete", "incomplete": True}
            else:
                info = {"key": entry.name, "status": "damaged", "problem": f"manifest.json: {problem}"}
            out.append({**info, "bytes": _bytes(entry), "path": str(entry)})
        return out

    def remove(self, key_prefix: str | None = None, everything: bool = False) -> list[str]:
        """Delete entries whose key starts with `key_prefix` (or all with everything=True); their keys."""
        if not key_prefix and not everything:
            raise ValueError("give a key prefix, or everything=True to clear the whole cache")
        removed = []
        for entry in self._entry_dirs():
            if everything or entry.name.startswith(key_prefix):
                shutil.rmtree(entry)
                removed.append(entry.name)
        return removed

    def verify(self, key_prefix: str | None = None, repair: bool = False) -> list[dict]:
        """Check every file of each entry (those whose key starts with `key_prefix`) against its checksum.

        One record per entry: key, path, status ("ok", "damaged" or "incomplete"), bad_shards (names of the
        files that fail), message (one line to print) and repaired. repair=True removes what fails and, then,
        the manifest: the verified shards stay, so the next extraction recomputes only what was removed. An
        entry with nothing verified left is removed whole.
        """
        out = []
        for entry in self._entry_dirs():
            if key_prefix and not entry.name.startswith(key_prefix):
                continue
            manifest, problem = _read_manifest(entry)
            files = sorted(p for p in entry.iterdir() if p.suffix == ".npy" and not p.name.startswith("."))
            bad = {p.name: why for p in files if (why := _check(p))}
            if manifest is not None:
                bad.update({name: "missing" for name in [*manifest["shards"], manifest["labels"]]
                            if not (entry / name).exists()})
            kept = sum(1 for p in files if _SHARD.fullmatch(p.name) and p.name not in bad)
            status = "damaged" if bad or problem else "ok" if manifest is not None else "incomplete"
            problems = [f"manifest.json: {problem}"] if problem else []
            message = "; ".join(problems + [f"{name}: {why}" for name, why in bad.items()])
            if status == "ok":
                message = f"{kept} shard{'s' * (kept != 1)} verified"
            elif status == "incomplete":
                message = f"no manifest: {kept} verified shard{'s' * (kept != 1)} of an interrupted or partial " \
                          "extraction, which the next extraction completes"
            elif repair:
                for name in [*bad, "manifest.json"]:
                    (entry / name).unlink(missing_ok=True)
                if kept:
                    message += f" - repaired: removed {len(bad)} file(s) and the manifest, kept {kept} verified shards"
                else:
                    shutil.rmtree(entry)
                    message += " - repaired: removed the entry (nothing in it verified)"
            out.append({"key": entry.name, "path": str(entry), "status": status, "bad_shards": sorted(bad),
                        "message": message, "repaired": repair and status == "damaged"})
        return out

    def _entry_dirs(self) -> list[Path]:
        # "_"-prefixed folders hold other artefacts (fine-tuned weights under _models), not entries
        return sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("_")) \
            if self.root.exists() else []


def _write_shards(features: Iterator[np.ndarray], entry: Path, shards: list[tuple[int, slice]],
                  bar: tqdm) -> dict[int, str]:
    """Cut a stream of feature batches into the given shards, writing each as soon as it is complete."""
    pending: list[np.ndarray] = []
    n_pending = returned = 0
    remaining = list(shards)
    written = {}
    for batch in features:
        pending.append(batch)
        n_pending += len(batch)
        returned += len(batch)
        bar.update(len(batch))
        while remaining and n_pending >= remaining[0][1].stop - remaining[0][1].start:
            i, rows = remaining.pop(0)
            block = np.concatenate(pending)
            size = rows.stop - rows.start
            written[i] = _write_verified(entry, f"shard-{i:05d}-{{}}.npy",
                                         _npy_bytes(block[:size].astype(np.float32, copy=False)))
            pending, n_pending = [block[size:]], len(block) - size
    if remaining or n_pending:
        given = sum(r.stop - r.start for _, r in shards)
        raise RuntimeError(f"{entry}: the backbone returned {returned} feature rows for {given} images")
    return written


def _write_verified(entry: Path, pattern: str, data: bytes) -> str:
    """Write `data` atomically under a name carrying its checksum (unless that file is there and verifies).
    `pattern` is the name with {} for the checksum, e.g. "shard-00001-{}.npy"."""
    h = _place_hasher(entry, pattern)
    h.update(data)
    name = pattern.format(h.hexdigest())
    if _check(entry / name) is not None:
        atomic_write_bytes(entry / name, data)
    return name


def _found(good: dict[int, str], entry: Path, i: int) -> bool:
    """Whether shard i is in `good`, or now on disk and verified (then added to `good`)."""
    if i not in good and (name := _good_shard(entry, i)):
        good[i] = name
    return i in good


def _good_shard(entry: Path, i: int) -> str | None:
    """The name of a verified file of shard i, removing any that fail (one log line each)."""
    for path in sorted(entry.glob(f"shard-{i:05d}-*.npy")):
        problem = _check(path)
        if problem is None:
            return path.name
        log.warning("vfe: %s failed verification (%s); removed it, that shard is recomputed", path, problem)
        path.unlink(missing_ok=True)
    return None


def _claim(held: ExitStack, entry: Path, i: int) -> bool:
    """Take shard i's lock if no one holds it (kept until `held` closes)."""
    lock = FileLock(entry / f".shard-{i:05d}.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return False
    held.callback(lock.release)
    return True


@contextmanager
def _waiting_for(entry: Path, i: int) -> Iterator[None]:
    """Hold shard i's lock, first waiting (with one log line) while another process computes the shard."""
    lock = FileLock(entry / f".shard-{i:05d}.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.warning("vfe: another process is extracting shard %d of %s; waiting for it", i, entry)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _load_verified(path: Path) -> np.ndarray:
    """A read-only memory map of a .npy file, after checking its bytes against the checksum in its name."""
    problem = _check(path)
    if problem:
        raise CacheError(f"{path}: {problem}; {_REPAIR}")
    return np.load(path, mmap_mode="r")


def _check(path: Path) -> str | None:
    """Why the file at `path` cannot be trusted, or None when its place and bytes match the checksum in its
    name."""
    match = _SHARD.fullmatch(path.name) or _LABELS.fullmatch(path.name)
    if match is None:
        return "no checksum in its name (written by an older vfe)"
    pattern = path.name[:match.start("sum")] + "{}" + path.name[match.end("sum"):]
    try:
        actual = _file_digest(path, _place_hasher(path.parent, pattern))
    except FileNotFoundError:
        return "missing"
    return None if actual == match["sum"] else _MISMATCH


def _place_hasher(entry: Path, pattern: str) -> xxhash.xxh3_64:
    """xxh3-64 fed first with the file's place (entry key and name pattern), so its checksum holds only there."""
    return xxhash.xxh3_64(f"{entry.name}/{pattern}\n".encode())


def _digest(data: bytes) -> str:
    return xxhash.xxh3_64_hexdigest(data)


def _file_digest(path: Path, h: xxhash.xxh3_64, chunk: int = 1 << 22) -> str:
    buffer = bytearray(chunk)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while size := f.readinto(buffer):
            h.update(view[:size])
    return h.hexdigest()


def _canonical(manifest: dict) -> bytes:
    return json.dumps(manifest, sort_keys=True).encode()


def _read_manifest(entry: Path) -> tuple[dict | None, str | None]:
    """(manifest, None) when it is there and verifies; (None, None) when absent; (None, problem) when damaged."""
    try:
        manifest = json.loads((entry / "manifest.json").read_bytes())
    except FileNotFoundError:
        return None, None
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None, "not valid JSON (truncated or corrupted)"
    if not isinstance(manifest, dict) or manifest.get("version") != CACHE_VERSION:
        version = manifest.get("version") if isinstance(manifest, dict) else None
        return None, f"cache version {version!r}, this vfe reads version {CACHE_VERSION}"
    seal = manifest.pop(_SEAL, None)
    if seal != _digest(_canonical(manifest)):
        return None, "checksum mismatch (edited or corrupted)"
    if manifest["key"] != entry.name:
        return None, f"it belongs to entry {manifest['key']}"
    return manifest, None


def _bytes(entry: Path) -> int:
    total = 0
    for f in entry.iterdir():
        try:
            total += f.stat().st_size if f.is_file() else 0
        except FileNotFoundError:  # a temporary file renamed meanwhile
            pass
    return total


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()
