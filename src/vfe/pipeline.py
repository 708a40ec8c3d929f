"""A pipeline = frozen backbone + fitted head, saved as one safetensors file with JSON metadata.

The file holds the backbone's weights (`backbone.*`), the head's learned state (`head.*`) and, in
the safetensors header, a JSON document that rebuilds both: backbone architecture, weights
identity, preprocessing, head class, hyperparameters, classes, class names and training history.
Nothing is pickled, so loading a pipeline someone hands you runs no code of theirs.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from vfe.backbones import Backbone
from vfe.heads import Head, head_class
from vfe.io import load_tensors, save_tensors

FORMAT = "vfe-pipeline"
FORMAT_VERSION = 1


class Pipeline:
    """uint8 images -> backbone features -> head -> class probabilities."""

    def __init__(self, backbone: Backbone, head: Head, class_names: list[str] | None = None):
        self.backbone = backbone
        self.head = head
        self.class_names = list(class_names) if class_names is not None else [str(c) for c in head.classes_]

    def features(self, images, progress: bool = False) -> np.ndarray:
        return self.backbone.extract(images, progress=progress)

    def predict_proba(self, images, progress: bool = False) -> np.ndarray:
        return self.head.predict_proba(self.features(images, progress))

    def predict(self, images, progress: bool = False) -> np.ndarray:
        return self.head.classes_[self.predict_proba(images, progress).argmax(1)]

    def class_name(self, label) -> str:
        """Name of a label the head predicts (labels index the data set's class names)."""
        index = int(label)
        return self.class_names[index] if 0 <= index < len(self.class_names) else str(label)

    # -- persistence ---------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write the pipeline atomically; refuses to replace an existing file unless `overwrite`."""
        path = Path(path)
        if path.suffix != ".safetensors":
            raise ValueError(f"{path}: a pipeline file must end in .safetensors")
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True (CLI: --overwrite) to replace it")
        head_tensors, head_meta = self.head.export_state()
        tensors = {f"backbone.{k}": v for k, v in self.backbone.model.state_dict().items()}
        tensors.update({f"head.{k}": v for k, v in head_tensors.items()})
        w = self.backbone.weights
        meta = {"format": FORMAT, "version": FORMAT_VERSION,
                "backbone": {"name": self.backbone.name, "arch": w.arch, "weights_kind": w.kind,
                             "weights_identity": w.identity, "weights_source": w.source,
                             "has_classifier": w.has_classifier,
                             "data_config": _jsonable(self.backbone.data_config)},
                "head": head_meta, "class_names": self.class_names}
        save_tensors(path, tensors, metadata={"vfe": json.dumps(meta, default=_json_default)})
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "auto") -> Pipeline:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"pipeline file {path} does not exist")
        meta = read_metadata(path)
        tensors = load_tensors(path)
        backbone = _rebuild_backbone(meta["backbone"], _strip(tensors, "backbone."), device)
        head = head_class(meta["head"]["head"]).from_state(_strip(tensors, "head."), meta["head"])
        return cls(backbone, head, meta["class_names"])


def read_metadata(path: str | os.PathLike) -> dict:
    """The JSON document of a pipeline file, validated (no tensors are read)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("vfe")
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path}: not a safetensors file ({err})") from None
    if raw is None:
        raise ValueError(f"{path}: a safetensors file, but not a vfe pipeline (no 'vfe' metadata)")
    meta = json.loads(raw)
    if meta.get("format") != FORMAT or meta.get("version", 0) > FORMAT_VERSION:
        raise ValueError(f"{path}: pipeline format {meta.get('format')} v{meta.get('version')} is not "
                         f"readable by this vfe (reads {FORMAT} v<={FORMAT_VERSION})")
    return meta


def _rebuild_backbone(spec: dict, state: dict[str, torch.Tensor], device: str) -> Backbone:
    """The saved backbone: architecture from timm, weights from the file, preprocessing as saved."""
    from vfe.backbones.backbone import resolve_device
    from vfe.backbones.registry import settings_for
    from vfe.backbones.weights import WeightsInfo, load_model

    model, _ = load_model(spec["arch"], "none")
    model.load_state_dict(state)
    info = WeightsInfo(spec["weights_kind"], spec["weights_identity"], spec["weights_source"], spec["arch"],
                       spec["has_classifier"])
    data_config = {k: tuple(v) if isinstance(v, list) else v for k, v in spec["data_config"].items()}
    return Backbone(model, spec["name"], info, data_config, resolve_device(device), settings_for(spec["arch"]))


def _strip(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def _jsonable(d: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
