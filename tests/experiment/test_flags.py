"""`vfe run` / `vfe sweep` flags are generated from the settings dataclasses; bad settings are refused
before any work, with the valid choices named."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import threading
import time

import pytest

from vfe.cli import build_parser, main
from vfe.errors import SettingsError
from vfe.experiment import config as cfg
from vfe.experiment.config import SweepSettings, flat_dict, with_overrides
from vfe.experiment.flags import ArgumentParser, add_flags, apply_flags
from vfe.experiment.run_settings import RunSettings, check, quick_settings


def parse(settings, argv: list[str]):
    parser = ArgumentParser(prog="test")
    add_flags(parser, settings)
    return apply_flags(settings, parser.parse_args(argv))


# a value of the right type for every field, different from its default
NEW_VALUES = {
    "name": "other", "runs_dir": "elsewhere", "cache_dir": "/tmp/c", "progress": False,
    "dataset": "digits", "data_dir": "/data", "n_train": 123, "n_test": 45, "data_seed": 7, "skip_bad": True,
    "backbone": "resnet18", "weights": "none", "image_size": 64, "device": "cpu", "runtime": "torch",
    "heads": ["pca", "vib"], "replicates": 4, "augment_family": "blur", "augmix_views": 3,
    "corruptions": ["snow", "fog"], "severities": [2, 4], "corruption_params": "cifar", "noise_per_replicate": True,
    "n_attack": 9, "attack_eps_linf": [0.5], "attack_eps_l2": [2.0], "attack_steps": 3, "n_eot": 4,
    "ood": False, "compare_with": "runs/frozen", "save_best": True, "best_detector": "msp", "best_coverage": 0.8,
    "protocol": "reference", "cut_point": "blocks.4.0",
    "finetune_epochs": 7, "finetune_batch_size": 50, "finetune_lr": 0.01, "finetune_augment": True,
    "finetune_lp_epochs": 2, "finetune_augmix": True, "finetune_js_weight": 6.0,
    "test_time_bn": True, "bn_batch_size": 32, "bn_prior": 4.0, "bn_heads": ["linear"],
    "selective": False, "selective_heads": ["vfe"],
    "engine": "ray", "address": "ray://head:10001", "ray_shared_cache": "no",
}


def argv_for(name: str, value) -> list[str]:
    flag = "--" + name.replace("_", "-")
    if isinstance(value, bool):
        return [flag if value else "--no-" + name.replace("_", "-")]
    if isinstance(value, list):
        return [flag, *map(str, value)]
    return [flag, str(value)]


def test_every_run_setting_is_a_flag():
    defaults = flat_dict(RunSettings())
    assert set(defaults) - {"head_params"} == set(NEW_VALUES)  # a new field needs a value here
    for name, value in NEW_VALUES.items():
        assert flat_dict(parse(RunSettings(), argv_for(name, value)))[name] == value, name
    untouched = flat_dict(parse(RunSettings(), []))
    assert untouched == defaults


def test_only_given_flags_override_the_quick_settings():
    settings = parse(quick_settings(), ["--n-train", "500", "--head-param", "vfe.vae_epochs=7",
                                        "--head-param", "pca.latent_dim=16"])
    expected = with_overrides(quick_settings(), {"n_train": 500})
    assert settings.data == expected.data and settings.attacks == quick_settings().attacks
    assert settings.heads.head_params == {"vfe": {"vae_epochs": 7}, "ae": {"ae_epochs": 40},
                                          "pca": {"latent_dim": 16}}


def test_optional_values_take_none_and_an_empty_list():
    settings = parse(RunSettings(), ["--n-train", "none", "--corruptions"])
    assert settings.data.n_train is None and settings.corruptions.corruptions == []


@pytest.mark.parametrize("argv, message", [
    (["--n-trian", "5"], "did you mean --n-train"),
    (["--n-train", "many"], "invalid int value"),
    (["--severities"], "expected at least one argument"),
    (["--n-tr", "5"], "unrecognized arguments"),  # no abbreviations: a typo never silently means another flag
])
def test_unknown_flags_and_wrong_types_are_refused(capsys, argv, message):
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(["run", *argv])
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_sweep_flags_come_from_its_settings():
    settings = parse(SweepSettings(), ["--name", "s", "--grid", "{}", "--n-train", "300", "--compare-pixels",
                                       "--engine", "ray", "--address", "auto"])
    assert (settings.name, settings.data.n_train, settings.compare_pixels) == ("s", 300, True)
    assert (settings.cluster.engine, settings.cluster.address) == ("ray", "auto")
    assert parse(SweepSettings(), ["--name", "s", "--grid", "{}"]).cluster == cfg.EngineSettings(engine="local")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["sweep", "--grid", "{}"])  # --name is required


def settings_for(tmp_path, **flat) -> RunSettings:
    return with_overrides(RunSettings(), {"runs_dir": str(tmp_path), **flat})


@pytest.mark.parametrize("flat, message", [
    ({"heads": ["linear", "nope"]}, "unknown head 'nope'"),
    ({"heads": ["finetune"]}, "finetune"),
    ({"head_params": {"vfe": {"latent_dimm": 3}}}, "latent_dim"),
    ({"head_params": {"vfe": {"vae_epochs": "many"}}}, "vae_epochs"),
    ({"corruptions": ["gaussian_noise", "rain"]}, "unknown rain"),
    ({"severities": [0, 3]}, "--severities"),
    ({"n_train": 0}, "--n-train"),
    ({"n_attack": -1}, "--n-attack"),
    ({"attack_eps_linf": [0.0]}, "positive"),
    ({"augment_family": "sound"}, "noise"),
    ({"corruption_params": "mnist"}, "--corruption-params"),
    ({"replicates": 0}, "--replicates"),
    ({"finetune_js_weight": -1.0}, "--finetune-js-weight must be >= 0"),
    ({"finetune_augmix": True, "finetune_augment": True}, "--finetune-augmix and --finetune-augment: choose one"),
    ({"head_params": {"linear": {"random_state": 3}}}, "linear.random_state: each replicate seeds"),
    ({"head_params": {"vfe": {"predict_mode": "sampel"}}}, "'predict_mode' parameter of head 'vfe' must be a str among"),
    ({"head_params": {"linear": {"dropout": 1.5}}}, r"'dropout' parameter of head 'linear' .* range \[0.0, 1.0\)"),
])
def test_bad_settings_are_refused_before_any_work(tmp_path, monkeypatch, flat, message):
    from vfe.experiment import run as run_module

    def no_work(*args, **kwargs):
        raise AssertionError("work started before the settings were checked")

    monkeypatch.setattr(run_module, "load_shared", no_work)
    with pytest.raises(SettingsError, match=message):
        run_module.run(settings_for(tmp_path, **flat), log=lambda *_: None)


def test_an_existing_run_or_an_unwritable_folder_is_refused(tmp_path):
    (tmp_path / "default").mkdir()
    (tmp_path / "default" / "results.json").write_text("{}")
    with pytest.raises(SettingsError, match="--overwrite"):
        check(settings_for(tmp_path))
    check(settings_for(tmp_path), overwrite=True)
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SettingsError, match="cannot write there"):
        check(settings_for(blocker))


def test_settings_round_trip_through_results_json():
    settings = parse(quick_settings(), ["--heads", "all", "--n-eot", "3"])
    assert RunSettings.from_dict(settings.to_dict()) == settings
    with pytest.raises(SettingsError, match="unknown setting"):
        RunSettings.from_dict({**settings.to_dict(), "n_trian": 3})


def test_settings_field_names_are_unique_so_flags_are():
    names = [f.name for f in dataclasses.fields(RunSettings) if f.name not in cfg.sections(RunSettings())]
    names += [f.name for sub in cfg.sections(RunSettings()).values() for f in dataclasses.fields(sub)]
    assert len(names) == len(set(names))


def test_cli_prints_one_line_for_a_bad_setting(tmp_path, capsys):
    code = main(["run", "--runs-dir", str(tmp_path), "--heads", "linear", "nope"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "unknown head 'nope'" in err and "linear" in err


def test_help_is_fast_because_it_imports_no_torch():
    probe = "import sys, vfe.cli; vfe.cli.build_parser(); print(sorted(m for m in ('torch', 'timm', " \
            "'sklearn', 'matplotlib', 'skimage') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_run_folder_being_written_is_refused_naming_the_writer(tmp_path, capsys, monkeypatch):
    """Two `vfe run --name same` (or a run and a sweep of that name) at once: the second stops with one line naming
    the first, before any work, instead of both writing the folder and one's results being lost."""
    from vfe.experiment import run as run_module
    from vfe.experiment import sweep
    from vfe.rundir import claimed

    def no_work(*args, **kwargs):
        raise AssertionError("work started although another run holds the folder")

    monkeypatch.setattr(run_module, "load_shared", no_work)
    monkeypatch.setattr(sweep, "load_shared", no_work)
    with claimed(tmp_path / "same", "--name"):
        assert main(["run", "--runs-dir", str(tmp_path), "--name", "same"]) == 2
        assert main(["sweep", "--runs-dir", str(tmp_path), "--name", "same", "--grid", '{"heads": ["linear"]}']) == 2
    for line in capsys.readouterr().err.strip().splitlines():
        assert f"{tmp_path / 'same'} is being written by pid {os.getpid()}" in line
        assert "pass --wait to wait for it, or choose another --name" in line


def test_a_run_that_waited_finds_the_first_ones_results_and_keeps_them(tmp_path, capsys, monkeypatch):
    """`vfe run --wait` waits for the run holding the folder; once that run has finished, the folder holds a run
    and the waiting one is refused like any other (its results would have replaced the first's)."""
    from vfe.experiment import run as run_module
    from vfe.rundir import claimed

    def no_work(*args, **kwargs):
        raise AssertionError("the waiting run started over the first one's results")

    monkeypatch.setattr(run_module, "load_shared", no_work)
    codes = []
    second = threading.Thread(target=lambda: codes.append(main(["run", "--runs-dir", str(tmp_path), "--name", "same",
                                                                  "--wait"])))
    with claimed(tmp_path / "same", "--name"):
        second.start()
        time.sleep(0.5)
        assert codes == []  # still waiting
        (tmp_path / "same").mkdir()
        (tmp_path / "same" / "results.json").write_text('{"the first run": 1}')
    second.join(timeout=60)
    assert codes == [2] and "already holds a run; pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "same" / "results.json").read_text() == '{"the first run": 1}'
