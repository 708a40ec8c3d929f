"""Image folders (src/vfe/data/folder.py, images.py), built from scikit-image photos in tmp_path."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from PIL import Image

from vfe.backbones.engine import iter_uint8_batches
from vfe.data import IMAGE_SUFFIXES, LazyImages, load_dataset, load_train_test
from vfe.data import folder as folder_module
from vfe.data import images as images_module
from vfe.data.images import UnreadableImageError
from vfe.data.split import validation_split_index
from vfe.errors import DataError
from vfe.features.cache import FeatureCache, content_hash


@pytest.fixture(scope="session")
def photos():
    """Four scikit-image photos as 48 x 64 RGB uint8 (non-square, so height/width mix-ups show)."""
    import skimage.data
    from skimage.transform import resize

    def small(name: str) -> np.ndarray:
        photo = resize(getattr(skimage.data, name)(), (48, 64), anti_aliasing=True)
        return np.rint(photo * 255).astype(np.uint8)

    return {name: small(name) for name in ("chelsea", "coffee", "astronaut", "rocket")}


def variants(photo: np.ndarray, n: int) -> list[np.ndarray]:
    return [np.roll(photo, 5 * i, axis=1) for i in range(n)]


@pytest.fixture
def flowers(tmp_path, photos):
    """flower_photos-like: root/<class>/*.png, 7 + 5 + 6 images, and a LICENSE.txt beside the classes."""
    root = tmp_path / "flower_photos"
    expected = []
    for label, (name, count) in enumerate((("cat", 7), ("coffee", 5), ("rocket", 6))):
        (root / name).mkdir(parents=True)
        photo = photos["chelsea" if name == "cat" else name]
        for i, image in enumerate(variants(photo, count)):
            Image.fromarray(image).save(root / name / f"{i:03d}.png")
            expected.append((image, label))
    (root / "LICENSE.txt").write_text("CC-BY")
    return root, np.stack([e[0] for e in expected]), np.array([e[1] for e in expected])


def test_classes_are_sorted_folders_and_pixels_exact(flowers, formats):
    root, images, labels = flowers
    before = formats.tree_state(root)
    data = load_dataset(root)
    assert data.class_names == ["cat", "coffee", "rocket"]
    np.testing.assert_array_equal(data.labels, labels)
    np.testing.assert_array_equal(data.images, images)
    assert data.source == f"folder:{root}"
    assert data.meta["image_size"] == [48, 64] and data.meta["image_size_rule"] == "shared by every image"
    assert formats.tree_state(root) == before  # read only: no file or folder added, changed or touched


def test_every_format_and_colour_mode_becomes_rgb(tmp_path, photos):
    rgb = photos["coffee"]
    root = tmp_path / "mixed"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    gray = np.asarray(Image.fromarray(rgb).convert("L"))
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 90, np.uint8)])
    palette = Image.fromarray(rgb).quantize(32)
    Image.fromarray(rgb).save(root / "a" / "0.bmp")
    Image.fromarray(gray).save(root / "a" / "1_gray.png")
    Image.fromarray(rgba).save(root / "a" / "2_rgba.png")
    palette.save(root / "a" / "3_palette.png")
    Image.fromarray(rgb).save(root / "a" / "4.webp", lossless=True)
    Image.fromarray(rgb).save(root / "a" / "5.JPG", quality=95)
    Image.fromarray(rgb).save(root / "a" / "6.gif")
    Image.fromarray(rgb).save(root / "b" / "0.png")
    (root / "a" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "a" / "._0.bmp").write_bytes(b"\0\5\26\7")  # macOS AppleDouble junk: hidden, ignored
    (root / "a" / "notes.txt").write_text("not an image")

    data = load_dataset(root)
    assert len(data) == 8 and data.images.shape == (8, 48, 64, 3)
    got = dict(zip(["bmp", "gray", "rgba", "palette", "webp", "jpg", "gif"], data.images[:7]))
    np.testing.assert_array_equal(got["bmp"], rgb)
    np.testing.assert_array_equal(got["gray"], np.dstack([gray] * 3))
    np.testing.assert_array_equal(got["rgba"], rgb)  # alpha dropped, colours kept
    np.testing.assert_array_equal(got["palette"], np.asarray(palette.convert("RGB")))
    np.testing.assert_array_equal(got["webp"], rgb)
    assert np.abs(got["jpg"].astype(int) - rgb).mean() < 4  # lossy, but the same picture
    assert np.abs(got["gif"].astype(int) - rgb).mean() < 12  # 256-colour palette
    np.testing.assert_array_equal(data.labels, [0] * 7 + [1])


def test_image_size_rules_resize_without_mixing_height_and_width(tmp_path, photos):
    from skimage.transform import resize

    root = tmp_path / "sizes"
    (root / "x").mkdir(parents=True)
    Image.fromarray(photos["astronaut"]).save(root / "x" / "small.png")
    big = np.rint(resize(photos["astronaut"], (480, 640), anti_aliasing=True) * 255).astype(np.uint8)
    Image.fromarray(big).save(root / "x" / "big.jpg", quality=98)  # decoded at a reduced DCT scale first

    default = load_dataset(root)
    assert default.images.shape == (2, 256, 256, 3)
    assert default.meta["image_size_rule"] == "default (the images differ in size)"
    assert load_dataset(root, image_size=32).images.shape == (2, 32, 32, 3)
    data = load_dataset(root, image_size=(24, 40))
    assert data.images.shape == (2, 24, 40, 3) and data.meta["image_size_rule"] == "given"
    reference = np.rint(resize(photos["astronaut"], (24, 40), anti_aliasing=True) * 255)
    for image in data.images:  # both, whichever path they took, are the photo at 24 x 40
        assert np.abs(image - reference).mean() < 6


def test_validation_split_holds_out_the_files_keras_would(flowers):
    root, images, labels = flowers
    n, fraction, seed = len(labels), 0.25, 3
    files = list(range(n))  # Keras: sorted order, RandomState(seed).shuffle, the last int(f * n) validate
    np.random.RandomState(seed).shuffle(files)
    n_val = int(fraction * n)
    keras_train, keras_val = sorted(files[:-n_val]), sorted(files[-n_val:])

    train = load_dataset(root, validation_split=fraction, subset="training", seed=seed)
    val = load_dataset(root, validation_split=fraction, subset="validation", seed=seed)
    np.testing.assert_array_equal(train.images, images[keras_train])
    np.testing.assert_array_equal(val.images, images[keras_val])
    np.testing.assert_array_equal(val.labels, labels[keras_val])
    assert val.source == f"folder:{root}[validation:validation_split=0.25:seed=3]"
    other = load_dataset(root, validation_split=fraction, subset="validation", seed=seed + 1)
    assert not np.array_equal(other.images, val.images)


def test_split_folders_share_one_class_list(tmp_path, photos):
    root = tmp_path / "splits"
    for split, classes in (("train", ("cat", "rocket")), ("test", ("rocket",))):
        for name in classes:
            (root / split / name).mkdir(parents=True)
            photo = photos["chelsea" if name == "cat" else "rocket"]
            Image.fromarray(photo).save(root / split / name / "0.png")
    train = load_dataset(root, split="train")
    with pytest.warns(RuntimeWarning, match=r"splits \(test split\): 1 of 2 classes have no image in this "
                                            r"set: 'cat' \(no images in this split\)"):
        test = load_dataset(root, split="test")
    assert train.class_names == test.class_names == ["cat", "rocket"]
    assert test.labels.tolist() == [1]  # 'rocket' keeps its index although the test split has no 'cat'
    assert test.source == f"folder:{root}:test"
    with pytest.raises(FileNotFoundError, match="split folders test, train; none is 'val'"):
        load_dataset(root, split="val")


def test_folder_layout_errors_name_the_folder(tmp_path, flowers):
    root = flowers[0]
    with pytest.raises(ValueError, match="no 'test' split; hold images out with validation_split"):
        load_dataset(root, split="test")
    empty = tmp_path / "no_classes"
    empty.mkdir()
    (empty / "a.png").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=f"{empty}: no class sub-folders"):
        load_dataset(empty)
    (root / "tulips").mkdir()
    (root / "tulips" / "readme.txt").write_text("coming soon")
    with pytest.raises(FileNotFoundError, match=f"{root / 'tulips'}: class folder holds no images"):
        load_dataset(root)


def test_validation_arguments_are_checked(flowers):
    root = flowers[0]
    with pytest.raises(ValueError, match="validation_split and subset go together"):
        load_dataset(root, validation_split=0.2)
    with pytest.raises(ValueError, match="between 0 and 1"):
        load_dataset(root, validation_split=1.5, subset="training")
    with pytest.raises(ValueError, match="'training' or 'validation'"):
        load_dataset(root, validation_split=0.2, subset="train")
    with pytest.raises(ValueError, match="leaves the validation subset empty"):
        load_dataset(root, validation_split=0.01, subset="training")


def break_two_files(root):
    """One .png that is text, one JPEG cut in half (its header still reads: only decoding fails)."""
    not_image = root / "cat" / "002.png"
    not_image.write_text("<html>this is not a PNG</html>")
    truncated = root / "rocket" / "003.jpg"
    (root / "rocket" / "003.png").unlink()
    Image.open(root / "rocket" / "004.png").save(truncated, quality=90)
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    return not_image, truncated


def test_every_unreadable_image_is_named_in_one_error_with_the_cli_flag(flowers):
    """Header failures (the text file) and decode failures (the cut JPEG) are reported together."""
    root = flowers[0]
    not_image, truncated = break_two_files(root)
    with pytest.raises(UnreadableImageError) as err:
        load_dataset(root)
    message = str(err.value)
    assert isinstance(err.value, DataError) and message.startswith(f"{root}: 2 unreadable image files: ")
    assert f"{not_image}: not a readable image" in message and f"{truncated}: cannot decode image" in message
    assert "--skip-bad" in message and "skip_bad=True" not in message.replace("(Python: skip_bad=True)", "")
    not_image.unlink()
    with pytest.raises(UnreadableImageError, match=f"1 unreadable image file: {truncated}: cannot decode"):
        load_dataset(root)


def test_skip_bad_leaves_unreadable_files_out_with_a_warning_and_a_record(flowers):
    root, _, labels = flowers
    break_two_files(root)
    with pytest.warns(RuntimeWarning, match=r"skipped 2 unreadable image file\(s\) \(--skip-bad\): "
                                            r"cat/002.png, rocket/003.jpg; all are listed"):
        data = load_dataset(root, skip_bad=True)
    assert len(data) == len(labels) - 2
    assert data.meta["n_skipped"] == 2
    assert [s["file"] for s in data.meta["skipped"]] == ["cat/002.png", "rocket/003.jpg"]
    assert data.meta["skipped"][0]["error"].startswith("not a readable image")
    assert data.meta["skipped"][1]["error"].startswith("cannot decode image")
    np.testing.assert_array_equal(np.bincount(data.labels), [6, 5, 5])


def test_many_skipped_files_are_counted_and_the_first_few_named(flowers):
    root, _, labels = flowers
    broken = sorted((root / "cat").glob("*.png"))[:6] + sorted((root / "coffee").glob("*.png"))[:2]
    for path in broken:
        path.write_bytes(b"GIF89a but not really")
    with pytest.warns(RuntimeWarning) as caught:
        data = load_dataset(root, skip_bad=True)
    message = next(str(w.message) for w in caught if "unreadable" in str(w.message))
    assert "skipped 8 unreadable image file(s)" in message and message.count(".png") == 5
    assert "and 3 more" in message
    assert [s["file"] for s in data.meta["skipped"]] == [str(p.relative_to(root)) for p in broken]
    assert len(data) == len(labels) - 8


def test_lazy_images_decode_on_access_and_equal_the_eager_ones(flowers, formats, monkeypatch):
    root, images, labels = flowers
    before = formats.tree_state(root)
    lazy = load_dataset(root, lazy=True)
    assert isinstance(lazy.images, LazyImages) and lazy.images.shape == images.shape
    np.testing.assert_array_equal(np.asarray(lazy.images), images)
    np.testing.assert_array_equal(lazy.images[4], images[4])
    np.testing.assert_array_equal(lazy.images[-1], images[-1])
    np.testing.assert_array_equal(lazy.images[3:9], images[3:9])
    np.testing.assert_array_equal(lazy.images[labels == 1], images[labels == 1])
    part = lazy.subset(np.array([1, 8, 17]), tag="three")
    assert isinstance(part.images, LazyImages)
    np.testing.assert_array_equal(part.images[:], images[[1, 8, 17]])
    assert formats.tree_state(root) == before

    monkeypatch.setattr(folder_module, "LAZY_ABOVE_BYTES", images[0].nbytes * 3)  # the size rule, scaled down
    assert isinstance(load_dataset(root).images, LazyImages)


def test_lazy_content_hash_is_stable_cheap_and_content_sensitive(flowers, monkeypatch):
    root = flowers[0]
    first, second = load_dataset(root, lazy=True), load_dataset(root, lazy=True)

    def no_decoding(*args, **kwargs):
        raise AssertionError("the content hash of a lazy set must not decode images")

    monkeypatch.setattr(images_module, "read_image", no_decoding)
    assert content_hash(first) == content_hash(second)
    part = first.subset(np.arange(5), tag="first5")
    assert content_hash(part) not in (content_hash(first), "")
    assert content_hash(part) == content_hash(second.subset(np.arange(5), tag="other tag, same rows"))
    monkeypatch.undo()
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(root / "cat" / "000.png")
    assert content_hash(load_dataset(root, lazy=True)) != content_hash(first)


def test_lazy_decode_errors_name_the_file(flowers):
    root = flowers[0]
    _, truncated = break_two_files(root)
    with pytest.warns(RuntimeWarning, match="skipped 1 unreadable"):
        lazy = load_dataset(root, lazy=True, skip_bad=True)  # the header check catches the text file
    assert [s["file"] for s in lazy.meta["skipped"]] == ["cat/002.png"]
    with pytest.raises(UnreadableImageError, match=f"1 unreadable image file: {truncated}: cannot decode"):
        np.asarray(lazy.images)


class MeanColour:
    """A stand-in backbone: the mean colour of each image (what matters here is which pixels arrive)."""

    name = "mean-colour"

    def fingerprint(self) -> str:
        return "mean-colour-v1"

    def iter_features(self, images):
        batches, _ = iter_uint8_batches(images, batch_size=3)  # the real backbones' batching
        for batch in batches:
            yield np.asarray(batch, np.float32).reshape(len(batch), -1, 3).mean(axis=1)


def test_the_feature_cache_and_batching_read_a_lazy_folder_like_an_eager_one(flowers, tmp_path):
    root, images, _ = flowers
    lazy_set = load_dataset(root, lazy=True)
    batches, n = iter_uint8_batches(lazy_set, batch_size=4)
    assert n == len(images)
    np.testing.assert_array_equal(np.concatenate(list(batches)), images)
    cache = FeatureCache(tmp_path / "features")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lazy = cache.extract(MeanColour(), lazy_set, shard_size=4, progress=False)
        eager = cache.extract(MeanColour(), load_dataset(root), shard_size=4, progress=False)
    np.testing.assert_allclose(lazy.array(), eager.array(), rtol=1e-6)
    np.testing.assert_array_equal(lazy.labels, eager.labels)


def _link_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if "symbolic link" in str(w.message)]


def test_a_link_back_to_the_root_is_skipped_not_made_a_class_of_duplicates(flowers):
    root, images, labels = flowers
    (root / "everything").symlink_to(root, target_is_directory=True)  # at the class level, to the root
    (root / "cat" / "again").symlink_to(root / "cat", target_is_directory=True)  # inside a class, to it
    (root / "rocket" / "alias").symlink_to(root / "coffee", target_is_directory=True)  # another class: kept
    with pytest.warns(RuntimeWarning) as caught:
        data = load_dataset(root)
    assert data.class_names == ["cat", "coffee", "rocket"]
    assert len(data) == len(labels) + 5  # rocket also holds coffee's 5 images, through the link in the root
    np.testing.assert_array_equal(data.images[:len(labels)], images)
    [message] = _link_warnings(caught)
    assert "skipped 2 symbolic link(s)" in message
    assert f"everything (loops back to {root})" in message and "cat/again (loops back to" in message
    assert sorted(s["link"] for s in data.meta["skipped_links"]) == ["cat/again", "everything"]


def test_links_out_of_the_root_are_skipped(flowers, tmp_path, photos):
    root, images, _ = flowers
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "dogs").mkdir(parents=True)
    Image.fromarray(photos["astronaut"]).save(elsewhere / "dogs" / "0.png")
    Image.fromarray(photos["astronaut"]).save(elsewhere / "stray.png")
    (root / "dogs").symlink_to(elsewhere / "dogs", target_is_directory=True)  # a class folder outside
    (root / "cat" / "zz.png").symlink_to(elsewhere / "stray.png")  # one image file outside
    (root / "cat" / "broken.png").symlink_to(tmp_path / "no-such-file.png")
    with pytest.warns(RuntimeWarning) as caught:
        data = load_dataset(root)
    assert data.class_names == ["cat", "coffee", "rocket"]
    np.testing.assert_array_equal(data.images, images)
    [message] = _link_warnings(caught)
    assert "skipped 3 symbolic link(s)" in message
    assert f"dogs (points outside the folder, to {elsewhere / 'dogs'})" in message
    assert "cat/zz.png (points outside" in message and "cat/broken.png (broken or circular link)" in message


def test_a_class_too_small_for_the_test_split_is_warned_about(tmp_path, photos):
    """A folder without split folders is split as Keras does (not stratified): a class with one image lands in
    one part only, so the other part silently lacks it unless told."""
    root = tmp_path / "small"
    for name, count in (("cat", 9), ("coffee", 9), ("rocket", 1)):
        (root / name).mkdir(parents=True)
        photo = photos["chelsea" if name == "cat" else name]
        for i, image in enumerate(variants(photo, count)):
            Image.fromarray(image).save(root / name / f"{i}.png")
    # the seed decides which part the rocket (the last of 19 files) goes to; pick one for each case in which
    # the 3 test images hold every other class
    labels = np.array([0] * 9 + [1] * 9 + [2])
    test_classes = {s: set(labels[validation_split_index(19, 0.2, "validation", s)]) for s in range(100)}
    in_test = [s for s, classes in test_classes.items() if classes == {0, 1, 2}]
    in_train = [s for s, classes in test_classes.items() if classes == {0, 1}]
    with pytest.warns(RuntimeWarning, match=r"1 of 3 classes have no image in the validation subset "
                                            r"\(validation_split=0.2, seed=\d+\): 'rocket' \(1 image in all, "
                                            r"none drawn into this subset\).*not stratified"):
        train, test = load_train_test(root, test_fraction=0.2, seed=in_train[0])
    assert 2 in train.labels and 2 not in test.labels
    with pytest.warns(RuntimeWarning, match="no image in the training subset"):
        train, test = load_train_test(root, test_fraction=0.2, seed=in_test[0])
    assert 2 in test.labels and 2 not in train.labels


def test_a_broken_image_in_a_test_split_folder_is_reported_not_replaced_by_a_holdout(tmp_path, photos):
    root = tmp_path / "splits"
    for split in ("train", "test"):
        for name in ("cat", "rocket"):
            (root / split / name).mkdir(parents=True)
            photo = photos["chelsea" if name == "cat" else "rocket"]
            Image.fromarray(photo).save(root / split / name / "0.png")
    (root / "test" / "cat" / "1.png").write_text("not a PNG")
    with pytest.raises(UnreadableImageError, match=r"test/cat/1.png: not a readable image"):
        load_train_test(root)


def test_tiff_images_are_read_by_every_command(tmp_path, photos):
    root = tmp_path / "tiffs"
    for name in ("cat", "rocket"):
        (root / name).mkdir(parents=True)
    Image.fromarray(photos["chelsea"]).save(root / "cat" / "0.tif")
    Image.fromarray(photos["rocket"]).save(root / "rocket" / "0.TIFF")
    assert {".tif", ".tiff"} <= set(IMAGE_SUFFIXES)
    data = load_dataset(root)
    np.testing.assert_array_equal(data.images, np.stack([photos["chelsea"], photos["rocket"]]))
