"""CIFAR-10 and CIFAR-100 in their "python version": the .tar.gz archive or its extracted folder.

Batches are read straight out of the archive (nothing is extracted into the user's folders). Each
batch is a Python 2 pickle of a dict: b'data' a uint8 N x 3072 array (1024 red, 1024 green, 1024
blue values per 32 x 32 image), b'labels' (CIFAR-100: b'fine_labels') a list of ints; the meta file
holds the class names. Copies rewritten by Python 3 (pickle protocols 2 to 4, str keys) read the same.
"""
from __future__ import annotations

import io
import os
import pickle
import pickletools
import tarfile
import zlib
from dataclasses import dataclass
from math import prod
from pathlib import Path

import numpy as np

from vfe.data.download import Remote, find_or_fetch
from vfe.data.errors import MissingSplitError
from vfe.data.types import ImageSet
from vfe.errors import DataError


class CifarFormatError(DataError):
    """A file is not a CIFAR python-version batch, archive or folder."""


class UnsafePickleError(CifarFormatError):
    """A pickle names a global that a CIFAR batch never needs: it was refused, not run."""


# The integer arrays a batch holds (uint8 pixels; labels are lists, or int arrays in some copies)
_ARRAY_DTYPES = frozenset({"u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8"})


class _NDArrayClass:
    """Stands for numpy.ndarray in a pickle: only ever passed to _reconstruct."""


class _DtypeStub:
    """What the pickled call numpy.dtype(name, align, copy) and its state would build, held as plain values.

    NumPy's own dtype.__setstate__ accepts states that build broken dtypes (a damaged file triggers
    NumPy internal errors), so NumPy only ever sees a dtype made here from a checked name and the
    byte order (the second item of the state, whatever NumPy version pickled it).
    """

    def __init__(self, name=None, *args):
        self.name = name.decode("latin-1") if isinstance(name, bytes) else name
        self.state = (3, "|")

    def __setstate__(self, state) -> None:
        self.state = state

    def dtype(self) -> np.dtype:
        if not (isinstance(self.name, str) and self.name in _ARRAY_DTYPES):
            raise UnsafePickleError(f"refused a NumPy array of dtype {self.name!r:.20}: a CIFAR batch holds "
                                    "integer arrays only (an object array would hand Python objects through)")
        order = self.state[1] if isinstance(self.state, tuple) and len(self.state) > 1 else None
        order = order.decode("latin-1") if isinstance(order, bytes) else order
        if order not in ("|", "<", ">", "="):
            raise CifarFormatError(f"the pickled state of a {self.name} dtype is damaged "
                                   f"({self.state!r:.80})")
        return np.dtype(self.name).newbyteorder(">" if order == ">" else "=")


class _ArrayStub:
    """What NumPy's pickled _reconstruct + __setstate__ would build: `array`, made from checked values."""

    array: np.ndarray | None = None

    def __setstate__(self, state) -> None:
        self.array = _checked_array(state)


def _checked_array(state) -> np.ndarray:
    """The array NumPy's ndarray.__setstate__ would make of `state`, from plain values only."""
    if not (isinstance(state, tuple) and len(state) == 5 and state[0] == 1):
        raise CifarFormatError(f"a pickled NumPy array's state is damaged ({state!r:.80})")
    _, shape, dtype, fortran, raw = state
    if not (isinstance(shape, tuple) and all(type(n) is int and n >= 0 for n in shape)):
        raise CifarFormatError(f"a pickled NumPy array has the shape {shape!r:.80}")
    if not isinstance(dtype, _DtypeStub):
        raise CifarFormatError(f"a pickled NumPy array has no dtype (got {type(dtype).__name__})")
    dtype = dtype.dtype()
    if not (type(fortran) in (bool, int) and fortran == 0):  # always C order; a flipped bit says Fortran
        raise CifarFormatError(f"a pickled {dtype} array {shape} is marked as Fortran order (is_fortran="
                               f"{fortran!r:.20}), which the official batches never are")
    if not isinstance(raw, bytes) or len(raw) != prod(shape) * dtype.itemsize:
        got = f"{len(raw)} bytes" if isinstance(raw, bytes) else type(raw).__name__
        raise CifarFormatError(f"a pickled {dtype} array {shape} holds {got}, expected "
                               f"{prod(shape) * dtype.itemsize} bytes")
    return np.frombuffer(raw, dtype).reshape(shape)


def _reconstruct(cls, shape, typecode) -> _ArrayStub:
    if cls is not _NDArrayClass:
        raise UnsafePickleError("refused to rebuild an array of a class other than numpy.ndarray")
    return _ArrayStub()


def _latin1_bytes(text, encoding) -> bytes:
    """codecs.encode(text, 'latin1'): how Python 3 writes bytes into a protocol-2 pickle, and only that."""
    if not (isinstance(text, str) and encoding in ("latin1", "latin-1")):
        raise UnsafePickleError(f"refused codecs.encode of a {type(text).__name__} to {encoding!r:.20}: a "
                                "protocol-2 pickle only encodes text to latin1 bytes")
    return text.encode("latin-1")


def _empty_bytes(*args) -> bytes:
    """bytes(): how Python 3 writes b'' into a protocol-2 pickle, and only that."""
    if args:
        raise UnsafePickleError("refused bytes() with arguments: a protocol-2 pickle only calls it for b''")
    return b""


# The only globals a batch names: what pickle needs to rebuild a NumPy array, and the bytes of a
# protocol-2 pickle written by Python 3. Both spellings of the NumPy module, since the files say
# numpy.core (NumPy 1) and NumPy 2 writes numpy._core. Each maps to a stand-in: the arrays are made from
# checked plain values, never by NumPy's own unpickling, and bytes only from text.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): _NDArrayClass,
    ("numpy", "dtype"): _DtypeStub,
    ("_codecs", "encode"): _latin1_bytes,
    ("__builtin__", "bytes"): _empty_bytes,
}


class _BatchUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild NumPy arrays and plain containers, and nothing else.

    `pickle.load` calls whatever callable a file names (os.system included), so loading a pickle
    someone handed you runs their code. Every callable a pickle can reach is resolved through
    `find_class`; allowing exactly the three globals an official batch names (array
    reconstruction, ndarray, dtype), as stand-ins that only record their arguments, keeps those
    files readable and turns everything else into an error before it runs. Containers, bytes, str
    and ints need no globals at all (except bytes in Python 3's protocol 2: codecs.encode(text,
    'latin1'), allowed as exactly that); object arrays are refused too, since the official batches
    hold only uint8 data.
    """

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(f"refused to load the global {module}.{name}: a CIFAR batch only holds "
                                    "NumPy arrays, lists, bytes and numbers") from None


_MAX_PROTOCOL = 4  # the official files use 2; Python 3's pickle.dump defaults to 4 (3.8+: 5 with buffers)


def _check_protocol(data: bytes) -> None:
    """Refuse opcodes beyond pickle protocol 4: protocol 5's out-of-band buffers are never needed for a
    batch, and a damaged byte can turn into one of its opcodes (BYTEARRAY8) whose failure in CPython's
    unpickler frees a buffer still in use. Reading the opcodes first also checks every length they
    state against the bytes that are there, before the unpickler allocates anything."""
    for opcode, arg, _ in pickletools.genops(data):  # pure Python: reads, builds nothing
        protocol = arg if opcode.name == "PROTO" else opcode.proto
        if protocol > _MAX_PROTOCOL:
            raise UnsafePickleError(f"refused a pickle using protocol {protocol} ({opcode.name}): a CIFAR "
                                    f"batch is a pickle of protocol {_MAX_PROTOCOL} or lower")
        if opcode.name == "STOP":
            return


def unpickle_batch(data: bytes, where: str) -> dict:
    """The dict in one batch file (`where` names it in errors); refuses anything beyond plain data."""
    try:
        _check_protocol(data)
        batch = _BatchUnpickler(io.BytesIO(data), encoding="bytes").load()
        if isinstance(batch, dict):  # str keys (a copy written by Python 3) read as the official bytes keys
            batch = {k.encode() if isinstance(k, str) else k: v.array if isinstance(v, _ArrayStub) else v
                     for k, v in batch.items()}
    except CifarFormatError as e:
        raise type(e)(f"{where}: {e}") from None
    except Exception as e:  # a malformed pickle fails in many ways; each means "not a batch"
        raise CifarFormatError(f"{where}: not a CIFAR batch ({type(e).__name__}: {e})") from e
    if not isinstance(batch, dict):
        raise CifarFormatError(f"{where}: not a CIFAR batch (a {type(batch).__name__}, expected a dict)")
    return batch


@dataclass(frozen=True)
class CifarVariant:
    """How one CIFAR variant names its files and dict keys."""

    name: str
    folder: str
    archive: str
    split_files: dict[str, tuple[str, ...]]
    meta_file: str
    names_key: bytes
    labels_key: bytes
    remote: Remote


CIFAR10 = CifarVariant(
    "cifar10", "cifar-10-batches-py", "cifar-10-python.tar.gz",
    {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
    "batches.meta", b"label_names", b"labels",
    Remote(("https://www.cs.toronto.edu/~kriz/",),  # SHA-256 as pinned by Keras' cifar10.load_data
           {"cifar-10-python.tar.gz": "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"}))
CIFAR100 = CifarVariant(
    "cifar100", "cifar-100-python", "cifar-100-python.tar.gz",
    {"train": ("train",), "test": ("test",)},
    "meta", b"fine_label_names", b"fine_labels",
    Remote(("https://www.cs.toronto.edu/~kriz/",),  # SHA-256 as pinned by Keras' cifar100.load_data
           {"cifar-100-python.tar.gz": "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7"}))
CIFAR_VARIANTS = {v.name: v for v in (CIFAR10, CIFAR100)}


def find_cifar(path: str | os.PathLike, variants: tuple[CifarVariant, ...] = (CIFAR10, CIFAR100)
               ) -> tuple[CifarVariant, Path] | None:
    """(variant, archive or batch folder) that `path` is or directly holds; None if it is neither."""
    path = Path(path)
    if path.is_file():
        return _archive_variant(path, variants)
    if not path.is_dir():
        return None
    for v in variants:
        if (path / v.meta_file).is_file() and all((path / f).is_file() for f in v.split_files["test"]):
            return v, path
    for v in variants:
        if (path / v.folder).is_dir():
            return find_cifar(path / v.folder, (v,))
        if (path / v.archive).is_file():
            return v, path / v.archive
    return None


def load_cifar(path: str | os.PathLike, split: str = "train") -> ImageSet:
    """A split of the CIFAR archive or folder at `path` (a path the user names)."""
    found = find_cifar(path)
    if found is None:
        raise CifarFormatError(f"{path}: not a CIFAR python-version archive (cifar-10-python.tar.gz, "
                               "cifar-100-python.tar.gz) or its extracted folder")
    variant, source = found
    return _read(variant, source.resolve(), split, f"cifar:{source.resolve()}:{split}")


def load_cifar_dataset(variant: CifarVariant, split: str = "train", data_dir: str | os.PathLike | None = None,
                       download: bool = False) -> ImageSet:
    """A split of CIFAR-10/100 found on this machine (see vfe.data.locate) or downloaded."""
    folder = find_or_fetch(variant.name, lambda d: find_cifar(d, (variant,)) is not None, variant.remote,
                           [variant.archive], data_dir, download)
    _, source = find_cifar(folder, (variant,))
    return _read(variant, source, split, f"{variant.name}:{split}")


def _archive_variant(path: Path, variants: tuple[CifarVariant, ...]) -> tuple[CifarVariant, Path] | None:
    if not tarfile.is_tarfile(path):
        return None
    with _open_tar(path) as tar:
        first = tar.next()
    top = first.name.split("/")[0] if first is not None else ""
    return next(((v, path) for v in variants if v.folder == top), None)


def _open_tar(path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path, "r:*")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise CifarFormatError(f"{path}: unreadable archive ({e})") from e


def _read(variant: CifarVariant, source: Path, split: str, name: str) -> ImageSet:
    if split not in variant.split_files:
        raise MissingSplitError(f"split {split!r}: {variant.name} has the splits 'train' and 'test'")
    wanted = [*variant.split_files[split], variant.meta_file]
    files = _read_files(source, variant, wanted)
    meta = unpickle_batch(files[variant.meta_file], f"{source}:{variant.meta_file}")
    names = meta.get(variant.names_key)
    if not (isinstance(names, list) and names and all(isinstance(n, (bytes, str)) for n in names)):
        raise CifarFormatError(f"{source}:{variant.meta_file}: no {variant.names_key!r} list of class names")
    try:
        class_names = [n.decode() if isinstance(n, bytes) else n for n in names]
    except UnicodeDecodeError as e:
        raise CifarFormatError(f"{source}:{variant.meta_file}: a class name is not UTF-8 text ({e})"
                               ) from None
    parts = [_batch_arrays(unpickle_batch(files[f], f"{source}:{f}"), variant, f"{source}:{f}",
                           len(class_names)) for f in variant.split_files[split]]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return ImageSet(images, labels, class_names, source=name,
                    meta={"format": "cifar", "dataset": variant.name, "split": split, "path": str(source)})


def _read_files(source: Path, variant: CifarVariant, names: list[str]) -> dict[str, bytes]:
    """The named batch files, from the extracted folder or straight out of the archive."""
    if source.is_dir():
        missing = [n for n in names if not (source / n).is_file()]
        if missing:
            raise CifarFormatError(f"{source}: missing {', '.join(missing)}")
        return {n: (source / n).read_bytes() for n in names}
    wanted = {f"{variant.folder}/{n}": n for n in names}
    out: dict[str, bytes] = {}
    with _open_tar(source) as tar:
        try:
            for member in tar:
                if member.isfile() and member.name in wanted:
                    out[wanted[member.name]] = tar.extractfile(member).read()
                    if len(out) == len(wanted):
                        break
        except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
            raise CifarFormatError(f"{source}: unreadable archive ({e})") from e
    missing = [m for m, n in wanted.items() if n not in out]
    if missing:
        raise CifarFormatError(f"{source}: the archive lacks {', '.join(missing)}")
    return out


def _batch_arrays(batch: dict, variant: CifarVariant, where: str,
                  n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    data, labels = batch.get(b"data"), batch.get(variant.labels_key)
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.shape[1:] == (3072,)):
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise CifarFormatError(f"{where}: b'data' must be a uint8 N x 3072 array, got {got}")
    integer_array = isinstance(labels, np.ndarray) and labels.dtype.kind in "iu"
    if not (integer_array or (isinstance(labels, list) and all(type(v) is int for v in labels))):
        raise CifarFormatError(f"{where}: {variant.labels_key!r} must be a list of ints")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (OverflowError, ValueError) as e:
        raise CifarFormatError(f"{where}: {variant.labels_key!r} must be a list of ints ({e})") from e
    if labels.shape != (len(data),):
        raise CifarFormatError(f"{where}: {len(data)} images but {variant.labels_key!r} has shape "
                               f"{labels.shape}")
    if len(labels) and not (0 <= labels.min() and labels.max() < n_classes):
        raise CifarFormatError(f"{where}: labels span {labels.min()}..{labels.max()}, outside the "
                               f"{n_classes} classes of the meta file")
    images = np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return images, labels
