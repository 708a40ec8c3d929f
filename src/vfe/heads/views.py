"""Training a classifier on several views of each training image, with AugMix's consistency term.

The views (features of K augmented copies of each training image, `X_aug` of shape n x K x d) are fixed:
they were extracted once and cached. Each step draws, per training row, two different views of its K and
trains on the triple (clean, view 1, view 2): cross-entropy on all three, plus `js_weight` times the
Jensen-Shannon divergence between their softmax outputs (AugMix: Hendrycks et al., ICLR 2020, lambda = 12).
The JS term pulls the predictions on an image's views towards one another, not just towards the label.
AugMix's reference puts the cross-entropy on the clean images only; here it covers the views too, so that
`js_weight=0` is exactly "train on clean + views" and the two heads differ by the JS term alone.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from vfe.heads.base import classification_loss
from vfe.training import History, TrainConfig, train


def jensen_shannon(*logits: torch.Tensor) -> torch.Tensor:
    """JS(p_1, ..., p_m) = mean_i KL(p_i || M), M the mean of the softmax outputs, averaged over the batch.

    As in AugMix's reference: the mixture is clamped to [1e-7, 1] before its log.
    """
    probs = [torch.softmax(x, 1) for x in logits]
    log_mixture = torch.stack(probs).mean(0).clamp(1e-7, 1).log()
    return sum(nn.functional.kl_div(log_mixture, p, reduction="batchmean") for p in probs) / len(probs)


def views_loss(js_weight: float):
    """A training-loop loss: (clean, views, labels) batches train; (clean, labels) batches (held out) evaluate."""
    def loss_fn(module: nn.Module, batch):
        if len(batch) == 2:
            return classification_loss(module, batch)
        x, views, y = batch
        n, k = views.shape[:2]
        first = torch.randint(k, (n,), device=x.device)
        second = (first + torch.randint(1, k, (n,), device=x.device)) % k if k > 1 else first
        rows = torch.arange(n, device=x.device)
        logits = module(torch.cat([x, views[rows, first], views[rows, second]]))
        js = jensen_shannon(*logits.split(n))
        loss = nn.functional.cross_entropy(logits, y.repeat(3)) + js_weight * js
        return loss, {"acc": float((logits[:n].detach().argmax(1) == y).float().mean()), "js": float(js.detach())}
    return loss_fn


def fit_on_views(module: nn.Module, X: np.ndarray, views: np.ndarray, y: np.ndarray, val, config: TrainConfig,
                 js_weight: float, parameters=None) -> History:
    """Train a logits module on clean rows X (n x d) and their views (n x K x d); `val` (X, y) stays clean."""
    if not js_weight >= 0:
        raise ValueError(f"js_weight must be >= 0, got {js_weight}")
    tensors = (torch.from_numpy(X), torch.from_numpy(np.ascontiguousarray(views)), torch.from_numpy(y))
    val_tensors = None if val is None else (torch.from_numpy(val[0]), torch.from_numpy(val[1]))
    with torch.random.fork_rng():
        torch.manual_seed(config.seed)
        return train(module, views_loss(js_weight), tensors, val_tensors, config, parameters=parameters)
