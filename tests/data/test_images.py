"""Reading one image file (src/vfe/data/images.py: read_image): bombs, 16-bit images, the pixel limit."""
from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from vfe.data import images as images_module
from vfe.data import load_dataset, read_image
from vfe.data.images import ImageTooLargeError, UnreadableImageError, probe_image
from vfe.errors import DataError, SettingsError


def png_declaring(path, width: int, height: int):
    """A valid PNG header declaring width x height 8-bit gray pixels, followed by one tiny compressed row:
    a few hundred bytes that would decode to width x height bytes (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(bytes(width + 1))  # one row of zeros (filter byte + pixels), then nothing
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


@pytest.fixture(autouse=True)
def _pillow_limit(monkeypatch):
    """read_image may raise Pillow's own limit (a process-wide setting): restore it after each test."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)
    monkeypatch.delenv("VFE_MAX_PIXELS", raising=False)


def test_a_decompression_bomb_is_a_data_error_saying_how_to_raise_the_limit(tmp_path):
    bomb = png_declaring(tmp_path / "bomb.png", 50000, 50000)
    with pytest.raises(ImageTooLargeError) as err:
        read_image(bomb)
    assert isinstance(err.value, DataError)
    message = str(err.value)
    assert message.startswith(f"{bomb}: ") and "89,478,485" in message and "VFE_MAX_PIXELS" in message
    root = tmp_path / "folder"
    (root / "a").mkdir(parents=True)
    bomb.rename(root / "a" / "bomb.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "a" / "ok.png")
    with pytest.raises(DataError, match=r"bomb.png: .*over the limit .*VFE_MAX_PIXELS.*--skip-bad"):
        load_dataset(root)


def test_the_pixel_limit_is_a_setting_with_pillows_meaning(tmp_path, monkeypatch):
    """Width x height against MAX_PIXELS (None: no limit), overridden by $VFE_MAX_PIXELS; a limit above
    Pillow's own is honoured (Pillow would refuse above twice its MAX_IMAGE_PIXELS)."""
    path = tmp_path / "photo.png"
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(path)
    monkeypatch.setattr(images_module, "MAX_PIXELS", 1999)
    with pytest.raises(ImageTooLargeError, match="50 x 40 = 2,000 pixels, over the limit of 1,999"):
        read_image(path)
    monkeypatch.setattr(images_module, "MAX_PIXELS", 2000)
    assert read_image(path).shape == (40, 50, 3)
    monkeypatch.setenv("VFE_MAX_PIXELS", "1000")
    with pytest.raises(ImageTooLargeError, match="over the limit of 1,000"):
        probe_image(path)
    bomb = png_declaring(tmp_path / "bomb.png", 50000, 50000)
    monkeypatch.setenv("VFE_MAX_PIXELS", "none")
    assert probe_image(bomb) == (50000, 50000)  # the header only: nothing that size is decoded here
    monkeypatch.setenv("VFE_MAX_PIXELS", "lots")
    with pytest.raises(SettingsError, match="VFE_MAX_PIXELS='lots': give a whole number"):
        read_image(path)


def test_16_bit_images_are_scaled_not_clipped(tmp_path):
    gradient = np.linspace(0, 65535, 48 * 64).round().astype(np.uint16).reshape(48, 64)
    path = tmp_path / "deep.png"
    Image.fromarray(gradient).save(path)
    with Image.open(path) as im:
        assert im.mode.startswith("I")  # really 16 bits on disk, as Pillow reads it back
    expected = np.rint(gradient / 257).astype(np.uint8)
    rgb = read_image(path)
    np.testing.assert_array_equal(rgb, np.dstack([expected] * 3))
    assert rgb.min() == 0 and rgb.max() == 255 and 100 < rgb.mean() < 155  # a gradient, not a white page
    np.testing.assert_array_equal(read_image(path, channels=1)[..., 0], expected)
    tiff = tmp_path / "deep.tif"
    Image.fromarray(gradient).save(tiff)
    np.testing.assert_array_equal(read_image(tiff)[..., 0], expected)
    root = tmp_path / "folder"
    (root / "a").mkdir(parents=True)
    path.rename(root / "a" / "deep.png")
    np.testing.assert_array_equal(load_dataset(root).images[0], np.dstack([expected] * 3))


def test_read_image_resizes_and_names_unreadable_files(tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(np.full((40, 50, 3), 200, np.uint8)).save(path)
    assert read_image(path, size=(20, 30)).shape == (20, 30, 3)
    assert read_image(path, channels=1).shape == (40, 50, 1)
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"\xff\xd8\xff not really a jpeg")
    with pytest.raises(UnreadableImageError, match=f"{junk}: cannot decode image"):
        read_image(junk)
