"""The out-of-distribution stage's settings (flags of `vfe run`)."""
from __future__ import annotations

from dataclasses import dataclass, field

from vfe.experiment.config import described


@dataclass
class OODSettings:
    """Out-of-distribution detection: another data set, and the test set under heavy noise."""

    ood: bool = field(default=True, **described("run the out-of-distribution stage"))
