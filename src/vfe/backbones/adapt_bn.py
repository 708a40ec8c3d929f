"""Test-time BatchNorm adaptation (Schneider et al. 2020, "Improving robustness against common corruptions
by covariate shift adaptation"): every BatchNorm layer normalises a test batch with statistics mixed from
that batch and its source (running) statistics,

    mean = N/(N+n) * running_mean + n/(N+n) * batch mean        (the variance likewise)

with n the number of images in the batch and N the prior strength, in images. N = 0 normalises with the
batch's own statistics (TENT's BatchNorm baseline); N -> inf gives back the frozen network. Corruptions
shift the first and second moments of a network's activations; re-estimating them on the corrupted batch
undoes much of that shift without labels and without changing a weight.

The batch variance is the biased one, what BatchNorm normalises with in training mode, so N = 0 is exactly
training-mode BatchNorm. (Schneider et al.'s code, bethgelab/robustness, mixes the unbiased estimate: larger
by m/(m-1) for m values per channel, 1.0003 for 64 images at 7 x 7.) The layers' buffers are swapped for the
mixed statistics during each forward pass and swapped back after it, so the weights and running statistics
are never written. Handled: every torch `_BatchNorm` that tracks running statistics (timm's BatchNormAct2d,
which EfficientNet-Lite uses, is one) and timm's / torchvision's frozen BatchNorm (FrozenBatchNorm2d,
FrozenBatchNormAct2d), which keep their statistics in the same buffers.

Which images share a batch decides their features, so the batching is fixed here, not by the extraction
settings: images come in blocks of at most BLOCK (the feature cache's shard size, so a cached shard's
features never depend on another shard), each block is shuffled with a fixed seed (a test set listed
class by class would otherwise give one-class batches, whose statistics carry the label) and cut into
ceil(size / B) batches of near-equal size, at most B each, so no batch is a small remainder.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

from vfe.backbones.backbone import Backbone
from vfe.backbones.engine import OneThreadBits, compute_threads, intra_op_threads, iter_uint8_batches
from vfe.backbones.precision import autocast_for
from vfe.errors import SettingsError

ADAPT_VERSION = 1  # part of the fingerprint: bump when the batching or the mixing rule changes
BLOCK = 4096  # = vfe.features.cache.DEFAULT_SHARD_SIZE (backbones cannot import features)
SHUFFLE_SEED = 0


def is_batchnorm(module: nn.Module) -> bool:
    """A layer that normalises with running_mean / running_var buffers (see the module docstring)."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return module.running_mean is not None and module.running_var is not None
    buffers = module._buffers
    return ("BatchNorm" in type(module).__name__ and isinstance(buffers.get("running_mean"), torch.Tensor)
            and isinstance(buffers.get("running_var"), torch.Tensor))


def batchnorm_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if is_batchnorm(m)]


def source_weight(prior: float, n: int) -> float:
    """N / (N + n): the share of the source statistics for a batch of n images (1 for N = inf)."""
    return 1.0 if math.isinf(prior) else prior / (prior + n)


@contextmanager
def adapted_batchnorm(model: nn.Module, prior: float) -> Iterator[list[nn.Module]]:
    """Inside the block, every BatchNorm layer of `model` normalises each input with the mixed statistics
    (prior strength `prior`); yields the layers. Outside it the model is as it was, buffers included."""
    layers = batchnorm_layers(model)
    sources = {m: (m.running_mean, m.running_var) for m in layers}

    def mix(module: nn.Module, args: tuple) -> tuple | None:
        x = args[0]
        mean, var = sources[module]
        w = source_weight(prior, len(x))
        batch_var, batch_mean = torch.var_mean(x.float(), dim=[d for d in range(x.ndim) if d != 1], correction=0)
        mixed_mean, mixed_var = w * mean + (1 - w) * batch_mean, w * var + (1 - w) * batch_var
        module.running_mean = mixed_mean.detach().to(mean.dtype)
        module.running_var = mixed_var.detach().to(var.dtype)
        if torch.is_grad_enabled() and x.requires_grad:
            return (_through_statistics(x, mixed_mean, mixed_var, module),)
        return None

    def restore(module: nn.Module, *_: Any) -> None:
        module.running_mean, module.running_var = sources[module]

    handles = [h for m in layers for h in (m.register_forward_pre_hook(mix), m.register_forward_hook(restore))]
    try:
        yield layers
    finally:
        for handle in handles:
            handle.remove()
        for m in layers:  # a forward pass that raised between the two hooks
            restore(m)


def _through_statistics(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """x rewritten so that the layer's normalisation, which takes its statistics as constants (torch's
    batch_norm is not differentiable in them), carries the gradient through them too: with m, v the mixed
    statistics and m', v' their detached copies, x' = (x - m) sqrt((v' + eps) / (v + eps)) + m' equals x, and
    (x' - m') / sqrt(v' + eps) = (x - m) / sqrt(v + eps), the adapted normalisation as a function of x.
    Attacks need this: a gradient with the batch statistics held constant is not the adapted network's."""
    eps = float(getattr(module, "eps", 1e-5))
    shape = [1, -1] + [1] * (x.ndim - 2)
    scale = ((var.detach() + eps) / (var + eps)).sqrt().view(shape)
    return ((x.float() - mean.view(shape)) * scale + mean.detach().view(shape)).to(x.dtype)


def batch_rows(n: int, batch_size: int) -> list[np.ndarray]:
    """The rows of a block of n images that form each batch: shuffled with a fixed seed, ceil(n / batch_size)
    batches of near-equal size (at most batch_size)."""
    order = np.random.default_rng(SHUFFLE_SEED).permutation(n)
    return np.array_split(order, -(-n // batch_size)) if n else []


class AdaptedFeatures:
    """Pooled features of `backbone` with test-time-adapted BatchNorm, as a feature-cache extractor.

    The whole network runs on the images (under the reference protocol too: BatchNorm below the cut adapts
    as well, so cached cut-point activations cannot be reused), eagerly (a frozen trace folds BatchNorm into
    the convolutions). The fingerprint names the adaptation, so adapted features never share a cache entry
    with plain ones, nor with another batch size or prior.
    """

    def __init__(self, backbone: Backbone, batch_size: int, prior: float):
        if batch_size < 1:
            raise SettingsError(f"test-time BatchNorm: batch size must be at least 1, got {batch_size}")
        if not prior >= 0:
            raise SettingsError(f"test-time BatchNorm: the prior strength N must be >= 0 (0: the batch's own "
                                f"statistics), got {prior}")
        n_layers = len(batchnorm_layers(backbone.model))
        if n_layers == 0:
            raise SettingsError(f"test-time BatchNorm: backbone {backbone.name} has no BatchNorm layer with running "
                                "statistics to adapt; use a BatchNorm network (EfficientNet, ResNet, DenseNet)")
        self.backbone = backbone
        self.batch_size = int(batch_size)
        self.prior = float(prior)
        self.n_layers = n_layers
        self.name = backbone.name
        self._bits = OneThreadBits()

    def describe(self) -> str:
        return f"adapted BatchNorm, batch size {self.batch_size}, prior {self.prior:g}"

    def fingerprint(self) -> str:
        return f"{self.backbone.fingerprint()}:{self.describe()}:v{ADAPT_VERSION}"

    def extract(self, images: Any) -> np.ndarray:
        """Adapted features [N, feature_dim] float32, in the order of `images` (any source `Backbone.extract` takes)."""
        out = list(self.iter_features(images))
        return np.concatenate(out) if out else np.zeros((0, self.backbone.feature_dim), np.float32)

    @torch.inference_mode()
    def iter_features(self, images: Any) -> Iterator[np.ndarray]:
        """Features block by block, in order (the feature cache streams them to its shards)."""
        bb = self.backbone
        blocks, _ = iter_uint8_batches(images, BLOCK)
        with intra_op_threads(compute_threads(bb.settings.threads, prefetch=False)):  # no prefetch thread here
            for block in blocks:
                features = np.empty((len(block), bb.feature_dim), np.float32)
                for rows in batch_rows(len(block), self.batch_size):
                    features[rows] = self._forward(bb.preprocess(block[rows]))
                yield features

    def _forward(self, x: torch.Tensor) -> np.ndarray:
        bb = self.backbone
        with autocast_for(bb.device, bb.precision):
            f = self._bits(self.adapted_forward, x)
        return f.float().cpu().numpy()

    def adapted_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features of one batch of network input, its BatchNorm adapted to that batch (no batching rule,
        no precision, no cache: `extract` and `AdaptedNetwork` add those)."""
        with adapted_batchnorm(self.backbone.model, self.prior):
            return self.backbone.model.forward_head(self.backbone.model.forward_features(x), pre_logits=True)


class AdaptedNetwork(nn.Module):
    """Float images in [0, 1] -> pooled features of `extractor`'s backbone with adapted BatchNorm, the images
    batched as `AdaptedFeatures` batches one block: differentiable, through the batch statistics too, so an
    attack can perturb the batch a "+bn" head is scored on. fp32, eager (as `Backbone.forward`)."""

    def __init__(self, extractor: AdaptedFeatures):
        super().__init__()
        self.extractor = extractor

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        if len(x01) > BLOCK:
            raise ValueError(f"AdaptedNetwork takes one block of at most {BLOCK} images, got {len(x01)}")
        bb, parts = self.extractor.backbone, []
        rows = batch_rows(len(x01), self.extractor.batch_size)
        for batch in rows:
            parts.append(self.extractor.adapted_forward(bb.normalise(x01[torch.from_numpy(batch).to(x01.device)])))
        inverse = torch.from_numpy(np.argsort(np.concatenate(rows))).to(x01.device)
        return torch.cat(parts)[inverse]
