"""Every robustness stage of `vfe run`, in the order they run (their report sections: stages.sections, the same
order)."""
from __future__ import annotations

from vfe.experiment.stages.adversarial.stage import STAGE as ADVERSARIAL
from vfe.experiment.stages.corruptions.stage import STAGE as CORRUPTIONS
from vfe.experiment.stages.ood.stage import STAGE as OOD
from vfe.experiment.stages.selective.stage import STAGE as SELECTIVE

STAGES = (CORRUPTIONS, SELECTIVE, ADVERSARIAL, OOD)
