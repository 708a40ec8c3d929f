"""Downloads (src/vfe/data/download.py) against a real HTTP server on 127.0.0.1."""
from __future__ import annotations

import hashlib
import socket
import time

import numpy as np
import pytest

from vfe.data import load_dataset, locate
from vfe.data.download import ChecksumError, DownloadError, Remote, download_file
from vfe.data.idx import FASHION_MNIST, SPLIT_FILES, IdxDataset, load_idx_dataset


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_file_whose_checksum_matches_is_stored_atomically(http_server, tmp_path):
    root, url = http_server
    payload = np.random.default_rng(0).bytes(300_000)
    (root / "blob.bin").write_bytes(payload)
    dest = tmp_path / "cache" / "blob.bin"
    assert download_file(url + "blob.bin", dest, sha256(payload), progress=False) == dest
    assert dest.read_bytes() == payload
    assert [p.name for p in dest.parent.iterdir()] == ["blob.bin"]  # no temporary file left


def test_a_checksum_mismatch_deletes_the_download_and_says_so(http_server, tmp_path):
    root, url = http_server
    (root / "blob.bin").write_bytes(b"not what was published")
    dest = tmp_path / "cache" / "blob.bin"
    with pytest.raises(ChecksumError, match="differs from the published 0{64}; the download was discarded"):
        download_file(url + "blob.bin", dest, "0" * 64, progress=False)
    assert list(dest.parent.iterdir()) == []


def test_http_errors_name_the_url(http_server, tmp_path):
    _, url = http_server
    with pytest.raises(DownloadError, match=f"{url}missing.bin: download failed .*404"):
        download_file(url + "missing.bin", tmp_path / "m.bin", "0" * 64, progress=False)
    assert not list(tmp_path.glob("*.part")) and not (tmp_path / "m.bin").exists()


def test_a_stalled_server_times_out_instead_of_hanging(tmp_path):
    with socket.socket() as listener:  # accepts connections (kernel backlog) but never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        started = time.perf_counter()
        with pytest.raises(DownloadError, match="timed out"):
            download_file(f"http://127.0.0.1:{port}/x", tmp_path / "x", "0" * 64, timeout=0.5, progress=False)
        assert time.perf_counter() - started < 5


@pytest.fixture
def tiny_idx(http_server, digits_uint8, formats, monkeypatch):
    """A published IDX data set in miniature: files on the local server, their sums in an IdxDataset."""
    root, url = http_server
    images, labels = digits_uint8
    (root / "tiny").mkdir()
    sums = {}
    for (image_file, label_file), rows in zip(SPLIT_FILES.values(), (slice(0, 120), slice(120, 160))):
        for file, array in ((image_file, images[rows]), (label_file, labels[rows])):
            sums[file] = sha256(formats.write_idx(root / "tiny" / file, array).read_bytes())
    monkeypatch.setenv("VFE_DATA_MIRROR", url)  # files are then fetched from <mirror>/tiny/<file>
    remote = Remote(("http://unreachable.invalid/",), sums)
    return IdxDataset("tiny", tuple("0123456789"), remote), root / "tiny"


def test_missing_named_files_are_downloaded_into_the_cache_then_found_offline(tiny_idx, digits_uint8):
    dataset, served = tiny_idx
    train = load_idx_dataset(dataset, "train", download=True)
    np.testing.assert_array_equal(train.images[..., 0], digits_uint8[0][:120])
    cache = locate.download_dir("tiny")
    assert sorted(p.name for p in cache.iterdir()) == sorted(SPLIT_FILES["train"])  # only the split's files
    for f in served.iterdir():
        f.unlink()  # the server has nothing now: a second load must come from the cache
    np.testing.assert_array_equal(load_idx_dataset(dataset, "train", download=True).labels, train.labels)


def test_a_tampered_mirror_file_is_refused_and_not_cached(tiny_idx):
    dataset, served = tiny_idx
    (served / "train-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b tampered")
    with pytest.raises(ChecksumError, match="train-labels-idx1-ubyte.gz: SHA-256"):
        load_idx_dataset(dataset, "train", download=True)
    assert not (locate.download_dir("tiny") / "train-labels-idx1-ubyte.gz").exists()


def test_without_download_the_error_says_how_to_provide_the_files(monkeypatch, tmp_path):
    monkeypatch.setattr(locate, "SYSTEM_DATA_DIRS", (tmp_path / "no-system-data",))
    with pytest.raises(FileNotFoundError) as err:
        load_dataset("fashion-mnist", data_dir=tmp_path / "empty")
    message = str(err.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert str(locate.download_dir("fashion-mnist")) in message and "download=True" in message
    assert str(tmp_path / "empty") in message  # where it looked
    assert not locate.download_dir("fashion-mnist").exists()  # nothing created on a failed lookup


def test_an_unreachable_network_keeps_the_instructions(monkeypatch, tmp_path):
    monkeypatch.setattr(locate, "SYSTEM_DATA_DIRS", ())
    with socket.socket() as s:  # a port with nobody listening: connection refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("VFE_DATA_MIRROR", f"http://127.0.0.1:{port}")
    with pytest.raises(DownloadError) as err:
        load_idx_dataset(FASHION_MNIST, "test", download=True)
    assert f"127.0.0.1:{port}/fashion-mnist/t10k-images-idx3-ubyte.gz" in str(err.value)
    assert "apt-get install dataset-fashion-mnist" in str(err.value)
