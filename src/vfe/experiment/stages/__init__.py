"""The robustness stages of `vfe run`: each one a folder holding all of it.

    stages/<name>/settings.py   its settings (a dataclass: its fields are `vfe run` flags) and their checks
    stages/<name>/stage.py      its run, `run_stage(*settings, ctx) -> dict` of results.json keys, the metrics
                                it aggregates, and its `STAGE`
    stages/<name>/section.py    its section of the report, read from results.json alone

A `Stage` names the RunSettings attributes its functions take, in order (the selective-classification stage also
reads the corruption stage's settings: it scores the corrupted test sets that stage cached). `registry.STAGES`
lists them in the order they run, `sections.SECTIONS` their report sections (the report reads results.json
alone and imports no stage machinery). Adding a stage: a folder like these, its `STAGE` and its section in those
two lists, and its settings as a field of RunSettings (vfe.experiment.run_settings); docs/extending.md walks
through one.

The packages' `__init__` modules import nothing: the settings modules are read by `vfe --help`.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    """One robustness stage of `vfe run`: what it reads, whether it runs, how it runs and how it is reported."""

    name: str
    settings: tuple[str, ...]  # the RunSettings attributes handed to every function below, in this order
    run: Callable[..., dict]  # run(*settings, ctx: RunContext) -> the keys it adds to results.json
    section: Callable  # section(ctx: vfe.report.sections.Context) -> vfe.report.document.Section
    enabled: Callable[..., bool]  # enabled(*settings): e.g. `--n-attack 0` skips the attacks
    label: Callable[..., str]  # label(*settings): the timer's name for it (results.json "timings")
    check: Callable[..., None] | None = None  # check(*settings, heads): a SettingsError before any work
    # ahead(*settings, ahead: vfe.experiment.background.Ahead) -> the cache entries it will read that the run may
    # compute in the background, on idle cores, while earlier steps run (vfe.experiment.background)
    ahead: Callable[..., list] | None = None

    def settings_of(self, run_settings) -> tuple:
        """This stage's settings out of a RunSettings."""
        return tuple(getattr(run_settings, name) for name in self.settings)
