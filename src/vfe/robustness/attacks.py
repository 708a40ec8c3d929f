"""White-box attacks end to end, through backbone and head, on images in [0, 1] (torchattacks).

torchattacks calls `model(x)` and applies `nn.CrossEntropyLoss` to the output, i.e. it expects
logits. A head gives class probabilities, so the attacked model returns their logarithm:
log_softmax(log p) = log p, so the cross-entropy is exactly -log p(true class).

A head that samples (the VFE draws z) is attacked twice:
  * plainly, through the path the user runs (one draw per forward pass for predict_mode="sample");
    its gradient is that of one random draw, which can hide the true direction (gradient masking);
  * with expectation over transformation (EOT, Athalye et al. 2018): the loss is the cross-entropy
    of the mean prediction over `n_eot` draws, -log mean_i p_i(y | x). AutoAttack's randomised
    version uses 20 draws (torchattacks.EOTPGD only 2).
Only the head is random; the backbone is deterministic. So the EOT model computes the backbone
features once per step and draws the head `n_eot` times on them: the same objective and gradient
as running the whole network `n_eot` times (the chain rule goes through the one shared feature
tensor), at about 1/n_eot of the cost. (torchattacks.EOTPGD would re-run the backbone each draw.)

A head that adapts at test time (registry `adapts`, e.g. T3A, or a "+bn" head on a backbone whose BatchNorm
adapts to the batch) is also attacked through its non-adapting path (`base_probability_module()`, the plain
backbone): by transfer (`LogProbabilities` on it) and by BPDA (`StraightThroughLogProbabilities`); the attack
stage (`vfe.experiment.stages.adversarial.stage`) reports the worst case.
"""
from __future__ import annotations

import numpy as np
import torch
import torchattacks
from torch import nn

from vfe.robustness.attack_spec import AttackSpec, attack_specs

__all__ = ["AttackSpec", "LogProbabilities", "StraightThroughLogProbabilities", "attack_specs", "make_attack",
           "perturb", "samples_randomly", "to_unit_float"]

# PGD step size as a multiple of eps / steps (Madry et al. use 2.5: the walk can cross the ball)
STEP_SIZE_FACTOR = 2.5
# floor under probabilities before the log; -log(1e-30) = 69 nats is beyond any real loss value
_LOG_FLOOR = 1e-30


class _ContiguousGradient(torch.autograd.Function):
    """Identity whose gradient comes back in contiguous NCHW memory.

    The backbone runs channels-last, so the gradient w.r.t. a colour input arrives channels-last, and
    torchattacks' L2 attacks flatten it with `.view`, which fails on that layout.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous()


class LogProbabilities(nn.Module):
    """images in [0, 1] -> log class probabilities of `head` (a head's `probability_module()`) on
    the backbone's features. `n_samples` asks a sampling head for the mean over that many draws."""

    def __init__(self, backbone: nn.Module, head: nn.Module, n_samples: int | None = None):
        super().__init__()
        self.backbone, self.head, self.n_samples = backbone, head, n_samples

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        features = self.backbone(_ContiguousGradient.apply(x01))
        return self.head(features, n_samples=self.n_samples).clamp_min(_LOG_FLOOR).log()


class StraightThroughLogProbabilities(nn.Module):
    """BPDA (Athalye et al. 2018) for a head that adapts at test time: images in [0, 1] -> the log
    probabilities of `adaptive` (what the head really runs, adapting over the rows of each call) in the
    forward pass, with the gradient of those of `base` (its non-adapting path):
    log p_base + (log p_adaptive - log p_base).detach().

    Straight-through on log probabilities, not on probabilities. torchattacks' cross-entropy on this
    output has gradient p_adaptive - onehot(y); through log p_base = logits - logsumexp(logits) that is
    exactly p_adaptive - onehot(y) with respect to the base's logits (the weights sum to 0, so the
    logsumexp drops out): the loss's gradient at the adapting head's real prediction, carried back as if
    its logits moved with the base's. On probabilities each class's upstream gradient is divided by
    p_adaptive, which leaves -(p_base(y) / p_adaptive(y)) * grad log p_base(y): the base's own gradient
    times a per-image scalar that sign (L-inf) and normalised (L2) PGD steps ignore, i.e. the transfer
    attack again. The adapting path runs without a graph: its value is all that is used.

    `adaptive_backbone`: where the adaptation is in the backbone (a "+bn" head: BatchNorm adapted to the batch),
    the network the forward pass runs instead of `backbone`, whose gradient is taken.
    """

    def __init__(self, backbone: nn.Module, adaptive: nn.Module, base: nn.Module, n_samples: int | None = None,
                 adaptive_backbone: nn.Module | None = None):
        super().__init__()
        self.backbone, self.adaptive, self.base, self.n_samples = backbone, adaptive, base, n_samples
        self.adaptive_backbone = adaptive_backbone

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        features = self.backbone(_ContiguousGradient.apply(x01))
        through = self.base(features, n_samples=self.n_samples).clamp_min(_LOG_FLOOR).log()
        with torch.no_grad():
            if self.adaptive_backbone is not None:
                features = self.adaptive_backbone(x01)
            real = self.adaptive(features, n_samples=self.n_samples).clamp_min(_LOG_FLOOR).log()
        return through + (real - through).detach()


@torch.no_grad()
def samples_randomly(head: nn.Module, features: torch.Tensor) -> bool:
    """Whether a head's probability module gives different outputs for the same features (it samples)."""
    head.eval()
    return not torch.equal(head(features), head(features))


def make_attack(spec: AttackSpec, model: nn.Module, steps: int) -> torchattacks.Attack:
    """The torchattacks object for a spec: PGD with random start and step 2.5 * eps / steps."""
    if spec.method == "fgsm" and spec.norm == "linf":
        return torchattacks.FGSM(model, eps=spec.eps)
    alpha = STEP_SIZE_FACTOR * spec.eps / steps
    if spec.method == "pgd" and spec.norm == "linf":
        return torchattacks.PGD(model, eps=spec.eps, alpha=alpha, steps=steps, random_start=True)
    if spec.method == "pgd" and spec.norm == "l2":
        return torchattacks.PGDL2(model, eps=spec.eps, alpha=alpha, steps=steps, random_start=True)
    raise ValueError(f"no attack for method={spec.method!r}, norm={spec.norm!r}")


def perturb(attack: torchattacks.Attack, images: torch.Tensor, labels: torch.Tensor,
            batch_size: int = 100) -> torch.Tensor:
    """Adversarial versions of `images` (float [0, 1], N x C x H x W), computed in batches.

    Each batch goes in contiguous: torchattacks' L2 attacks flatten with `.view`, which fails on a
    permuted (channels-last) colour tensor.
    """
    starts = range(0, len(images), batch_size)
    out = [attack(images[i:i + batch_size].contiguous(), labels[i:i + batch_size]) for i in starts]
    return torch.cat(out) if out else images.clone()


def to_unit_float(images_uint8_nhwc: np.ndarray) -> torch.Tensor:
    """uint8 N x H x W x C images -> float N x C x H x W in [0, 1], the attacks' input space."""
    images = torch.from_numpy(np.ascontiguousarray(images_uint8_nhwc)).permute(0, 3, 1, 2)
    return images.float().div(255).contiguous()  # NCHW memory: colour images permuted are not
