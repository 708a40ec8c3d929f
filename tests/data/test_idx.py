"""IDX reading (src/vfe/data/idx.py): MNIST-format files written from scikit-learn's digits."""
from __future__ import annotations

import struct

import numpy as np
import pytest

from vfe.data import load_dataset
from vfe.data.idx import IdxFormatError, find_split_files, load_idx_folder, read_idx


def test_gzipped_and_raw_files_read_back_exactly(tmp_path, digits_uint8, formats):
    images, labels = digits_uint8
    for name in ("a-images-idx3-ubyte.gz", "a-images-idx3-ubyte"):
        formats.write_idx(tmp_path / name, images[:50])
        got = read_idx(tmp_path / name, 3)
        np.testing.assert_array_equal(got, images[:50])
        assert got.flags.writeable  # consumers may convert in place (torch.from_numpy warns otherwise)
    formats.write_idx(tmp_path / "l-labels-idx1-ubyte.gz", labels[:50])
    np.testing.assert_array_equal(read_idx(tmp_path / "l-labels-idx1-ubyte.gz", 1), labels[:50])


def test_wrong_magic_number_names_the_file_and_both_numbers(tmp_path, digits_uint8, formats):
    path = formats.write_idx(tmp_path / "train-labels-idx1-ubyte.gz", digits_uint8[1][:10])
    with pytest.raises(IdxFormatError) as err:
        read_idx(path, 3)  # a labels file where images are expected
    assert str(path) in str(err.value)
    assert "0x00000801" in str(err.value) and "expected 0x00000803" in str(err.value)


def test_a_file_that_is_not_idx_at_all_is_refused(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(b"<html>404 Not Found</html>" * 4)
    with pytest.raises(IdxFormatError, match="magic number 0x3c68746d"):
        read_idx(path, 3)


def test_data_shorter_or_longer_than_the_header_says_is_refused(tmp_path, digits_uint8, formats):
    images = digits_uint8[0][:20]
    raw = formats.write_idx(tmp_path / "x-images-idx3-ubyte", images).read_bytes()
    (tmp_path / "cut-images-idx3-ubyte").write_bytes(raw[:-10])
    (tmp_path / "long-images-idx3-ubyte").write_bytes(raw + b"\0")
    with pytest.raises(IdxFormatError, match=r"20 x 8 x 8 = 1280 bytes of data, the file holds 1270"):
        read_idx(tmp_path / "cut-images-idx3-ubyte", 3)
    with pytest.raises(IdxFormatError, match="the file holds 1281"):
        read_idx(tmp_path / "long-images-idx3-ubyte", 3)
    (tmp_path / "hdr-images-idx3-ubyte").write_bytes(raw[:7])
    with pytest.raises(IdxFormatError, match="too short for an IDX images header"):
        read_idx(tmp_path / "hdr-images-idx3-ubyte", 3)


def test_a_corrupt_header_claiming_huge_dimensions_is_an_error_not_an_allocation(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(bytes([0, 0, 8, 3]) + struct.pack(">3I", 2**31, 2**16, 2**16) + bytes(100))
    with pytest.raises(IdxFormatError, match="2147483648 x 65536 x 65536 = .* the file holds 100"):
        read_idx(path, 3)


def test_a_damaged_gzip_file_is_reported_with_its_name(tmp_path, digits_uint8, formats):
    path = formats.write_idx(tmp_path / "train-images-idx3-ubyte.gz", digits_uint8[0][:200])
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(IdxFormatError, match=f"{path}: unreadable"):
        read_idx(path, 3)
    path.write_bytes(b"\x1f\x8b" + b"garbage" * 10)
    with pytest.raises(IdxFormatError, match=f"{path}: unreadable"):
        read_idx(path, 3)


def test_image_and_label_counts_must_agree(idx_folder, digits_uint8, formats):
    formats.write_idx(idx_folder / "train-labels-idx1-ubyte.gz", digits_uint8[1][:299])
    with pytest.raises(IdxFormatError, match="300 images but .*train-labels-idx1-ubyte.gz holds 299 labels"):
        load_idx_folder(idx_folder, "train")


def test_an_idx_folder_path_loads_both_splits(idx_folder, digits_uint8, formats):
    images, labels = digits_uint8
    before = formats.tree_state(idx_folder)
    train = load_dataset(idx_folder)
    test = load_dataset(str(idx_folder), split="test")
    np.testing.assert_array_equal(train.images[..., 0], images[:300])
    np.testing.assert_array_equal(test.labels, labels[300:400])
    assert train.images.shape == (300, 8, 8, 1)
    assert train.class_names == [str(d) for d in range(10)]
    assert train.source == f"idx:{idx_folder.resolve()}:train"
    assert formats.tree_state(idx_folder) == before  # read only


def test_uncompressed_copy_is_preferred_and_dotted_names_are_accepted(tmp_path, digits_uint8, formats):
    images, labels = digits_uint8
    formats.write_idx(tmp_path / "train-images.idx3-ubyte", images[:30])  # Kaggle's spelling
    formats.write_idx(tmp_path / "train-images.idx3-ubyte.gz", images[30:60])
    formats.write_idx(tmp_path / "train-labels.idx1-ubyte", labels[:30])
    found = find_split_files(tmp_path, "train")
    assert [p.name for p in found] == ["train-images.idx3-ubyte", "train-labels.idx1-ubyte"]
    np.testing.assert_array_equal(load_idx_folder(tmp_path).images[..., 0], images[:30])


def test_missing_split_and_ambiguous_sets_are_explained(idx_folder, digits_uint8, formats):
    for f in idx_folder.glob("t10k-*"):
        f.unlink()
    with pytest.raises(FileNotFoundError, match="no IDX test files"):
        load_dataset(idx_folder, split="test")
    formats.write_idx(idx_folder / "emnist-train-images-idx3-ubyte.gz", digits_uint8[0][:5])
    formats.write_idx(idx_folder / "emnist-train-labels-idx1-ubyte.gz", digits_uint8[1][:5])
    with pytest.raises(ValueError, match="several IDX train sets"):
        load_dataset(idx_folder)


def test_gzip_member_is_decompressed_not_trusted_by_extension(tmp_path, digits_uint8, formats):
    """A .gz name with plain content is an error naming the file, not garbage pixels."""
    raw = formats.write_idx(tmp_path / "plain", digits_uint8[0][:5]).read_bytes()
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(raw)
    with pytest.raises(IdxFormatError, match="train-images-idx3-ubyte.gz: unreadable"):
        read_idx(tmp_path / "train-images-idx3-ubyte.gz", 3)
