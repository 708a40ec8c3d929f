"""`--engine ray` for `vfe sweep` and `vfe run` (src/vfe/experiment/fanout.py) on a local 2-CPU Ray cluster:
the sweep's cell records, the fit stage's fitted heads, the corruption stage's numbers (its corrupted test sets
extracted by backbone actors) and the attack stage's (each head attacked in a task) are the local engine's (at
one torch thread in both), on grayscale digits and on colour photos through a real backbone; a rerun computes
nothing; the local engine never imports Ray; a wrong --address is one line, at once; and without a shared cache
folder (--ray-shared-cache no) the frozen protocol's corrupted test sets come back from the actors and are
written here, while the reference protocol's, which its tasks write, are refused in one line.

One Ray session serves the whole module (starting Ray takes ~12 s here); each task reserves one CPU.
"""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import replace

import numpy as np
import pytest
from colour_data import write_colour_folder

from vfe.backbones import create_backbone
from vfe.cli import main
from vfe.data import load_dataset
from vfe.errors import SettingsError
from vfe.experiment import fit, sweep
from vfe.experiment.config import (
    DEFAULT_CORRUPTION_PARAMS,
    BackboneSettings,
    DataSettings,
    EngineSettings,
    HeadSettings,
)
from vfe.experiment.fanout import extract_on_cluster
from vfe.experiment.fit import fit_heads
from vfe.experiment.prepare import load_shared, prepare, prepare_replicate
from vfe.experiment.stages.adversarial import stage as adversarial
from vfe.experiment.stages.corruptions import stage as corruption
from vfe.experiment.stages.corruptions.stage import corruption_transform
from vfe.experiment.sweep import run_sweep
from vfe.experiment.timer import StageTimer
from vfe.features.cache import FeatureCache
from vfe.features.ray_engine import ExtractionJob
from vfe.features.source import BackboneFeatures
from vfe.robustness.calibration import probability_metrics

ray = pytest.importorskip("ray")

RAY = EngineSettings(engine="ray")
TINY_VFE = {"encoder_units": 32, "latent_dim": 8, "decoder_units": 32, "vae_epochs": 4, "epochs": 4}
HEAD_PARAMS = {"linear": {"epochs": 8}, "vfe": TINY_VFE}
# each data set: its DataSettings (the colour folder's path filled in by `world`) and a grid training size
SETS = {"digits": (DataSettings(dataset="digits", n_train=200, n_test=100), 40),
        "colour": (DataSettings(dataset="{colour}", n_train=None, n_test=None), 20)}


def grid(size: int) -> dict:
    return {"heads": {"linear": HEAD_PARAMS["linear"], "vfe": TINY_VFE, "svm": {"C": [0.1, 1.0]}}, "seeds": [0, 1],
            "train_sizes": [size, None]}


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", object_store_memory=100 * 2**20,
             logging_level="ERROR")
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A shared feature cache, a runs folder and the colour photos as a class folder (60 train, 20 test)."""
    tmp = tmp_path_factory.mktemp("fanout")
    colour = write_colour_folder(tmp / "photos", n_train=15, n_test=5)
    return {"cache": str(tmp / "cache"), "runs": tmp / "runs", "colour": str(colour)}


def data_settings(world, name: str) -> DataSettings:
    data = SETS[name][0]
    return replace(data, dataset=data.dataset.format(colour=world["colour"]))


def common_flags(world, name: str) -> list[str]:
    data = data_settings(world, name)
    sizes = ["none" if n is None else str(n) for n in (data.n_train, data.n_test)]
    return ["--dataset", data.dataset, "--n-train", sizes[0], "--n-test", sizes[1], "--image-size", "32",
            "--cache-dir", world["cache"], "--runs-dir", str(world["runs"]), "--no-progress"]


@contextmanager
def sent_to_ray(module):
    """The items `module`'s fan_out sends to the cluster, recorded (so a test sees Ray did the work)."""
    sent, real = [], module.fan_out

    def spy(function, items, shared, **kwargs):
        sent.extend(items)
        yield from real(function, items, shared, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(module, "fan_out", spy)
        yield sent


def sweep_cells(world, name: str) -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted((world["runs"] / name / "sweep").glob("*.json"))}


@pytest.fixture(scope="module")
def sweeps(cluster, world):
    """Each data set's grid swept by the local engine (in this process, one thread) and by Ray tasks."""
    out = {}
    for name, (_, size) in SETS.items():
        for engine in ("local", "ray"):
            args = ["sweep", *common_flags(world, name), "--name", f"{name}-{engine}", "--grid",
                    json.dumps(grid(size)), "--engine", engine]
            with sent_to_ray(sweep) as sent:
                assert main(args) == 0, (name, engine)
            assert len(sent) == (4 * 2 * 2 if engine == "ray" else 0), (name, engine)  # every cell, as a task
        out[name] = (sweep_cells(world, f"{name}-local"), sweep_cells(world, f"{name}-ray"))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SETS))
def test_a_ray_sweep_writes_the_records_of_a_local_one(sweeps, name):
    local, remote = sweeps[name]
    assert len(local) == 4 * 2 * 2 and sorted(remote) == sorted(local)  # same cells, same data key: same files
    for file, record in local.items():
        other = remote[file]
        assert {k: v for k, v in other.items() if k not in ("metrics", "fit_seconds")} == \
            {k: v for k, v in record.items() if k not in ("metrics", "fit_seconds")}
        assert other["metrics"]["accuracy"] == record["metrics"]["accuracy"], file
        for metric, value in record["metrics"].items():
            # the local engine's thread count follows the free cores, a task's is 1: float sums run in another order
            assert other["metrics"][metric] == pytest.approx(value, rel=1e-5, abs=1e-6), (file, metric)
        assert other["fit_seconds"] >= 0
    assert max(r["metrics"]["accuracy"] for r in local.values()) > 0.5  # real features: better than chance


@pytest.mark.slow
def test_a_rerun_reads_every_cell_back_and_computes_nothing(sweeps, world, monkeypatch, capsys):
    folder = world["runs"] / "digits-ray" / "sweep"
    written = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.json")}

    def nothing_to_fit(*args, **kwargs):
        raise AssertionError("a finished cell was sent to the cluster again")

    monkeypatch.setattr(sweep, "fan_out", nothing_to_fit)
    monkeypatch.setattr(sweep, "fit_cell", nothing_to_fit)
    args = ["sweep", *common_flags(world, "digits"), "--name", "digits-ray", "--grid", json.dumps(grid(40)),
            "--engine", "ray", "--format", "json"]
    assert main(args) == 0
    rows = json.loads(capsys.readouterr().out.split("\n[vfe] sweep:")[0])
    assert len(rows) == 4 * 2 and all(r["n_seeds"] == 2 for r in rows)
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("*.json")} == written


@pytest.fixture(scope="module")
def features(world):
    """Each data set's backbone features (the sweeps' cache entries, or extracted now)."""
    out = {}
    for name in SETS:
        prepared = prepare(data_settings(world, name), BackboneSettings(image_size=32), world["cache"],
                           progress=False, timer=StageTimer(log=lambda *_: None))
        out[name] = (prepared.X_train, prepared.train.labels, prepared.X_test, prepared.test.labels)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SETS))
def test_the_fit_stage_on_ray_returns_the_heads_a_local_fit_returns(cluster, features, name):
    X, y, X_test, _ = features[name]
    settings = HeadSettings(heads=["linear", "vfe"], head_params=HEAD_PARAMS)
    local, local_seconds = fit_heads(settings, settings.heads, X, y, replicate=1, seed=7, progress=False)
    with sent_to_ray(fit) as sent:
        remote, remote_seconds = fit_heads(settings, settings.heads, X, y, replicate=1, seed=7, progress=False,
                                           cluster=RAY)
    assert sent == [("linear", 0), ("vfe", 0)]  # every head of the (one) draw was a task
    assert list(remote) == list(local) == [("linear", 1), ("vfe", 1)]  # the same order
    assert {h: len(s) for h, s in remote_seconds.items()} == {h: len(s) for h, s in local_seconds.items()}
    for key, model in local.items():
        np.testing.assert_array_equal(remote[key].predict(X_test), model.predict(X_test), err_msg=str(key))
        np.testing.assert_allclose(remote[key].predict_proba(X_test), model.predict_proba(X_test), rtol=0,
                                   atol=1e-6, err_msg=str(key))


@pytest.mark.slow
def test_vfe_run_fits_its_heads_on_ray(cluster, features, world):
    """`vfe run --engine ray` end to end (clean evaluation only): the clean numbers of the local fit stage."""
    args = ["run", *common_flags(world, "digits"), "--name", "run-ray", "--heads", "linear", "--replicates", "1",
            "--head-param", "linear.epochs=8", "--corruptions", "--n-attack", "0", "--no-ood", "--engine", "ray"]
    with sent_to_ray(fit) as sent:
        assert main(args) == 0
    assert sent == [("linear", 0)]
    results = json.loads((world["runs"] / "run-ray" / "results.json").read_text())
    assert (results["config"]["engine"], results["config"]["address"]) == ("ray", None)
    seed = results["setting"]["replicate_seeds"][0]  # replicate 0 draws its own training subset
    data = data_settings(world, "digits")
    shared = load_shared(data, BackboneSettings(image_size=32), world["cache"], StageTimer(log=lambda *_: None))
    p = prepare_replicate(shared, data.n_train, seed, progress=False, timer=StageTimer(log=lambda *_: None))
    X, y, X_test, y_test = p.X_train, p.train.labels, p.X_test, p.test.labels
    settings = HeadSettings(heads=["linear"], head_params=HEAD_PARAMS)
    models, _ = fit_heads(settings, ["linear"], X, y, seed=seed, progress=False)
    local = probability_metrics(models[("linear", 0)].predict_proba(X_test), y_test)
    assert results["clean"]["linear"]["0"]["accuracy"] == local["accuracy"]
    assert results["clean"]["linear"]["0"]["nll"] == pytest.approx(local["nll"], rel=1e-5, abs=1e-6)


def only_reads_corrupted_features(monkeypatch):
    """The corruption stage may read its corrupted features from the cache but not compute any here: each
    read gets a transform that fails if called (the cache key names the corruption, not the function)."""
    real = corruption.run_corruptions

    def reading(features, *args, **kwargs):
        def source(data, transform=None, transform_key=None, desc=None):
            def refuse(images, first_row):
                raise AssertionError(f"{transform_key} was computed on the driver, not by the Ray actors")

            return features(data, transform=refuse if transform else None, transform_key=transform_key, desc=desc)

        return real(source, *args, **kwargs)

    monkeypatch.setattr(corruption, "run_corruptions", reading)


ROBUSTNESS = ["--heads", "linear", "vfe", "--replicates", "1", "--head-param", "linear.epochs=8",
              *[arg for key, value in TINY_VFE.items() for arg in ("--head-param", f"vfe.{key}={value}")],
              "--corruptions", "gaussian_noise", "contrast", "--severities", "1", "4", "--n-attack", "10",
              "--attack-eps-linf", "0.008", "--attack-eps-l2", "0.5", "--attack-steps", "2", "--n-eot", "2",
              "--no-ood"]


@pytest.mark.slow
@pytest.mark.parametrize("name,protocol", [("digits", "frozen"), ("colour", "frozen"), ("digits", "reference")])
def test_vfe_run_on_ray_sends_corruptions_and_attacks_and_gets_the_local_numbers(cluster, world, name, protocol,
                                                                                  monkeypatch, tmp_path):
    """Each engine from its own empty cache: the corrupted test sets are extracted on the cluster (by backbone
    actors under the frozen protocol, by tasks holding the fine-tuned top under the reference protocol) and
    every head x seed is attacked in a task; corruption and attack results equal the local run's, image by
    image, and the entries written are the local run's."""
    results = {}
    for engine in ("local", "ray"):
        args = ["run", *common_flags(world, name), "--cache-dir", str(tmp_path / engine), "--name",
                f"robust-{name}-{protocol}-{engine}", "--protocol", protocol, "--finetune-epochs", "1",
                *ROBUSTNESS, "--engine", engine]
        with monkeypatch.context() as patch:
            if engine == "ray":
                only_reads_corrupted_features(patch)
            with sent_to_ray(adversarial) as attacked:
                assert main(args) == 0, engine
        # the VFE head samples (EOT draws n_eot times a step): its attacks are sent first (longest_first)
        assert [key for key, _ in attacked] == ([("vfe", 0), ("linear", 0)] if engine == "ray" else [])
        results[engine] = json.loads((world["runs"] / f"robust-{name}-{protocol}-{engine}" / "results.json")
                                     .read_text())
    local, remote = results["local"], results["ray"]
    for head in ("linear", "vfe"):
        assert remote["corruptions"]["per_head"][head]["0"]["accuracy"] == \
            local["corruptions"]["per_head"][head]["0"]["accuracy"], head
        assert remote["adversarial"][head]["0"]["correct"] == local["adversarial"][head]["0"]["correct"], head
    accuracies = [a for sev in local["corruptions"]["per_head"]["linear"]["0"]["accuracy"].values()
                  for a in sev.values()]
    assert max(accuracies) > min(accuracies)  # severities 1 and 4 differ: the numbers measure something
    entries = {e["key"] for e in FeatureCache(tmp_path / "ray").entries()}
    assert entries == {e["key"] for e in FeatureCache(tmp_path / "local").entries()}
    # train and test, and the 4 corrupted test sets; under the reference protocol each at the cut and through the top
    assert len(entries) == (2 + 4) * (2 if protocol == "reference" else 1)


@pytest.mark.slow
def test_without_a_shared_cache_the_corrupted_features_come_back_and_are_written_here(cluster, tmp_path):
    """The frozen protocol's corruption stage with --ray-shared-cache no: the actors send each shard's features
    back and this process writes the entries; they are the local engine's, read here without computing."""
    backbone = create_backbone("efficientnet_lite0", image_size=32, device="cpu", jit=False, precision="fp32",
                               threads=1)
    test = load_dataset("digits", split="test").subset(np.arange(40), tag="first-40")
    jobs = [ExtractionJob(test, *corruption_transform(name, 3, 0, DEFAULT_CORRUPTION_PARAMS))
            for name in ("gaussian_noise", "contrast")]
    on_ray = BackboneFeatures(FeatureCache(tmp_path / "ray"), backbone, progress=False)
    extract_on_cluster(on_ray, jobs, replace(RAY, ray_shared_cache="no"), progress=False)
    here = BackboneFeatures(FeatureCache(tmp_path / "local"), backbone, progress=False)

    def refuse(images, first_row):
        raise AssertionError("computed here, not by the Ray actors")

    for job in jobs:
        expected = here(job.data, job.transform, job.transform_key)
        assert on_ray(job.data, refuse, job.transform_key).tobytes() == expected.tobytes()
    assert {e["key"] for e in on_ray.cache.entries()} == {e["key"] for e in here.cache.entries()}


class CutSource:
    """Stands for the reference protocol's source: any source but a frozen backbone's travels to tasks that write
    its cache folder themselves (activations at the cut, then through the fine-tuned top)."""

    def __init__(self, root):
        self.cache = FeatureCache(root)

    def __call__(self, data, transform=None, transform_key=None, desc=None):
        raise AssertionError("nothing may be sent to the cluster")


def test_without_a_shared_cache_the_reference_protocols_corrupted_sets_are_refused_in_one_line(tmp_path):
    test = load_dataset("digits", split="test").subset(np.arange(8), tag="first-8")
    with pytest.raises(SettingsError, match="--ray-shared-cache no") as err:
        extract_on_cluster(CutSource(tmp_path), [ExtractionJob(test)], replace(RAY, ray_shared_cache="no"),
                           progress=False)
    assert "\n" not in str(err.value)


def test_a_user_error_in_a_task_is_raised_on_the_driver_as_itself(cluster, digits_features, tmp_path):
    X_train, X_test, y_train, y_test = digits_features
    with pytest.raises(SettingsError, match="epochz"):
        run_sweep({"heads": {"linear": {"epochz": 3}}}, X_train, y_train, X_test, y_test, tmp_path, progress=False,
                  cluster=RAY)
    assert not list(tmp_path.glob("*.json"))


@pytest.mark.slow
def test_the_local_engine_never_imports_ray(tmp_path):
    probe = ("import sys, numpy as np\n"
             "from vfe.experiment.config import HeadSettings\n"
             "from vfe.experiment.fit import fit_heads\n"
             "from vfe.experiment.sweep import run_sweep\n"
             "import vfe.experiment.stages.adversarial.stage, vfe.experiment.stages.corruptions.stage, vfe.experiment.run\n"
             "rng = np.random.default_rng(0)\n"
             "X, y = rng.normal(size=(40, 5)).astype(np.float32), np.arange(40) % 2\n"
             f"run_sweep({{'heads': ['svm']}}, X, y, X, y, {str(tmp_path)!r}, progress=False)\n"
             "fit_heads(HeadSettings(heads=['svm']), ['svm'], X, y, progress=False)\n"
             "print('ray' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


CLI = {"sweep": ["sweep", "--name", "s", "--grid", '{"heads": ["linear"]}'], "run": ["run", "--quick"]}


def free_port() -> int:
    with socket.socket() as s:  # a port nothing listens on once closed
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("command", ["sweep", "run"])
def test_an_address_where_nothing_answers_is_one_line_at_once(command, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # as in a fresh process, whatever this one holds
    address = f"ray://127.0.0.1:{free_port()}"
    args = CLI[command]
    started = time.perf_counter()
    assert main([*args, "--runs-dir", str(tmp_path), "--engine", "ray", "--address", address]) == 2
    assert time.perf_counter() - started < 10  # refused before any data is loaded, not after retries
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and address in err and "ray start --head" in err


@pytest.mark.parametrize("command", ["sweep", "run"])
def test_an_address_without_the_ray_engine_is_refused(command, tmp_path, capsys):
    args = CLI[command]
    assert main([*args, "--runs-dir", str(tmp_path), "--address", "auto"]) == 2
    assert "--engine ray" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["sweep", "run"])
def test_without_ray_the_engine_names_the_extra_in_one_line(command, monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails, as where it is not installed
    args = CLI[command]
    assert main([*args, "--runs-dir", str(tmp_path), "--engine", "ray"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'vfe[ray]'" in err
