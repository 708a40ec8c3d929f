"""A frozen timm backbone that owns its preprocessing: uint8 images in, pooled features out."""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict
from typing import Any

import numpy as np
import timm
import torch
from torch import nn
from tqdm.auto import tqdm

from vfe.backbones.engine import (
    OneThreadBits,
    Prefetcher,
    ThreadModeChoice,
    TracedFeatures,
    compute_threads,
    intra_op_threads,
    iter_uint8_batches,
)
from vfe.backbones.precision import (
    FAITHFUL_COSINE,
    autocast_for,
    check_photos,
    min_cosine,
    reduced_precision_for,
)
from vfe.backbones.preprocess import preprocess_uint8, resize_normalize, resolve_data_config, to_tensor_nchw
from vfe.backbones.registry import DEFAULT_BACKBONE, ExtractionSettings, check_overrides, settings_for
from vfe.backbones.runtimes import check_available, choose_runtime
from vfe.backbones.weights import WeightsInfo, load_model

FINGERPRINT_VERSION = 2


class _PooledFeatures(nn.Module):
    """timm model -> globally pooled features (the input of its classifier)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)


class Backbone(nn.Module):
    """A timm network, frozen and always in eval mode, with the preprocessing its weights expect.

    Two ways in:
      * `extract(images_uint8)` - the fast path for computing features of many images (layout,
        precision, batch size and tracing from `settings`, preprocessing overlapped with compute);
      * `forward(x01)` - float images in [0, 1], N x C x H x W at any size, resized and normalised
        inside the module in fp32 and differentiably, so attacks can work end to end in [0, 1].
    """

    def __init__(self, model: nn.Module, name: str, weights: WeightsInfo, data_config: dict[str, Any],
                 device: torch.device, settings: ExtractionSettings):
        super().__init__()
        self.name = name
        self.weights = weights
        self.data_config = dict(data_config)
        self.device = device
        self.settings = settings
        self.channels_last = settings.channels_last
        model = model.eval().requires_grad_(False).to(device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        # not registered as a submodule: it wraps self.model, whose parameters are registered once
        object.__setattr__(self, "_pooled", _PooledFeatures(model).eval())
        self.feature_dim = int(getattr(model, "head_hidden_size", None) or model.num_features)
        use_jit = settings.jit and device.type == "cpu"
        self._fast = TracedFeatures(self._pooled, settings.batch_size) if use_jit else self._pooled
        self._thread_mode = ThreadModeChoice()  # used when settings.prefetch is None (measured per extraction)
        self._bits = OneThreadBits()  # the features do not depend on the thread count the load gives
        super().train(False)
        self.precision, self.precision_check = self._choose_precision()
        self.runtime = "torch"  # what `extract` runs the network on (runtimes.choose_runtime may switch it)
        self.runtime_check: dict | None = None

    def __reduce__(self):
        """Pickled (Ray tasks receive the reference protocol's fine-tuned backbone) by the one shipping rule,
        vfe.backbones.shipping: the network's weights on the CPU, the precision and runtime named and built
        again where it lands (on the CPU), or one error naming what cannot be built there."""
        from vfe.backbones.shipping import rebuild, shippable

        return rebuild, (shippable(self),)

    def use_runtime(self, features: Callable[[torch.Tensor], torch.Tensor], check: dict) -> None:
        """Extract with `features` (normalised input -> pooled features) of another runtime, found faithful
        by `check` (runtimes.py). `forward` stays torch fp32: attacks need its gradients."""
        self._fast, self.runtime, self.precision, self.runtime_check = features, check["runtime"], \
            check["precision"], check
        self._bits = OneThreadBits()

    def _choose_precision(self) -> tuple[str, dict | None]:
        """settings.precision, or under 'auto' the device's reduced precision if real photos' features
        keep cosine >= FAITHFUL_COSINE to fp32 (eager, on the check photos), else fp32."""
        if self.settings.precision != "auto":
            return self.settings.precision, None
        candidate = reduced_precision_for(self.device) if self.settings.reduced_precision else None
        if candidate is None:
            return "fp32", None
        with torch.inference_mode():
            x = self.check_batch()
            reference = self._pooled(x)
            with autocast_for(self.device, candidate):
                reduced = self._pooled(x)  # eager; a trace is checked again on its own first batch
        cosine = min_cosine(reduced.float().cpu(), reference.cpu())
        check = {"candidate": candidate, "min_cosine": round(cosine, 6), "threshold": FAITHFUL_COSINE,
                 "photos": len(x)}
        return (candidate if cosine >= FAITHFUL_COSINE else "fp32"), check

    # -- identity ---------------------------------------------------------------------------------------

    @property
    def arch(self) -> str:
        return self.weights.arch

    @property
    def image_size(self) -> int:
        return int(self.data_config["input_size"][-1])

    @property
    def prefetch(self) -> bool:
        """Whether `extract` preprocesses in a background thread: the setting, else the last measured choice."""
        if self.device.type != "cpu" or self.settings.prefetch is not None:
            return self.settings.prefetch is not False
        return bool(self._thread_mode.prefetch)

    @property
    def threads(self) -> int:
        """Intra-op threads `extract` runs the network with (settings.threads, or one per free core)."""
        return compute_threads(self.settings.threads, self.prefetch and self.device.type == "cpu")

    @property
    def pooled(self) -> nn.Module:
        """The network as normalised input -> pooled features, eager (what every fast path is checked against)."""
        return self._pooled

    @property
    def has_classifier(self) -> bool:
        return self.weights.has_classifier

    def fingerprint(self) -> str:
        """Hash of everything that determines the features: architecture and its timm version, weights
        file, preprocessing, precision, and the runtime when not torch (so keys of torch features stay
        as they were). Batch size, layout and tracing are left out: they change the features only at
        float rounding level, and a cache should survive a faster setting."""
        spec = {"v": FINGERPRINT_VERSION, "arch": self.arch, "timm": timm.__version__,
                "weights": self.weights.identity, "data_config": _jsonable(self.data_config),
                "output": "pooled", "precision": self.precision}
        if self.runtime != "torch":
            spec["runtime"] = self.runtime
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:32]

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly summary for run settings and reports."""
        return {"name": self.name, "arch": self.arch, "weights": self.weights.source,
                "weights_kind": self.weights.kind, "feature_dim": self.feature_dim, "image_size": self.image_size,
                "data_config": _jsonable(self.data_config), "device": str(self.device),
                "precision": self.precision, "precision_check": self.precision_check, "runtime": self.runtime,
                "runtime_check": self.runtime_check, "threads": self.threads,
                "prefetch": self.prefetch,
                "settings": asdict(self.settings),
                "fingerprint": self.fingerprint()}

    def __repr__(self) -> str:
        c = self.data_config
        return (f"Backbone({self.name!r}, arch={self.arch!r}, weights={self.weights.source!r}, "
                f"input={c['input_size'][1]}x{c['input_size'][2]} {c['interpolation']}, dim={self.feature_dim}, "
                f"device={self.device}, precision={self.precision}, runtime={self.runtime})")

    # -- frozen -----------------------------------------------------------------------------------------

    def train(self, mode: bool = True) -> Backbone:
        """Stays in eval mode: the backbone is frozen (BatchNorm uses its running statistics)."""
        return super().train(False)

    # -- differentiable path ----------------------------------------------------------------------------

    def check_batch(self) -> torch.Tensor:
        """The check photos (vfe.backbones.precision.check_photos) as one batch of this network's input: what
        every faithfulness check (the precision, a runtime, a cut's storage and parts) feeds it."""
        return torch.cat([self.normalise(photo) for photo in check_photos()])

    def normalise(self, x01: torch.Tensor) -> torch.Tensor:
        """[0, 1] float images at any size -> the network's input (resized, cropped, normalised)."""
        x = resize_normalize(x01.to(self.device), self.data_config)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        """Pooled features of float images in [0, 1] (N x C x H x W, C in 1/3, any size). fp32, differentiable."""
        return self._pooled(self.normalise(x01))

    def classifier_logits(self, x01: torch.Tensor) -> torch.Tensor:
        """ImageNet logits from the weights' own classifier (only when the weights came with one)."""
        if not self.has_classifier:
            raise ValueError(f"backbone {self.name} ({self.weights.source}) has no trained classifier head")
        return self.model(self.normalise(x01))

    # -- fast path --------------------------------------------------------------------------------------

    def preprocess(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 N x H x W (x C) images -> normalised float N x 3 x S x S network input on the device."""
        return preprocess_uint8(images, self.data_config, self.device, self.channels_last)

    def extract(self, images: Any, batch_size: int | None = None, progress: bool = True,
                desc: str | None = None) -> np.ndarray:
        """Pooled features [N, feature_dim] float32 of uint8 images (array, ImageSet, or iterable of batches).
        With jit, only batches of `settings.batch_size` run traced: another `batch_size` runs eagerly."""
        batches, total = iter_uint8_batches(images, int(batch_size or self.settings.batch_size))
        outs = []
        with tqdm(total=total, unit="img", desc=desc or f"features {self.name}", disable=not progress,
                  dynamic_ncols=True, leave=False) as bar:
            for f in self._run(batches):
                outs.append(f)
                bar.update(len(f))
        return np.concatenate(outs) if outs else np.zeros((0, self.feature_dim), np.float32)

    def iter_features(self, images: Any, batch_size: int | None = None) -> Iterator[np.ndarray]:
        """Features batch by batch, in order: for consumers that stream them to disk (the feature cache)."""
        batches, _ = iter_uint8_batches(images, int(batch_size or self.settings.batch_size))
        return self._run(batches)

    @torch.inference_mode()
    def _run(self, batches: Iterator) -> Iterator[np.ndarray]:
        if self.device.type == "cpu" and self.settings.prefetch is None:
            yield from self._thread_mode.run(batches, self._run_mode)
        else:
            yield from self._run_mode(batches, self.prefetch)

    @torch.inference_mode()
    def _run_mode(self, batches: Iterator, prefetch: bool) -> Iterator[np.ndarray]:
        cuda = self.device.type == "cuda"
        prepare = _pin if cuda else self.preprocess  # on CUDA the resize runs on the GPU
        with intra_op_threads(compute_threads(self.settings.threads, prefetch and not cuda)):
            for x in Prefetcher(batches, prepare, enabled=prefetch):
                if cuda:
                    x = self.preprocess(x)
                # another runtime applies its precision itself, in its own compiled network
                with autocast_for(self.device, self.precision if self.runtime == "torch" else "fp32"):
                    f = self._bits(self._fast, x)
                yield f.float().cpu().numpy()


def _pin(batch: np.ndarray | torch.Tensor) -> torch.Tensor:
    return to_tensor_nchw(batch).permute(0, 2, 3, 1).contiguous().pin_memory()


def _jsonable(config: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """None or 'auto': CUDA when available, else CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} but CUDA is not available here; use device='cpu' or 'auto'")
    return device


def create_backbone(name: str = DEFAULT_BACKBONE, weights: str | os.PathLike = "default",
                    image_size: int | None = None, device: str | torch.device | None = "auto",
                    crop_pct: float | None = None, model_dir: str | os.PathLike | None = None,
                    **settings: Any) -> Backbone:
    """A frozen timm backbone with its weights and preprocessing.

    name: any timm model name (default efficientnet_lite0).
    weights: 'default' (packaged ImageNet weights where vfe knows a package, else timm's), 'timm',
        'none' (random, seeded) or the path of a .safetensors / torch state-dict file.
    image_size: input resolution (default: the model's data config).
    crop_pct: centre-crop fraction as in timm (default 1.0: the whole image is resized).
    model_dir: where networks exported for runtime='onnxruntime' / 'openvino' / 'auto' are kept (default:
        `_models` in the feature cache folder).
    settings: overrides of ExtractionSettings (batch_size, channels_last, jit, precision, reduced_precision,
        prefetch, threads, runtime);
        the defaults per architecture are in registry.SETTINGS, chosen by measurement.
    """
    check_overrides(settings)  # before the slow part
    if settings.get("runtime") not in (None, "torch", "auto"):
        check_available(settings["runtime"], resolve_device(device))  # a missing package before the slow part
    model, info = load_model(name, weights)
    data_config = resolve_data_config(model, image_size=image_size, crop_pct=crop_pct)
    backbone = Backbone(model, name, info, data_config, resolve_device(device), settings_for(info.arch, **settings))
    choose_runtime(backbone, model_dir)
    return backbone
