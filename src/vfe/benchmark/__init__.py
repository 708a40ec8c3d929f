"""The main job (`vfe run`) and sweeps (`vfe sweep`): settings, shared set-up, one module per stage.

    config.py    typed settings (their fields are the CLI flags: flags.py)
    prepare.py   load -> subset -> backbone -> extract -> augment, shared by run and sweep
    run.py       the job: prepare, fit heads, clean metrics, the stages of stages.py, summary, report
    stages.py    the robustness stages, one registry entry each (corruption.py, adversarial.py, ood.py)
    sweep.py     grids of heads x hyperparameters x sizes x seeds on the prepared features

Importing this package is light; `run` and `sweep` import torch when they are called.
"""
