"""The corruption stage's settings (flags of `vfe run`) and their checks, made before any image is loaded."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from vfe.errors import SettingsError
from vfe.experiment.config import DEFAULT_CORRUPTION_PARAMS, check_corruption_params, described
from vfe.heads.registry import is_augmented, is_augmix


@dataclass
class CorruptionSettings:
    """The common-corruption stage: every corruption x severity of the test images."""

    corruptions: list[str] | None = field(default=None, **described(
        "corruption names (default: all 19); give none to skip the stage"))
    severities: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5], **described("severities, 1-5"))
    corruption_params: str = field(default=DEFAULT_CORRUPTION_PARAMS, **described(
        "severity parameters: 'auto' (by image size), 'imagenet' or 'cifar'"))
    noise_per_replicate: bool = field(default=False, **described(
        "redraw the corruption noise of the test set in every replicate (the corruption stage then costs one "
        "extraction per replicate); default: one draw shared by the replicates (docs/replicates.md says what "
        "that leaves out, measured by benchmarks/bench_noise_draw.py)"))
    test_time_bn: bool = field(default=False, **described(
        "also fit and evaluate heads on features whose backbone BatchNorm adapts to each batch (Schneider et al. "
        "2020), training, clean and corrupted test batches, as extra heads HEAD+bn"))
    bn_batch_size: int = field(default=64, **described("test-time BatchNorm: images per adapted batch (n)"))
    bn_prior: float = field(default=16.0, **described(
        "test-time BatchNorm: prior strength N in images; statistics = N/(N+n) source + n/(N+n) batch "
        "(0: the batch's own)"))
    bn_heads: list[str] | None = field(default=None, **described(
        "test-time BatchNorm: the heads given a +bn twin; none = every head fitted on the training features alone"))


def check_corruptions(corr: CorruptionSettings, heads: list[str]) -> None:
    """Known corruption names, severities 1-5, a known parameter table, and the test-time BatchNorm settings."""
    from vfe.robustness.corruptions.registry import REGISTRY  # imports scipy and OpenCV: not at `vfe --help`

    unknown = [c for c in corr.corruptions or [] if c not in REGISTRY]
    if unknown:
        raise SettingsError(f"--corruptions: unknown {', '.join(unknown)}; known: {', '.join(REGISTRY)}")
    bad = [s for s in corr.severities if s not in (1, 2, 3, 4, 5)]
    if bad or not corr.severities:
        raise SettingsError(f"--severities must be among 1 2 3 4 5, got {corr.severities}")
    check_corruption_params(corr.corruption_params)
    check_test_time_bn(corr, heads)


def check_test_time_bn(corr: CorruptionSettings, heads: list[str]) -> None:
    """The test-time BatchNorm settings: sizes in range, heads among the run's, the corruption stage on."""
    if corr.bn_heads is not None:
        unknown = [h for h in corr.bn_heads if h not in heads]
        if unknown or not corr.bn_heads:
            raise SettingsError(f"--bn-heads must name heads of the run ({', '.join(heads)}), got "
                                f"{' '.join(corr.bn_heads) or 'none'}; leave it out for every head")
        views = [h for h in corr.bn_heads if is_augmented(h) or is_augmix(h)]
        if views:
            raise SettingsError(f"--bn-heads: {', '.join(views)} train on corrupted or AugMix views of the training "
                                "images, which are not adapted; choose heads fitted on the training features alone")
    if not corr.test_time_bn:
        return
    if corr.corruptions == []:
        raise SettingsError("--test-time-bn evaluates heads on corrupted test images: it needs the corruption "
                            "stage (leave --corruptions out for all 19, or name some)")
    if corr.bn_batch_size < 1:
        raise SettingsError(f"--bn-batch-size must be at least 1, got {corr.bn_batch_size}")
    if not 0 <= corr.bn_prior < math.inf:
        raise SettingsError(f"--bn-prior must be a finite number >= 0 (0: the batch's own statistics), "
                            f"got {corr.bn_prior}")
