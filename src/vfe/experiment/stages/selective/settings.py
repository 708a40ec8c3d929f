"""The selective-classification stage's settings (flags of `vfe run`) and their check."""
from __future__ import annotations

from dataclasses import dataclass, field

from vfe.errors import SettingsError
from vfe.experiment.config import described
from vfe.heads.registry import head_names


@dataclass
class SelectiveSettings:
    """Selective classification under corruption; it reads the corruption stage's corrupted test sets."""

    selective: bool = field(default=True, **described(
        "selective classification under corruption: risk at 80 and 90 percent coverage and the area under the "
        "risk-coverage curve per detector (max softmax, Mahalanobis, the VFE's reconstruction error and ELBO), "
        "clean and per corruption family (docs/abstention.md)"))
    selective_heads: list[str] = field(default_factory=lambda: ["linear", "vfe"], **described(
        "the classifier heads the selective-classification stage measures (those the run fits)"))


def check_selective(corr: SelectiveSettings) -> None:
    """--selective-heads names heads vfe knows (those the run does not fit are left out of the stage)."""
    unknown = [h for h in corr.selective_heads if h not in head_names()]
    if unknown:
        raise SettingsError(f"--selective-heads: {', '.join(unknown)} is not a head; `vfe heads` lists them")
