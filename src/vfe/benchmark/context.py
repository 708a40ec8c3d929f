"""What the robustness stages share: the prepared data and the fitted heads (not the run's settings).

A stage receives its own typed settings and this context; it reads what earlier steps made and
returns its section of results.json. `cluster` and `backbone_settings` are here for `--engine ray`, where a
stage sends its work to the cluster's workers and they build the run's backbone themselves.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from vfe.benchmark.config import BackboneSettings, EngineSettings
from vfe.benchmark.prepare import Prepared
from vfe.benchmark.timer import StageTimer


@dataclass
class RunContext:
    prepared: Prepared
    heads: list[str]  # the compared heads, 'all' expanded
    models: dict  # {(head, seed): fitted head}
    clean: dict  # {(head, seed): clean test metrics}
    clean_probs: dict  # {(head, seed): clean test probabilities}
    device: str
    data_seed: int  # seeds image subsets, corruption noise and attack starts
    corruption_params: str  # which severity parameters every corrupted image uses
    progress: bool
    timer: StageTimer
    cluster: EngineSettings = field(default_factory=EngineSettings)  # local, or where the Ray workers are
    backbone_settings: BackboneSettings = field(default_factory=BackboneSettings)
