"""An attack setting and its name in results ("pgd_linf_8/255_eot"), both ways.

Torch-free so that the report can read result keys back into the very spec that wrote them.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

NORM_LABELS = {"linf": "L∞", "l2": "L2", "l1": "L1"}
# an L∞ budget this close (in pixel levels) to a whole level k is k/255: what "0.031372549" means
_LEVEL_TOLERANCE = 1e-6
_KEY = re.compile(r"^(?P<method>[a-z0-9-]+)_(?P<norm>linf|l\d+)_(?P<eps>[^_]+)(?P<eot>_eot)?$")


@dataclass(frozen=True)
class AttackSpec:
    """One attack setting; `key` is its name in results and `AttackSpec.parse(key)` gives it back."""

    method: str  # "fgsm" | "pgd"
    norm: str  # "linf" | "l2"
    eps: float
    eot: bool = False

    def __post_init__(self) -> None:
        if not math.isfinite(self.eps):
            raise ValueError(f"attack budget must be finite, got {self.eps!r}")
        # snap near-whole pixel levels so the key "k/255" names exactly the budget that is attacked
        levels = self.eps * 255
        if self.norm == "linf" and abs(levels - round(levels)) < _LEVEL_TOLERANCE:
            object.__setattr__(self, "eps", round(levels) / 255)

    @property
    def eps_text(self) -> str:
        """L∞ budgets on the pixel grid as "k/255", anything else as the shortest exact decimal."""
        if self.norm == "linf" and round(self.eps * 255) / 255 == self.eps:
            return f"{round(self.eps * 255)}/255"
        short = f"{self.eps:g}"
        return short if float(short) == self.eps else repr(float(self.eps))

    @property
    def key(self) -> str:
        """Stable result name: "fgsm_linf_2/255", "pgd_linf_8/255_eot", "pgd_l2_0.5"."""
        return f"{self.method}_{self.norm}_{self.eps_text}" + ("_eot" if self.eot else "")

    @property
    def label(self) -> str:
        """Human name, e.g. "PGD L∞ ε=8/255, EOT"."""
        eot = ", EOT" if self.eot else ""
        return f"{self.method.upper()} {NORM_LABELS.get(self.norm, self.norm)} ε={self.eps_text}{eot}"

    @classmethod
    def parse(cls, key: str) -> AttackSpec:
        """The spec whose `key` is `key`; ValueError for any other string (e.g. "clean")."""
        m = _KEY.match(key)
        if m is None:
            raise ValueError(f"not an attack key (<method>_<norm>_<eps>[_eot]): {key!r}")
        text = m["eps"]
        try:
            eps = int(text.removesuffix("/255")) / 255 if text.endswith("/255") else float(text)
        except ValueError:
            raise ValueError(f"attack key {key!r}: budget {text!r} is not a number") from None
        spec = cls(m["method"], m["norm"], eps, m["eot"] is not None)
        if spec.key != key:
            raise ValueError(f"attack key {key!r} is not in canonical form (expected {spec.key!r})")
        return spec


def attack_specs(eps_linf: list[float], eps_l2: list[float], eot: bool) -> list[AttackSpec]:
    """FGSM and PGD at every L∞ budget, PGD at every L2 budget; each PGD also with EOT when `eot`."""
    specs = [AttackSpec("fgsm", "linf", e) for e in sorted(eps_linf)]
    for norm, budgets in (("linf", eps_linf), ("l2", eps_l2)):
        for flag in ((False, True) if eot else (False,)):
            specs += [AttackSpec("pgd", norm, e, flag) for e in sorted(budgets)]
    return specs
