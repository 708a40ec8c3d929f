"""The robustness stages of `vfe run`, in the order they run: one entry each.

A stage is a function `run_stage(settings, ctx) -> dict` in its own module: it gets its own typed
settings (an attribute of RunSettings) and the RunContext, and returns the keys it adds to
results.json. `enabled` reads the settings (e.g. `--n-attack 0` skips the attacks). Adding a stage:
write the module, add its settings dataclass to RunSettings (its fields become flags) and add one
entry here (see docs/extending.md).
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class StageSpec:
    name: str
    settings: str  # the RunSettings attribute holding this stage's settings
    target: str  # "module:function", imported when the stage runs
    enabled: Callable[[object], bool]
    label: Callable[[object], str]  # the timer's name for it (results.json "timings")

    def function(self) -> Callable:
        module, _, name = self.target.partition(":")
        return getattr(importlib.import_module(module), name)


def _n_corruptions(settings) -> int:
    from vfe.benchmark.corruption import corruption_names

    return len(corruption_names(settings))


STAGES: tuple[StageSpec, ...] = (
    StageSpec("corruptions", "corruptions", "vfe.benchmark.corruption:run_stage",
              enabled=lambda s: s.corruptions != [],
              label=lambda s: f"corruptions ({_n_corruptions(s)} x {len(s.severities)} severities)"),
    StageSpec("selective", "corruptions", "vfe.benchmark.selective:run_stage",  # reads the corruptions' cache
              enabled=lambda s: s.corruptions != [] and s.selective and bool(s.selective_heads),
              label=lambda s: "selective classification"),
    StageSpec("adversarial", "attacks", "vfe.benchmark.adversarial:run_stage",
              enabled=lambda s: s.n_attack > 0, label=lambda s: f"adversarial attacks ({s.n_attack} images)"),
    StageSpec("ood", "ood", "vfe.benchmark.ood:run_stage",
              enabled=lambda s: s.ood, label=lambda s: "out-of-distribution detection"),
)
