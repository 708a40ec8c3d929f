"""A pipeline = frozen backbone + fitted head, saved as one safetensors file with JSON metadata.

The file holds the backbone's weights (`backbone.*`), the head's learned state (`head.*`) and, in
the safetensors header, a JSON document that rebuilds both: backbone architecture, weights
identity, preprocessing, head class, hyperparameters, classes, class names and training history.
Nothing is pickled, so loading a pipeline someone hands you runs no code of theirs.

safetensors itself has no checksum: one flipped bit in a tensor loads as a silently different model.
So the header also holds (`vfe_checksums`) the SHA-256 of every tensor (its name, dtype, shape and
bytes) and of the JSON document with that table; loading verifies them before the model is built. A
file saved before checksums (format v1) still loads, with a warning that damage to it cannot be found.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from pathlib import Path

import numpy as np
import timm
import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from vfe.backbones import Backbone, resolve_device
from vfe.backbones.preprocess import _MODES as INTERPOLATIONS  # the interpolations preprocessing knows
from vfe.backbones.registry import settings_for
from vfe.backbones.runtimes import check_available, choose_runtime
from vfe.backbones.weights import WeightsInfo
from vfe.errors import PipelineFileError, VfeError
from vfe.heads import Head, head_class
from vfe.io import load_tensors, save_tensors
from vfe.robustness.detectors import Detector, expected_layout

FORMAT = "vfe-pipeline"
FORMAT_VERSION = 2  # 2: checksums of the header and of every tensor
CHECKSUMS = "vfe_checksums"  # the metadata key of the checksum table


class Pipeline:
    """uint8 images -> backbone features -> head -> class probabilities; optionally a `detector` that
    says which inputs to abstain on (vfe.robustness.detectors, docs/abstention.md)."""

    def __init__(self, backbone: Backbone, head: Head, class_names: list[str] | None = None,
                 detector: Detector | None = None, card: dict | None = None):
        self.backbone = backbone
        self.head = head
        self.class_names = list(class_names) if class_names is not None else [str(c) for c in head.classes_]
        self.detector = detector
        self.card = card  # the robustness card of the run it came from (vfe run --save-best; docs/cards.md)

    def features(self, images, progress: bool = False) -> np.ndarray:
        return self.backbone.extract(images, progress=progress)

    def predict_proba(self, images, progress: bool = False) -> np.ndarray:
        return self.head.predict_proba(self.features(images, progress))

    def predict(self, images, progress: bool = False) -> np.ndarray:
        return self.head.classes_[self.predict_proba(images, progress).argmax(1)]

    def predict_or_abstain(self, images, coverage: float | None = None,
                           progress: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(class probabilities, detector scores, abstain mask): abstain where the score is above the
        detector's threshold for `coverage` (None: the coverage it was fitted for)."""
        if self.detector is None:
            raise VfeError("this pipeline has no detector to abstain with; fit one with vfe fit ... --detector "
                           "mahalanobis --coverage 0.9 (docs/abstention.md)")
        threshold = self.detector.threshold_at(coverage)
        X = self.features(images, progress)
        probs = self.head.predict_proba(X)
        scores = self.detector.score(self.head, X, probs)
        return probs, scores, scores > threshold

    def class_name(self, label) -> str:
        """Name of a label the head predicts (labels index the data set's class names)."""
        index = int(label)
        return self.class_names[index] if 0 <= index < len(self.class_names) else str(label)

    # -- persistence ---------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write the pipeline atomically; refuses to replace an existing file unless `overwrite`."""
        path = Path(path)
        if path.suffix != ".safetensors":
            raise PipelineFileError(f"{path}: a pipeline file must end in .safetensors")
        if path.exists() and not overwrite:
            raise PipelineExistsError(f"{path} exists; pass --overwrite (Python: overwrite=True) to replace "
                                      "it")
        head_tensors, head_meta = self.head.export_state()
        tensors = {f"backbone.{k}": v for k, v in self.backbone.model.state_dict().items()}
        tensors.update({f"head.{k}": v for k, v in head_tensors.items()})
        detector_tensors, detector_meta = self.detector.export_state() if self.detector else ({}, None)
        tensors.update({f"detector.{k}": torch.from_numpy(v) for k, v in detector_tensors.items()})
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        w = self.backbone.weights
        meta = {"format": FORMAT, "version": FORMAT_VERSION,
                "backbone": {"name": self.backbone.name, "arch": w.arch, "weights_kind": w.kind,
                             "weights_identity": w.identity, "weights_source": w.source,
                             "has_classifier": w.has_classifier,
                             "data_config": _jsonable(self.backbone.data_config)},
                "head": head_meta, "class_names": self.class_names}
        if detector_meta is not None:  # no key at all without one: such a file reads as before
            meta["detector"] = detector_meta
        if self.card is not None:  # likewise: a file without a card has no "card" key
            meta["card"] = self.card
        save_tensors(path, tensors, metadata=sealed_metadata(json.dumps(meta, default=_json_default), tensors))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "auto", runtime: str = "auto") -> Pipeline:
        """The pipeline saved at `path`. Its header is checked against its tensors before anything is
        built, so an edited or damaged file is a PipelineFileError naming the problem, never a huge
        allocation or a model that silently differs from the one saved. `runtime` runs the backbone's
        extraction as in vfe.backbones.runtimes (its network exported once, where faithful)."""
        path = Path(path)
        if runtime not in ("torch", "auto"):
            check_available(runtime, resolve_device(device))  # a missing package before the slow part
        meta, layout, sums, model_kwargs = _checked_header(path)
        try:
            tensors = load_tensors(path)
        except (SafetensorError, OSError, ValueError) as err:
            raise PipelineFileError(f"{path}: the tensors cannot be read ({err}){_REMAKE}") from None
        if {k: _layout(v) for k, v in tensors.items()} != layout:  # the file changed since the header check
            raise PipelineFileError(f"{path}: the tensors differ from the file's header{_REMAKE}")
        if sums is not None:
            _verify_tensors(path, tensors, sums)
        backbone = _rebuild_backbone(meta["backbone"], _strip(tensors, "backbone."), model_kwargs, device, runtime)
        try:
            head = head_class(meta["head"]["head"]).from_state(_strip(tensors, "head."), meta["head"])
        except Exception as err:  # the dry run passed, so this is unexpected: still the file's problem
            raise PipelineFileError(f"{path}: the head cannot be rebuilt ({type(err).__name__}: {err})"
                                    f"{_REMAKE}") from err
        detector = Detector.from_state(_strip(tensors, "detector."), meta["detector"]) if "detector" in meta else None
        return cls(backbone, head, meta["class_names"], detector, card=card_of(meta))


def card_of(meta: dict) -> dict | None:
    """The robustness card in a pipeline's JSON document (vfe.card), or None when it has none."""
    card = meta.get("card")
    return card if isinstance(card, dict) else None


def read_metadata(path: str | os.PathLike) -> dict:
    """The JSON document of a pipeline file, checked against its checksum and the file's tensor shapes (no
    tensor data is read); a PipelineFileError names what does not fit."""
    return _checked_header(Path(path))[0]


def sealed_metadata(document: str, tensors: dict[str, torch.Tensor]) -> dict[str, str]:
    """The safetensors metadata of a pipeline: its JSON `document` and the checksum table that seals it
    and every tensor (contiguous CPU tensors, as they are written)."""
    sums = {k: _tensor_sum(k, v) for k, v in tensors.items()}
    table = {"algorithm": "sha256", "tensors": sums, "header": _header_sum(document, sums)}
    return {"vfe": document, CHECKSUMS: json.dumps(table, sort_keys=True)}


# -- checksums ---------------------------------------------------------------------------------------

def _tensor_sum(name: str, tensor: torch.Tensor) -> str:
    """SHA-256 of a tensor's name, dtype, shape and bytes: a tensor renamed, retyped or reshaped fails too."""
    dtype, shape = _layout(tensor)
    h = hashlib.sha256(f"{name}\0{dtype}\0{list(shape)}\0".encode())
    h.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _header_sum(document: str, sums: dict[str, str]) -> str:
    """SHA-256 of the JSON document and the tensor checksums: damage to either is the header's."""
    return hashlib.sha256(f"{document}\0{json.dumps(sums, sort_keys=True)}".encode()).hexdigest()


def _checked_sums(path: Path, document: str, raw: str, layout: dict[str, Layout]) -> dict[str, str]:
    """The tensor checksums of a file's table, after checking the table seals this header and these tensors."""
    try:
        table = json.loads(raw)
        sums, header = table["tensors"], table["header"]
        valid = table["algorithm"] == "sha256" and isinstance(sums, dict) and isinstance(header, str)
    except (ValueError, TypeError, KeyError, RecursionError):
        valid = False
    if not valid or header != _header_sum(document, sums):
        raise PipelineFileError(f"{path}: checksum mismatch in the header (the file is damaged){_REMAKE}")
    if set(sums) != set(layout):
        name = min(set(sums) ^ set(layout))
        raise PipelineFileError(f"{path}: checksum table and tensors disagree on tensor {name!r} (the file is "
                                f"damaged){_REMAKE}")
    return sums


def _verify_tensors(path: Path, tensors: dict[str, torch.Tensor], sums: dict[str, str]) -> None:
    for name, tensor in tensors.items():
        if _tensor_sum(name, tensor) != sums[name]:
            raise PipelineFileError(f"{path}: checksum mismatch in tensor {name!r} (the file is damaged){_REMAKE}")


# -- checking a file before anything is built ------------------------------------------------------------

MAX_INPUT_SIZE = 1024  # pixels a side: a header asking for more is refused (100000 would need ~120 GB)
_REMAKE = "; save the pipeline again (vfe fit), or restore the file"
_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}
_DTYPE_NAMES = {v: k for k, v in _DTYPES.items()}
Layout = tuple[str, tuple[int, ...]]  # (safetensors dtype, shape)


class MissingPipelineError(PipelineFileError, FileNotFoundError):
    """No file at the path given (still a FileNotFoundError)."""


class PipelineExistsError(PipelineFileError, FileExistsError):
    """Saving would replace a file (still a FileExistsError)."""


def _layout(tensor: torch.Tensor) -> Layout:
    return _DTYPE_NAMES.get(tensor.dtype, str(tensor.dtype)), tuple(tensor.shape)


def _checked_header(path: Path) -> tuple[dict, dict[str, Layout], dict[str, str] | None, dict]:
    """(JSON document, {tensor name: layout}, {tensor name: checksum} or None for a v1 file, timm kwargs of
    the backbone), all checked against each other.

    The backbone and head are built on PyTorch's meta device (shapes only, no memory) and their state
    compared with the file's tensors, so a wrong class count, a transposed weight or another
    architecture is found before any real allocation.
    """
    meta, layout, sums = _read_header(path)
    _check_document(path, meta)
    model_kwargs, feature_dim = _check_backbone(path, meta["backbone"], _strip(layout, "backbone."))
    _check_head(path, meta, _strip(layout, "head."), feature_dim)
    _check_detector(path, meta, _strip(layout, "detector."), feature_dim)
    return meta, layout, sums, model_kwargs


def _read_header(path: Path) -> tuple[dict, dict[str, Layout], dict[str, str] | None]:
    if not path.is_file():
        raise MissingPipelineError(f"pipeline file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            names = f.keys()  # a safe_open is not iterable
            layout = {k: (f.get_slice(k).get_dtype(), tuple(f.get_slice(k).get_shape())) for k in names}
    except (SafetensorError, OSError, ValueError) as err:
        raise PipelineFileError(f"{path}: not a safetensors file ({err}); give a pipeline saved by vfe fit "
                                "(a .safetensors file)") from None
    raw = metadata.get("vfe")
    if raw is None:
        raise PipelineFileError(f"{path}: a safetensors file, but not a vfe pipeline (no 'vfe' metadata); "
                                "give a pipeline saved by vfe fit")
    sums = _checked_sums(path, raw, metadata[CHECKSUMS], layout) if CHECKSUMS in metadata else None
    try:
        meta = json.loads(raw)
    except ValueError as err:
        raise PipelineFileError(f"{path}: the pipeline header is not valid JSON ({err}){_REMAKE}") from None
    if not isinstance(meta, dict):
        raise PipelineFileError(f"{path}: the pipeline header is a JSON {type(meta).__name__}, not an object"
                                f"{_REMAKE}")
    version = meta.get("version")
    if meta.get("format") != FORMAT or not _is_int(version) or not 1 <= version <= FORMAT_VERSION:
        raise PipelineFileError(f"{path}: pipeline format {meta.get('format')} v{version} is not readable by "
                                f"this vfe (reads {FORMAT} v<={FORMAT_VERSION}); save it again with this vfe "
                                "or upgrade vfe")
    if sums is None and version > 1:
        raise _problem(path, f"a format v{version} pipeline without its checksums (the file is damaged)")
    if sums is None:
        warnings.warn(f"{path}: a pipeline saved by an older vfe (format v1, without checksums): damage to it "
                      "cannot be detected; fit it again to add them", stacklevel=4)
    return meta, layout, sums


def _problem(path: Path, what: str) -> PipelineFileError:
    return PipelineFileError(f"{path}: {what}{_REMAKE}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_document(path: Path, meta: dict) -> None:
    """The keys and value types that rebuilding reads, and the class names against the head's classes."""
    backbone, head = meta.get("backbone"), meta.get("head")
    if not isinstance(backbone, dict):
        raise _problem(path, "the header has no 'backbone' object")
    for key, kind in (("name", str), ("arch", str), ("weights_kind", str), ("weights_identity", str),
                      ("weights_source", str), ("has_classifier", bool), ("data_config", dict)):
        if not isinstance(backbone.get(key), kind):
            raise _problem(path, f"the header's backbone.{key} is missing or not a {kind.__name__}")
    _check_data_config(path, backbone["data_config"])
    if not isinstance(head, dict) or not isinstance(head.get("head"), str):
        raise _problem(path, "the header has no 'head' object naming the head class")
    classes, names = head.get("classes"), meta.get("class_names")
    if not (isinstance(classes, list) and classes and all(_is_int(c) or isinstance(c, str) for c in classes)
            and len(set(classes)) == len(classes)):
        raise _problem(path, "the header's head.classes is not a list of distinct class labels")
    if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise _problem(path, "the header's class_names is missing or not a list of strings")
    indexes = all(_is_int(c) and 0 <= c < len(names) for c in classes)  # labels that index the names
    if len(names) != len(classes) and not indexes:
        raise _problem(path, f"class_names lists {len(names)} names but the head has {len(classes)} classes")


def _check_data_config(path: Path, config: dict) -> None:
    size = config.get("input_size")
    if not (isinstance(size, list) and len(size) == 3 and all(_is_int(v) for v in size) and size[0] == 3):
        raise _problem(path, f"backbone.data_config.input_size {size!r} is not [3, height, width]")
    if not all(8 <= v <= MAX_INPUT_SIZE for v in size[1:]):
        raise _problem(path, f"backbone.data_config.input_size {size} is outside 8..{MAX_INPUT_SIZE} pixels "
                             "a side")
    for key in ("mean", "std"):
        value = config.get(key)
        if not (isinstance(value, list) and len(value) == 3 and all(_is_number(v) for v in value)):
            raise _problem(path, f"backbone.data_config.{key} {value!r} is not three numbers")
    if not all(v > 0 for v in config["std"]):
        raise _problem(path, f"backbone.data_config.std {config['std']} must be positive")
    if config.get("interpolation") not in INTERPOLATIONS:
        raise _problem(path, f"backbone.data_config.interpolation {config.get('interpolation')!r} is not one "
                             f"of {', '.join(sorted(INTERPOLATIONS))}")
    crop = config.get("crop_pct")
    if not (_is_number(crop) and 0 < crop <= 1) or config.get("crop_mode") != "center":
        raise _problem(path, f"backbone.data_config crop_pct {crop!r} / crop_mode "
                             f"{config.get('crop_mode')!r} must be in (0, 1] / 'center'")


def _check_backbone(path: Path, spec: dict, layout: dict[str, Layout]) -> tuple[dict, int]:
    """(timm kwargs that rebuild the saved model, its feature size), the saved tensors fitting that model."""
    arch = spec["arch"]
    if not timm.is_model(arch):
        raise _problem(path, f"backbone.arch {arch!r} is not a timm model in this timm ({timm.__version__})")
    model, kwargs = _backbone_model(arch, layout)
    _compare(path, "backbone", _state_layout(model.state_dict()), layout)
    return kwargs, int(getattr(model, "head_hidden_size", None) or model.num_features)


def _backbone_model(arch: str, layout: dict[str, Layout]) -> tuple[nn.Module, dict]:
    """(the timm model the saved tensors belong to, on the meta device; its timm kwargs): a classifier of
    another size than timm's default (a backbone loaded from a checkpoint file) is built to that size."""
    with torch.device("meta"):
        model = timm.create_model(arch, pretrained=False)
        classifier = model.pretrained_cfg.get("classifier")
        saved = layout.get(f"{classifier}.weight") if isinstance(classifier, str) else None
        if saved is None or len(saved[1]) != 2 or saved[1][0] == model.num_classes:
            return model, {}
        kwargs = {"num_classes": saved[1][0]}
        return timm.create_model(arch, pretrained=False, **kwargs), kwargs


def _check_head(path: Path, meta: dict, layout: dict[str, Layout], feature_dim: int) -> None:
    """The head class rebuilt on the meta device from the saved shapes: its state must match the file's."""
    spec = meta["head"]
    for part in _head_parts(spec):
        try:
            part_cls = head_class(part.get("head"))
        except VfeError as err:
            raise PipelineFileError(f"{path}: {err}") from None
        inputs = getattr(part_cls, "inputs", "features")  # a wrapper's is a property: its head's
        if isinstance(inputs, str) and inputs != "features":
            raise _problem(path, f"head {part['head']} takes {inputs}, but a pipeline's head takes backbone "
                                 "features")
        if "n_features_in" in part and part["n_features_in"] != feature_dim:
            raise _problem(path, f"the head takes {part['n_features_in']!r} features, but the backbone "
                                 f"{meta['backbone']['arch']} gives {feature_dim}")
    empty = {k: torch.empty(shape, dtype=_DTYPES[dtype], device="meta")
             for k, (dtype, shape) in layout.items() if dtype in _DTYPES}
    unknown = sorted(set(layout) - set(empty))
    if unknown:
        raise _problem(path, f"tensor head.{unknown[0]} has dtype {layout[unknown[0]][0]}, which vfe never "
                             "writes")
    try:
        with torch.device("meta"):
            state, _ = head_class(spec["head"]).from_state(empty, spec).export_state()
    except Exception as err:  # the head's own code on the header's values: any failure means they do not fit
        said = " ".join(str(err).split())  # torch's load_state_dict errors span lines: the CLI prints one
        raise _problem(path, f"the head does not fit its saved tensors or parameters ({type(err).__name__}: "
                             f"{said[:400]}{'...' * (len(said) > 400)})") from err
    _compare(path, "head", _state_layout(state), layout)


def _check_detector(path: Path, meta: dict, layout: dict[str, Layout], feature_dim: int) -> None:
    """The detector's JSON (if any) and the `detector.` tensors it needs, exactly; none without one."""
    spec = meta.get("detector")
    if spec is None:
        expected = {}
    elif not isinstance(spec, dict):
        raise _problem(path, "the header's detector is not an object")
    else:
        try:
            expected = expected_layout(spec, feature_dim, len(meta["head"]["classes"]))
        except ValueError as err:
            raise _problem(path, str(err)) from None
    _compare(path, "detector", expected, layout)


def _head_parts(spec: dict) -> list[dict]:
    """The head's JSON and that of the heads it wraps (a prior-corrected head wraps another)."""
    parts = [spec]
    while isinstance(parts[-1].get("wrapped"), dict):
        parts.append(parts[-1]["wrapped"])
    return parts


def _state_layout(state: dict[str, torch.Tensor]) -> dict[str, Layout]:
    return {k: _layout(v) for k, v in state.items()}


def _compare(path: Path, part: str, expected: dict[str, Layout], saved: dict[str, Layout]) -> None:
    missing, unexpected = sorted(set(expected) - set(saved)), sorted(set(saved) - set(expected))
    if missing or unexpected:
        what = (f"lacks {len(missing)} tensor(s) the {part} needs (e.g. {part}.{missing[0]})" if missing else
                f"holds {len(unexpected)} tensor(s) the {part} does not have (e.g. {part}.{unexpected[0]})")
        raise _problem(path, f"the file {what}")
    wrong = [k for k in sorted(expected) if expected[k] != saved[k]]
    if wrong:
        k = wrong[0]
        raise _problem(path, f"{len(wrong)} {part} tensor(s) do not fit the header: {part}.{k} is "
                             f"{saved[k][0]} {list(saved[k][1])}, the {part} the header describes needs "
                             f"{expected[k][0]} {list(expected[k][1])}")


def _rebuild_backbone(spec: dict, state: dict[str, torch.Tensor], model_kwargs: dict,
                      device: str, runtime: str) -> Backbone:
    """The saved backbone: architecture from timm, weights from the file, preprocessing as saved; extracting
    on `runtime` where faithful."""
    model = timm.create_model(spec["arch"], pretrained=False, **model_kwargs)
    model.load_state_dict(state)
    info = WeightsInfo(spec["weights_kind"], spec["weights_identity"], spec["weights_source"], spec["arch"],
                       spec["has_classifier"])
    data_config = {k: tuple(v) if isinstance(v, list) else v for k, v in spec["data_config"].items()}
    backbone = Backbone(model, spec["name"], info, data_config, resolve_device(device),
                        settings_for(spec["arch"], runtime=runtime))
    choose_runtime(backbone)
    return backbone


def _strip(tensors: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def _jsonable(d: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
