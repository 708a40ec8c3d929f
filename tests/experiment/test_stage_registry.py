"""The stage registry: every stage once, its report section listed in the same order for the report (which imports
no stage machinery), its settings a field of RunSettings, and each stage's functions given the settings it names."""
from __future__ import annotations

from dataclasses import fields

from vfe.experiment.run_settings import RunSettings
from vfe.experiment.stages.registry import STAGES
from vfe.experiment.stages.sections import SECTIONS


def test_sections_are_the_stages_sections_in_the_same_order():
    assert SECTIONS == tuple(stage.section for stage in STAGES)
    assert len({stage.name for stage in STAGES}) == len(STAGES)


def test_every_stage_reads_settings_that_run_settings_holds():
    names = {f.name for f in fields(RunSettings)}
    for stage in STAGES:
        assert set(stage.settings) <= names, stage.name
        own = stage.settings_of(RunSettings())
        assert isinstance(stage.enabled(*own), bool) and stage.label(*own)


def test_the_default_run_enables_every_stage_and_the_checks_pass():
    settings = RunSettings()
    assert [stage.name for stage in STAGES if stage.enabled(*stage.settings_of(settings))] == \
        ["corruptions", "selective", "adversarial", "ood"]
    for stage in STAGES:
        if stage.check is not None:
            stage.check(*stage.settings_of(settings), ["linear", "vfe"])
