"""The attack stage's settings (flags of `vfe run`) and their check."""
from __future__ import annotations

from dataclasses import dataclass, field

from vfe.errors import SettingsError
from vfe.experiment.config import described


@dataclass
class AttackSettings:
    """White-box attacks end to end through the backbone, with EOT for heads that sample."""

    n_attack: int = field(default=100, **described("images attacked (0 skips the stage)"))
    attack_eps_linf: list[float] = field(default_factory=lambda: [1 / 255, 2 / 255, 4 / 255, 8 / 255],
                                         **described("L-inf budgets on [0, 1] pixels"))
    attack_eps_l2: list[float] = field(default_factory=lambda: [0.25, 0.5, 1.0], **described("L2 budgets"))
    attack_steps: int = field(default=10, **described("PGD steps"))
    n_eot: int = field(default=20, **described("samples per EOT gradient (AutoAttack's rand version uses 20)"))


def check_attacks(att: AttackSettings) -> None:
    """Counts and budgets in range."""
    if att.n_attack < 0 or att.attack_steps < 1 or att.n_eot < 1:
        raise SettingsError(f"--n-attack must be >= 0, --attack-steps and --n-eot >= 1; got {att.n_attack}, "
                            f"{att.attack_steps}, {att.n_eot}")
    if any(e <= 0 for e in [*att.attack_eps_linf, *att.attack_eps_l2]):
        raise SettingsError("--attack-eps-linf and --attack-eps-l2 must be positive")
