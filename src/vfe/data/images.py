"""Image files to uint8 arrays: one file, many in parallel, or lazily when a set is indexed.

`read_image` is the one way vfe reads an image file (image folders, lazy sets, `vfe predict`).
Pillow does the decoding (JPEG, PNG, BMP, GIF, WebP, TIFF). Every image becomes 3-channel RGB (or
1-channel grayscale when asked): grayscale and palette images are expanded, CMYK converted, an alpha
channel dropped (as Keras' image_dataset_from_directory does), an animated GIF gives its first frame,
16-bit images are scaled to 0..255 (Pillow's own conversion clips them, turning them white).
Resizing is bilinear with antialiasing. A JPEG at least twice the target size is decoded at a
reduced DCT scale first (Pillow's `draft`, never below the target size): a 3000 x 2000 photo
reaches 224 x 224 4x faster that way, within 1 gray level on average of a full decode.

Images with more than MAX_PIXELS pixels are refused before decoding: a small file can declare
50000 x 50000 pixels (a "decompression bomb") and take gigabytes to decode.
"""
from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from vfe.errors import DataError, SettingsError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
Size = tuple[int, int]  # (height, width)

# Most pixels (width x height) an image may declare; None: no limit. Pillow's default limit, about
# 0.25 GiB of RGB. The environment variable VFE_MAX_PIXELS, when set, overrides it (a number or 'none').
MAX_PIXELS: int | None = Image.MAX_IMAGE_PIXELS
_16_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class UnreadableImageError(DataError):
    """An image file that cannot be decoded: not an image, truncated, or corrupt."""


class ImageTooLargeError(UnreadableImageError):
    """An image declaring more pixels than the limit (MAX_PIXELS), refused before it is decoded."""


def pixel_limit() -> int | None:
    """The limit in force: $VFE_MAX_PIXELS when set, else MAX_PIXELS."""
    env = os.environ.get("VFE_MAX_PIXELS", "").strip()
    if not env:
        return MAX_PIXELS
    if env.lower() == "none":
        return None
    try:
        limit = int(env.replace("_", ""))
    except ValueError:
        limit = 0
    if limit < 1:
        raise SettingsError(f"VFE_MAX_PIXELS={env!r}: give a whole number of pixels (e.g. 200000000), or "
                            "'none' for no limit")
    return limit


def _too_large(path, pixels: str, limit: int | None) -> ImageTooLargeError:
    return ImageTooLargeError(
        f"{path}: {pixels} pixels, over the limit of {limit:,} (a guard against decompression bombs); if you "
        "trust this file, raise the limit with the environment variable VFE_MAX_PIXELS (a number, or 'none') "
        "or vfe.data.images.MAX_PIXELS in Python")


def _open(path, limit: int | None) -> Image.Image:
    """Image.open with vfe's pixel limit. Pillow's own refuses above twice its MAX_IMAGE_PIXELS, so it is
    raised to a larger limit vfe was given (never lowered), else Pillow would refuse what vfe accepts."""
    if Image.MAX_IMAGE_PIXELS is not None and (limit is None or limit > Image.MAX_IMAGE_PIXELS):
        Image.MAX_IMAGE_PIXELS = limit
    try:
        im = Image.open(path)
    except Image.DecompressionBombError as e:  # above twice Pillow's limit: it says the size, not the sides
        said = re.search(r"\((\d+) pixels\)", str(e))
        raise _too_large(path, f"{int(said[1]):,}" if said else "more", limit) from None
    if limit is not None and im.width * im.height > limit:
        im.close()
        raise _too_large(path, f"{im.width} x {im.height} = {im.width * im.height:,}", limit)
    return im


def probe_image(path: str | os.PathLike) -> Size:
    """(height, width) from the file's header, without decoding the pixels."""
    limit = pixel_limit()
    try:
        with _open(path, limit) as im:
            return im.height, im.width
    except ImageTooLargeError:
        raise
    except (OSError, SyntaxError, ValueError) as e:
        raise UnreadableImageError(f"{path}: not a readable image ({e})") from e


def read_image(path: str | os.PathLike, size: Size | None = None, channels: int = 3) -> np.ndarray:
    """H x W x `channels` uint8 pixels of one file (3: RGB, 1: grayscale), resized to `size` (height,
    width) when given. Raises UnreadableImageError (a DataError) naming the file."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels}")
    mode = "RGB" if channels == 3 else "L"
    limit = pixel_limit()
    try:
        with _open(path, limit) as im:
            if size is not None:
                im.draft(mode, (size[1], size[0]))  # JPEG only: decode at the smallest scale >= size
            out = _to_8_bit(im).convert(mode)  # forces the full decode: truncated files fail here
        if size is not None and out.size != (size[1], size[0]):
            out = out.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    except ImageTooLargeError:
        raise
    except (OSError, SyntaxError, ValueError) as e:
        raise UnreadableImageError(f"{path}: cannot decode image ({e})") from e
    pixels = np.asarray(out)
    return pixels if channels == 3 else pixels[..., None]


def _to_8_bit(im: Image.Image) -> Image.Image:
    """16-bit grayscale (mode I;16*, or I as older Pillows read 16-bit PNGs) as 8-bit L, 0..65535 -> 0..255.

    Pillow's own convert clips at 255, so a 16-bit image comes out almost white. Mode I values
    outside 0..65535 (32-bit images) are clipped to that range first.
    """
    if im.mode not in _16_BIT_MODES:
        return im
    values = np.clip(np.asarray(im).astype(np.int64), 0, 65535)
    return Image.fromarray(((values + 128) // 257).astype(np.uint8), "L")


def describe_bad(errors: Sequence[UnreadableImageError], named: int = 5) -> str:
    """'N unreadable image files: <the first `named` errors>, and M more', for one-line error messages."""
    shown = "; ".join(str(e) for e in errors[:named])
    more = f"; and {len(errors) - named} more" if len(errors) > named else ""
    return f"{len(errors)} unreadable image file{'s' * (len(errors) != 1)}: {shown}{more}"


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def parallel_map(fn: Callable[[Any], Any], items: Sequence, progress: bool = False,
                 desc: str | None = None) -> list:
    """[fn(item) for item in items] on a thread pool (Pillow and file reads release the GIL), in order."""
    workers = min(8, os.cpu_count() or 1, max(1, len(items)))
    with ThreadPoolExecutor(workers) as pool:
        return list(tqdm(pool.map(fn, items), total=len(items), desc=desc, unit="img", disable=not progress,
                         dynamic_ncols=True))


def decode_into(paths: Sequence[Path], size: Size, out: np.ndarray, progress: bool = False,
                desc: str | None = None) -> dict[int, UnreadableImageError]:
    """Decode paths[i] into out[i] in parallel; {i: error} for files that failed (their rows are unset)."""
    def work(i: int) -> UnreadableImageError | None:
        try:
            out[i] = read_image(paths[i], size)
        except UnreadableImageError as e:
            return e
        return None

    results = parallel_map(work, range(len(paths)), progress, desc)
    return {i: e for i, e in enumerate(results) if e is not None}


class LazyImages:
    """N x H x W x 3 uint8 images that stay files until indexed, for folders too big for memory.

    Indexed like a NumPy array: an int gives one H x W x 3 image, a slice, index array or boolean
    mask a decoded batch. `take` is a lazy view on some of the files; `digest` identifies the
    content (file bytes, order and decode size) without decoding anything.
    """

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(self, paths: Iterable[str | os.PathLike], size: Size, file_digests: Iterable[str]):
        self.paths = [Path(p) for p in paths]
        self.size = (int(size[0]), int(size[1]))
        self.file_digests = list(file_digests)
        if len(self.file_digests) != len(self.paths):
            raise ValueError(f"{len(self.paths)} paths but {len(self.file_digests)} file digests")

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.paths), *self.size, 3)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return read_image(self.paths[key], self.size)
        index = np.arange(len(self))[key]
        return self._decode([self.paths[i] for i in index])

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        images = self._decode(self.paths, progress=len(self) > 1000)
        return images if dtype is None else images.astype(dtype)

    def take(self, index) -> LazyImages:
        index = np.arange(len(self))[index]
        return LazyImages([self.paths[i] for i in index], self.size, [self.file_digests[i] for i in index])

    def digest(self) -> str:
        h = hashlib.sha256(f"lazy-images:{self.size[0]}x{self.size[1]}".encode())
        for d in self.file_digests:
            h.update(bytes.fromhex(d))
        return h.hexdigest()

    def _decode(self, paths: Sequence[Path], progress: bool = False) -> np.ndarray:
        out = np.empty((len(paths), *self.size, 3), np.uint8)
        errors = decode_into(paths, self.size, out, progress, desc="decode images")
        if errors:
            raise UnreadableImageError(f"{describe_bad(list(errors.values()))}; remove or replace them (a "
                                       "folder read lazily, being too large to decode up front or loaded "
                                       "with lazy=True, can leave out with --skip-bad only files whose "
                                       "header is unreadable)")
        return out
