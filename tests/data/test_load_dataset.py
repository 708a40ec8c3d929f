"""load_dataset's dispatch (src/vfe/data/__init__.py), the digits set, and where named sets are found."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from vfe.data import load_dataset, locate


def rows(data) -> list[bytes]:
    """Each image with its label as one byte string: compares sets of examples regardless of order."""
    return sorted(img.tobytes() + bytes([lab]) for img, lab in zip(data.images, data.labels))


def test_digits_is_a_stratified_80_20_split_of_all_1797_images():
    train, test = load_dataset("digits"), load_dataset("digits", split="test")
    assert (len(train), len(test)) == (1437, 360)
    assert train.images.shape[1:] == (8, 8, 1) and train.images.dtype == np.uint8
    assert train.images.max() == 255 and train.images.min() == 0
    everything = load_digits()
    full = [np.rint(img * 255 / 16).astype(np.uint8)[..., None] for img in everything.images]
    expected = sorted(i.tobytes() + bytes([t]) for i, t in zip(full, everything.target))
    assert sorted(rows(train) + rows(test)) == expected
    per_class = np.bincount(everything.target)
    assert np.all(np.abs(np.bincount(test.labels) - 0.2 * per_class) <= 1)  # stratified
    np.testing.assert_array_equal(load_dataset("digits", split="test").images, test.images)  # deterministic
    assert test.source == "digits:test" and test.class_names == [str(d) for d in range(10)]


def test_a_validation_split_of_a_named_set_partitions_its_split():
    train = load_dataset("DIGITS")  # names ignore case, '-' and '_'
    fit = load_dataset("digits", validation_split=0.2, subset="training", seed=1)
    val = load_dataset("digits", validation_split=0.2, subset="validation", seed=1)
    assert (len(fit), len(val)) == (1150, 287)
    assert sorted(rows(fit) + rows(val)) == rows(train)
    assert val.source == "digits:train[validation:validation_split=0.2:seed=1]"


def test_unknown_names_and_wrong_arguments_are_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a built-in name .fashion-mnist, mnist, digits, cifar10"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match="digits has the splits 'train' and 'test'"):
        load_dataset("digits", split="validation")
    with pytest.raises(ValueError, match="image_size and lazy apply to image folders only"):
        load_dataset("digits", image_size=32)
    photo = tmp_path / "cat.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(photo)
    with pytest.raises(ValueError, match=f"{photo}: not a data set vfe reads; give a CIFAR"):
        load_dataset(photo)


def test_built_in_names_win_over_folders_and_dot_slash_reaches_the_folder(tmp_path, monkeypatch):
    (tmp_path / "digits" / "seven").mkdir(parents=True)
    Image.fromarray(np.full((8, 8, 3), 7, np.uint8)).save(tmp_path / "digits" / "seven" / "a.png")
    monkeypatch.chdir(tmp_path)
    assert len(load_dataset("digits")) == 1437
    folder = load_dataset("./digits")
    assert folder.class_names == ["seven"] and len(folder) == 1


def test_named_sets_are_looked_for_in_order(tmp_path, digits_uint8, formats, monkeypatch):
    """data_dir (its <name> sub-folder, then itself), $VFE_DATA, ~/.cache/vfe/<name>, then system folders."""
    images, labels = digits_uint8
    places = {"data_dir": tmp_path / "mine" / "mnist", "data_dir itself": tmp_path / "flat",
              "VFE_DATA": tmp_path / "shared" / "mnist", "cache": locate.download_dir("mnist"),
              "system": tmp_path / "usr-share" / "mnist"}
    for i, folder in enumerate(places.values()):  # a different 10 digits in each place
        folder.mkdir(parents=True)
        for prefix in ("train", "t10k"):
            formats.write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images[10 * i:10 * i + 10])
            formats.write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels[10 * i:10 * i + 10])
    monkeypatch.setattr(locate, "SYSTEM_DATA_DIRS", (tmp_path / "usr-share",))
    monkeypatch.setenv("VFE_DATA", str(tmp_path / "shared"))

    def found(**kwargs) -> int:
        first = load_dataset("mnist", split="test", **kwargs).images[0, ..., 0]
        return next(i for i in range(len(places)) if np.array_equal(first, images[10 * i]))

    assert found(data_dir=tmp_path / "mine") == 0
    assert found(data_dir=tmp_path / "flat") == 1
    assert found() == 2
    monkeypatch.delenv("VFE_DATA")
    assert found() == 3
    for f in places["cache"].iterdir():
        f.unlink()
    assert found() == 4
