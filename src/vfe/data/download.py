"""Fetch a data set's published files into vfe's cache, each checked against its known SHA-256.

Used only when the files are not on this machine and the caller allowed a download. Every file is
streamed into a temporary file beside its destination and renamed only once its SHA-256 matches
the published one, so the cache never holds a partial or altered file, and a failed download
leaves nothing behind.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from vfe.data.errors import MissingDataError
from vfe.data.locate import download_dir, locate, search_dirs
from vfe.errors import VfeError
from vfe.io import publish

MIRROR_ENV = "VFE_DATA_MIRROR"
DEFAULT_TIMEOUT = 60.0
_CHUNK = 1 << 20


class DownloadError(VfeError, OSError):
    """A file could not be fetched (still an OSError, as network failures are)."""


class ChecksumError(DownloadError):
    """What arrived is not the published file (its SHA-256 differs); it was discarded."""


@dataclass(frozen=True)
class Remote:
    """Where a data set's files are published (base URLs, tried in order) and each file's SHA-256."""

    urls: tuple[str, ...]
    sha256: Mapping[str, str]


def download_file(url: str, dest: str | os.PathLike, sha256: str, timeout: float = DEFAULT_TIMEOUT,
                  progress: bool = True) -> Path:
    """Stream `url` to `dest`, hashing as it arrives; `dest` appears only if the SHA-256 matches.

    `timeout` (seconds) bounds the connection and every read, so a stalled server fails instead of
    hanging.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                request = urllib.request.Request(url, headers={"User-Agent": "vfe"})
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    total = int(response.headers.get("Content-Length") or 0) or None
                    with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name,
                              disable=not progress, dynamic_ncols=True) as bar:
                        while chunk := response.read(_CHUNK):
                            out.write(chunk)
                            digest.update(chunk)
                            bar.update(len(chunk))
            except (OSError, http.client.HTTPException) as e:  # URLError, HTTPError and timeouts are OSErrors
                raise DownloadError(f"{url}: download failed ({e})") from e
            out.flush()
            os.fsync(out.fileno())
        got = digest.hexdigest()
        if got != sha256:
            raise ChecksumError(f"{url}: SHA-256 {got} differs from the published {sha256}; the download was "
                                "discarded (a proxy or mirror may serve another file: retry, or set "
                                f"${MIRROR_ENV} to a mirror you trust)")
        publish(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


def download_files(name: str, remote: Remote, files: list[str] | None = None,
                   dest_dir: str | os.PathLike | None = None, base_url: str | None = None,
                   timeout: float = DEFAULT_TIMEOUT, progress: bool = True) -> Path:
    """Fetch `files` (default: all of `remote`'s) that `dest_dir` lacks; returns `dest_dir`.

    `dest_dir` defaults to ~/.cache/vfe/<name>. The base URL is `base_url` if given, else
    `$VFE_DATA_MIRROR/<name>/`, else the publisher's addresses, each tried in turn while the network
    fails (a checksum mismatch stops at once: a server answered with the wrong file).
    """
    dest_dir = Path(dest_dir) if dest_dir is not None else download_dir(name)
    mirror = os.environ.get(MIRROR_ENV)
    if base_url:
        bases: tuple[str, ...] = (base_url,)
    elif mirror:
        bases = (f"{mirror.rstrip('/')}/{name}/",)
    else:
        bases = remote.urls
    for file in files if files is not None else list(remote.sha256):
        if (dest_dir / file).is_file():
            continue
        errors = []
        for base in bases:
            try:
                url = base.rstrip("/") + "/" + file
                download_file(url, dest_dir / file, remote.sha256[file], timeout, progress)
                break
            except ChecksumError:
                raise
            except DownloadError as e:
                errors.append(str(e))
        else:
            raise DownloadError(f"{name}: could not fetch {file}:\n  " + "\n  ".join(errors))
    return dest_dir


def find_or_fetch(name: str, holds: Callable[[Path], bool], remote: Remote, files: list[str],
                  data_dir: str | os.PathLike | None = None, download: bool = False,
                  apt_package: str | None = None) -> Path:
    """The folder holding data set `name` (see vfe.data.locate), downloading `files` first if allowed.

    Without the files and without `download`, the error says every way to provide them.
    """
    folder = locate(name, holds, data_dir)
    if folder is not None:
        return folder
    if download:
        try:
            folder = download_files(name, remote, files)
        except DownloadError as e:
            raise type(e)(f"{e}\n{how_to_provide(name, remote, files, apt_package)}") from e
        if holds(folder):
            return folder
    looked = ", ".join(str(d) for d in search_dirs(name, data_dir))
    raise MissingDataError(f"{name}: files not found (looked in {looked}).\n"
                            f"{how_to_provide(name, remote, files, apt_package)}")


def how_to_provide(name: str, remote: Remote, files: list[str], apt_package: str | None = None) -> str:
    ways = []
    if apt_package:
        ways.append(f"  - apt-get install {apt_package} (Debian/Ubuntu; installs into "
                    f"/usr/share/datasets/{name})")
    ways.append(f"  - put {', '.join(files)} into {download_dir(name)}, or into the folder given as data_dir "
                "(--data-dir) or $VFE_DATA")
    ways.append(f"  - load_dataset({name!r}, download=True) fetches them from {remote.urls[0]} "
                f"(needs network; ${MIRROR_ENV} names a mirror)")
    return "Provide the files in one of these ways:\n" + "\n".join(ways)
