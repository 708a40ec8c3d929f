"""Each robustness stage's report section, in the order the stages run: the report reads results.json alone, so it
imports these (report code only) and none of the stages' machinery. tests/experiment/test_stage_registry.py checks
that this list is `registry.STAGES`' sections."""
from __future__ import annotations

from vfe.experiment.stages.adversarial.section import adversarial_section
from vfe.experiment.stages.corruptions.section import corruption_section
from vfe.experiment.stages.ood.section import ood_section
from vfe.experiment.stages.selective.section import selective_section

SECTIONS = (corruption_section, selective_section, adversarial_section, ood_section)
