"""What the robustness stages share: each replicate's prepared data and the fitted heads (not the run's settings).

A stage receives its own typed settings and this context; it reads what earlier steps made and
returns its section of results.json. Models, clean metrics and probabilities are keyed (head, replicate);
`replicates[r]` is replicate r's draw (its training subset, its backbone: fine-tuned with its seed under the
reference protocol, its feature source). `cluster` and `backbone_settings` are here for `--engine ray`,
where a stage sends its work to the cluster's workers and they build the run's backbone themselves.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from vfe.data.types import ImageSet
from vfe.experiment.config import BackboneSettings, EngineSettings
from vfe.experiment.prepare import Prepared
from vfe.experiment.replicates import noise_seed
from vfe.experiment.timer import StageTimer
from vfe.robustness.detectors import mahalanobis_scorer, shrunk_precision


@dataclass
class RunContext:
    replicates: list[Prepared]  # replicate r's draw at index r
    heads: list[str]  # the compared heads, 'all' expanded
    models: dict  # {(head, replicate): fitted head}
    clean: dict  # {(head, replicate): clean test metrics}
    clean_probs: dict  # {(head, replicate): clean test probabilities}
    device: str
    data_seed: int  # the base seed: the fixed test subset and (unless noise_per_replicate) the corruption noise
    corruption_params: str  # which severity parameters every corrupted image uses
    progress: bool
    timer: StageTimer
    cluster: EngineSettings = field(default_factory=EngineSettings)  # local, or where the Ray workers are
    backbone_settings: BackboneSettings = field(default_factory=BackboneSettings)
    noise_per_replicate: bool = False  # corruption noise drawn with each replicate's seed, not the base seed
    # written by the corruption stage with --test-time-bn, for the attacks: {replicate: (its AdaptedFeatures,
    # {(head + "+bn", replicate): fitted head})}
    adapted: dict = field(default_factory=dict)
    _mahalanobis: dict = field(default_factory=dict, repr=False)  # {replicate: its fitted scorer}, see `mahalanobis`

    @property
    def test(self) -> ImageSet:
        """The test images, the same for every replicate."""
        return self.replicates[0].test

    def noise_seed(self, replicate: int) -> int:
        """The seed of replicate `replicate`'s corruption noise: the base seed (one draw for all), or its own."""
        return noise_seed(self.replicates[replicate].seed, self.data_seed, self.noise_per_replicate)

    def mahalanobis(self, replicate: int):
        """Replicate `replicate`'s Mahalanobis detector score (the covariance shrunk, on its training features; a
        pipeline's detector): fitted once (a Ledoit-Wolf fit of 10,000 x 1,280 features takes seconds), read by
        the selective-classification and OOD stages."""
        if replicate not in self._mahalanobis:
            p = self.replicates[replicate]
            self._mahalanobis[replicate] = mahalanobis_scorer(*shrunk_precision(p.X_train, p.train.labels))
        return self._mahalanobis[replicate]

    def models_of(self, replicate: int) -> dict:
        """{(head, replicate): fitted head} of one replicate."""
        return {key: m for key, m in self.models.items() if key[1] == replicate}
