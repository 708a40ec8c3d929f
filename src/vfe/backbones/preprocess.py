"""The backbone's own input preprocessing, done on batches in torch.

timm's eval transform (`resolve_data_config` + `create_transform`) works one PIL image at a time:
resize the shorter side to floor(size / crop_pct), centre-crop to size, scale to [0, 1],
normalise with the model's mean/std. The same steps run here on whole batches of tensors, in
float and differentiably, so that feature extraction is fast and an attack can take gradients
through the resize. Bicubic and bilinear use torch's antialiased kernels, which follow PIL's
(a = -0.5 for bicubic); values are clamped to [0, 1] after resizing, as PIL's uint8 result is.
On photos the result is within 0.02 (normalised units) of timm's PIL transform; PIL alone rounds
and clips to uint8 between its horizontal and vertical passes, which shows on white noise.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

# vfe resizes the whole image (crop_pct = 1.0) unless told otherwise: the data sets vfe works on
# (Fashion-MNIST, CIFAR) are small, tightly framed images, and the reference pipeline resized
# them whole (32 -> 224); timm's 0.875 centre crop would cut 1.75 px off each side of a 28 px item.
DEFAULT_CROP_PCT = 1.0

# timm/PIL interpolation name -> F.interpolate mode (PIL's NEAREST is torch's 'nearest-exact')
_MODES = {"bicubic": "bicubic", "bilinear": "bilinear", "nearest": "nearest-exact"}


def resolve_data_config(model: torch.nn.Module, image_size: int | None = None,
                        crop_pct: float | None = None) -> dict[str, Any]:
    """timm's data config for `model`, with the input size and crop overridden.

    Returns a plain dict: input_size (3, H, W), mean, std (tuples), interpolation, crop_pct, crop_mode.
    """
    import timm.data

    cfg = timm.data.resolve_data_config({}, model=model)
    out = {"input_size": tuple(int(v) for v in cfg["input_size"]),
           "mean": tuple(float(v) for v in cfg["mean"]), "std": tuple(float(v) for v in cfg["std"]),
           "interpolation": str(cfg["interpolation"]),
           "crop_pct": float(DEFAULT_CROP_PCT if crop_pct is None else crop_pct),
           "crop_mode": str(cfg.get("crop_mode", "center"))}
    if image_size is not None:
        if int(image_size) < 8:
            raise ValueError(f"image_size must be at least 8 pixels, got {image_size}")
        out["input_size"] = (out["input_size"][0], int(image_size), int(image_size))
    if not 0 < out["crop_pct"] <= 1:
        raise ValueError(f"crop_pct must be in (0, 1], got {out['crop_pct']}")
    if out["interpolation"] not in _MODES:
        raise ValueError(f"unsupported interpolation {out['interpolation']!r} in the data config; "
                         f"one of {sorted(_MODES)} is needed")
    if out["crop_mode"] != "center":
        raise ValueError(f"crop_mode {out['crop_mode']!r} is not supported (only 'center')")
    return out


def to_tensor_nchw(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 images N x H x W (x C, C in 1/3/4) as a uint8 tensor N x C x H x W (no copy when possible).

    Alpha channels are dropped. A single image (H x W x C) is not accepted: its shape is ambiguous.
    """
    if isinstance(images, np.ndarray):
        # torch cannot wrap read-only memory (memory maps, np.load(mmap_mode="r")) without a warning: copy it
        images = np.ascontiguousarray(images) if images.flags.writeable else images.copy()
    t = torch.from_numpy(images) if isinstance(images, np.ndarray) else images
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"images must be a numpy array or torch tensor, got {type(images).__name__}")
    if t.dtype != torch.uint8:
        raise TypeError(f"images must be uint8 (0-255), got {t.dtype}; float images in [0, 1] go to "
                        "Backbone.forward instead")
    if t.ndim == 3:
        t = t.unsqueeze(-1)
    if t.ndim != 4 or t.shape[-1] not in (1, 3, 4):
        raise ValueError(f"images must be N x H x W x C with C in (1, 3, 4), got shape {tuple(t.shape)}")
    return t[..., :3].permute(0, 3, 1, 2)


def resize_normalize(x01: torch.Tensor, cfg: dict[str, Any]) -> torch.Tensor:
    """Float images in [0, 1], N x C x H x W (C = 1 or 3, any H, W) -> the model's normalised input.

    Differentiable. Grayscale is replicated to 3 channels after resizing (same result, a third of the work).
    """
    if x01.ndim != 4 or x01.shape[1] not in (1, 3):
        raise ValueError(f"expected N x C x H x W float images with C in (1, 3), got shape {tuple(x01.shape)}")
    if not x01.is_floating_point():
        raise TypeError(f"expected float images in [0, 1], got {x01.dtype}")
    _, th, tw = cfg["input_size"]
    h, w = x01.shape[-2:]
    crop = cfg["crop_pct"]
    sh, sw = math.floor(th / crop), math.floor(tw / crop)
    if sh == sw:
        # torchvision Resize(int): the shorter side becomes `sh`, the longer keeps the aspect (truncated)
        if h <= w:
            rh, rw = sh, int(sh * w / h)
        else:
            rh, rw = int(sh * h / w), sh
    else:  # non-square target: scale to cover it, keeping the aspect
        scale = max(sh / h, sw / w)
        rh, rw = max(sh, round(h * scale)), max(sw, round(w * scale))
    x = x01
    if (rh, rw) != (h, w):
        mode = _MODES[cfg["interpolation"]]
        kwargs = {"align_corners": False, "antialias": True} if mode in ("bicubic", "bilinear") else {}
        x = F.interpolate(x, size=(rh, rw), mode=mode, **kwargs)
        if mode == "bicubic":
            x = x.clamp(0.0, 1.0)
    if (rh, rw) != (th, tw):  # torchvision CenterCrop offsets
        top, left = round((rh - th) / 2.0), round((rw - tw) / 2.0)
        x = x[..., top:top + th, left:left + tw]
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    mean = torch.tensor(cfg["mean"], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def preprocess_uint8(images: np.ndarray | torch.Tensor, cfg: dict[str, Any],
                     device: torch.device | str | None = None, channels_last: bool = False) -> torch.Tensor:
    """uint8 N x H x W x C images -> normalised float N x 3 x H' x W' model input (the extraction path)."""
    t = to_tensor_nchw(images)
    if device is not None:
        t = t.to(device, non_blocking=True)
    x = resize_normalize(t.float().div_(255.0), cfg)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x
