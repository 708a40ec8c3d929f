"""CIFAR python-version files (src/vfe/data/cifar.py), written in the official Python 2 pickle format, or
rewritten by Python 3 (pickle protocols 2 to 4, str keys)."""
from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
from colour_data import python2_pickle

from vfe.data import load_dataset, locate
from vfe.data.cifar import CifarFormatError, UnsafePickleError, unpickle_batch
from vfe.errors import DataError


@pytest.fixture
def cifar10_archive(tmp_path, photo_crops, formats):
    images, labels = photo_crops
    return formats.write_tar_gz(tmp_path / "cifar-10-python.tar.gz", "cifar-10-batches-py",
                                formats.cifar10_files(images, labels))


def test_archive_is_read_in_place_with_planes_and_batches_in_order(cifar10_archive, photo_crops, formats):
    images, labels = photo_crops
    before = formats.tree_state(cifar10_archive.parent)
    train = load_dataset(cifar10_archive)
    test = load_dataset(cifar10_archive, split="test")
    np.testing.assert_array_equal(train.images, images[:20])  # 5 batches of 4, concatenated in order
    np.testing.assert_array_equal(train.labels, labels[:20])
    np.testing.assert_array_equal(test.images, images[20:])
    assert train.class_names == formats.cifar10_names
    assert train.source == f"cifar:{cifar10_archive}:train"
    assert formats.tree_state(cifar10_archive.parent) == before  # nothing extracted next to the archive


def test_extracted_folder_and_its_parent_read_the_same(tmp_path, photo_crops, formats):
    images, labels = photo_crops
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name, data in formats.cifar10_files(images, labels).items():
        (folder / name).write_bytes(data)
    for path in (folder, tmp_path):
        np.testing.assert_array_equal(load_dataset(path, split="test").images, images[20:])


def test_cifar100_uses_fine_labels_and_fine_label_names(tmp_path, photo_crops, formats):
    images, labels = photo_crops
    fine = (labels * 7 + np.arange(len(labels))) % 100
    names = [f"class{i:02d}" for i in range(100)]
    files = {"train": formats.cifar_batch(images[:16], fine[:16], b"fine_labels"),
             "test": formats.cifar_batch(images[16:], fine[16:], b"fine_labels"),
             "meta": formats.python2_pickle({b"fine_label_names": [n.encode() for n in names],
                                             b"coarse_label_names": [b"c"] * 20})}
    archive = formats.write_tar_gz(tmp_path / "cifar-100-python.tar.gz", "cifar-100-python", files)
    test = load_dataset(archive, split="test")
    np.testing.assert_array_equal(test.labels, fine[16:])
    np.testing.assert_array_equal(test.images, images[16:])
    assert test.class_names == names


def python3_files(images: np.ndarray, labels: np.ndarray, names: list[str], protocol: int) -> dict[str, bytes]:
    """cifar-10-batches-py's files as Python 3's pickle.dumps writes them: str keys, NumPy arrays, and (at
    protocol 2, which has no bytes opcode) bytes as calls of codecs.encode(text, 'latin1') or bytes()."""
    def batch(rows, label):
        data = images[rows].transpose(0, 3, 1, 2).reshape(len(rows), 3072)
        return pickle.dumps({"batch_label": label, "labels": [int(v) for v in labels[rows]], "data": data,
                             "filenames": [f"{i}.png" for i in rows]}, protocol=protocol)

    n_train = len(images) * 5 // 6
    files = {f"data_batch_{i + 1}": batch(rows, b"") for i, rows in enumerate(np.array_split(np.arange(n_train), 5))}
    files["test_batch"] = batch(np.arange(n_train, len(images)), b"testing batch 1 of 1")
    files["batches.meta"] = pickle.dumps({"num_cases_per_batch": 10000, "label_names": names}, protocol=protocol)
    return files


@pytest.mark.parametrize("protocol", [2, 3, 4])
def test_an_archive_written_by_python_3_reads_like_the_official_one(tmp_path, photo_crops, formats, protocol):
    """These used to be refused (protocol 4: 'refused a pickle using protocol 4'; protocol 2: the global
    _codecs.encode), under the same rule: only arrays, containers, numbers, text and bytes get through."""
    images, labels = photo_crops
    files = python3_files(images, labels, formats.cifar10_names, protocol)
    if protocol == 2:
        assert b"c_codecs\nencode\n" in files["test_batch"] and b"c__builtin__\nbytes\n" in files["data_batch_1"]
    archive = formats.write_tar_gz(tmp_path / "cifar-10-python.tar.gz", "cifar-10-batches-py", files)
    train, test = load_dataset(archive), load_dataset(archive, split="test")
    np.testing.assert_array_equal(train.images, images[:20])
    np.testing.assert_array_equal(train.labels, labels[:20])
    np.testing.assert_array_equal(test.images, images[20:])
    np.testing.assert_array_equal(test.labels, labels[20:])
    assert train.class_names == test.class_names == formats.cifar10_names


@pytest.mark.parametrize("protocol", [2, 4])
def test_a_python_3_pickle_that_would_run_code_is_refused_before_running(tmp_path, protocol):
    marker = tmp_path / "pwned"
    evil = pickle.dumps({"data": _RunsShellCommand(marker), "labels": [0]}, protocol=protocol)
    with pytest.raises(UnsafePickleError, match=r"test_batch: refused to load the global (posix|nt)\.system"):
        unpickle_batch(evil, "test_batch")
    assert not marker.exists()


def test_named_cifar10_is_found_in_data_dir(cifar10_archive, photo_crops):
    data = load_dataset("cifar-10", split="test", data_dir=cifar10_archive.parent)
    assert data.source == "cifar10:test"
    np.testing.assert_array_equal(data.labels, photo_crops[1][20:])


def test_named_cifar10_missing_says_how_to_provide_it(monkeypatch):
    monkeypatch.setattr(locate, "SYSTEM_DATA_DIRS", ())
    with pytest.raises(FileNotFoundError, match="cifar-10-python.tar.gz into .*cache/vfe/cifar10"):
        load_dataset("cifar10")


class _RunsShellCommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_that_would_run_code_is_refused_before_running(tmp_path, photo_crops, formats):
    marker = tmp_path / "pwned"
    evil = formats.python2_pickle({b"data": _RunsShellCommand(marker), b"labels": [0]})
    refused = r"data_batch_1: refused to load the global (posix|nt)\.system"
    with pytest.raises(UnsafePickleError, match=refused):
        unpickle_batch(evil, "cifar-10-batches-py/data_batch_1")
    files = formats.cifar10_files(*photo_crops)
    files["data_batch_3"] = evil
    archive = formats.write_tar_gz(tmp_path / "cifar-10-python.tar.gz", "cifar-10-batches-py", files)
    with pytest.raises(UnsafePickleError, match="data_batch_3"):
        load_dataset(archive)
    assert not marker.exists()


def test_a_hostile_batch_or_meta_file_is_a_data_error_naming_the_file(tmp_path, photo_crops, formats):
    """The CLI prints a DataError as one line; a refused pickle used to escape as an UnpicklingError."""
    marker = tmp_path / "pwned"
    evil = formats.python2_pickle({b"data": _RunsShellCommand(marker), b"labels": [0]})
    for name in ("test_batch", "batches.meta"):
        files = formats.cifar10_files(*photo_crops)
        files[name] = evil
        folder = tmp_path / name / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        for file, data in files.items():
            (folder / file).write_bytes(data)
        with pytest.raises(DataError, match=f"{folder}:{name}: refused to load the global"):
            load_dataset(folder, split="test")
    assert not marker.exists()


def test_a_fortran_order_array_is_refused_not_read_transposed(tmp_path, photo_crops, formats):
    """One flipped bit (NEWFALSE -> NEWTRUE in the array's pickled state) marks the pixels as Fortran order;
    NumPy would then lay them out transposed, a silently different data set."""
    images, labels = photo_crops
    blob = formats.cifar_batch(images[:3], labels[:3], b"labels")
    flag = blob.index(pickle.NEWFALSE + pickle.BINSTRING)  # is_fortran, right before the pixel bytes
    files = formats.cifar10_files(images, labels)
    files["test_batch"] = blob[:flag] + pickle.NEWTRUE + blob[flag + 1:]
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    fortran = r"test_batch: a pickled uint8 array \(3, 3072\) is marked as Fortran"
    with pytest.raises(CifarFormatError, match=fortran):
        load_dataset(folder, split="test")


@pytest.mark.parametrize("payload, refused", [
    (pickle.dumps({"x": pickle.Unpickler}, protocol=2), r"global pickle\.Unpickler"),  # any other class
    (pickle.dumps(np.zeros(3, np.uint8), protocol=5), "refused a pickle using protocol 5"),  # not official
    (python2_pickle(np.array([1, "a"], object)), "array of dtype 'O8'.*object array"),  # object data
    (b"\x80\x02K\x01\x96" + bytes(8), r"protocol 5 \(BYTEARRAY8\)"),  # a damaged byte turned opcode
    (b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00xX\x04\x00\x00\x00zlib\x86R.",  # codecs.encode(.., 'zlib')
     r"refused codecs.encode of a str to 'zlib'"),
    (b"\x80\x02c__builtin__\nbytes\nK\x05\x85R.", r"refused bytes\(\) with arguments"),  # bytes(5)
])
def test_only_plain_numpy_arrays_get_through(payload, refused):
    with pytest.raises(UnsafePickleError, match=refused):
        unpickle_batch(payload, "batch")


def test_malformed_batches_are_named(tmp_path, photo_crops, formats):
    images, labels = photo_crops
    with pytest.raises(CifarFormatError, match="b1: not a CIFAR batch"):
        unpickle_batch(b"\x80\x02}q\x00(", "b1")  # cut off
    with pytest.raises(CifarFormatError, match="b2: not a CIFAR batch .a list"):
        unpickle_batch(formats.python2_pickle([1, 2]), "b2")
    files = formats.cifar10_files(images, labels)
    files["test_batch"] = formats.python2_pickle({b"data": images[20:].reshape(4, -1)[:, :100],
                                                  b"labels": [0] * 4})
    files["data_batch_2"] = formats.cifar_batch(images[4:8], np.array([0, 1, 2, 10]), b"labels")
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    wrong_shape = r"test_batch: b'data' must be a uint8 N x 3072 array, got uint8 \(4, 100\)"
    with pytest.raises(CifarFormatError, match=wrong_shape):
        load_dataset(folder, split="test")
    with pytest.raises(CifarFormatError, match="data_batch_2: labels span 0..10, outside the 10 classes"):
        load_dataset(folder)
    (folder / "data_batch_4").unlink()
    with pytest.raises(CifarFormatError, match="missing data_batch_4"):
        load_dataset(folder)


def test_an_archive_without_a_batch_or_cut_short_is_named(tmp_path, photo_crops, formats):
    files = formats.cifar10_files(*photo_crops)
    del files["data_batch_5"]
    archive = formats.write_tar_gz(tmp_path / "cifar-10-python.tar.gz", "cifar-10-batches-py", files)
    with pytest.raises(CifarFormatError, match="lacks cifar-10-batches-py/data_batch_5"):
        load_dataset(archive)
    archive.write_bytes(archive.read_bytes()[:-200])
    with pytest.raises(CifarFormatError, match=f"{archive}: unreadable archive"):
        load_dataset(archive)
