"""The main job (`vfe run`) and sweeps (`vfe sweep`): settings, shared set-up, the robustness stages.

    config.py         the general typed settings (their fields are the CLI flags: flags.py)
    run_settings.py   RunSettings: those and each stage's own settings; the checks before any work
    prepare.py        load -> subset -> backbone -> extract -> augment, shared by run and sweep
    run.py            the job: prepare, fit heads, clean metrics, every stage, summary, leaderboard, report
    stages/           the robustness stages, one folder each (settings, run, report section): corruptions,
                      selective, adversarial, ood; registry.py lists them
    sweep.py          grids of heads x hyperparameters x sizes x seeds on the prepared features

Importing this package is light; `run` and `sweep` import torch when they are called.
"""
