"""Every data command on COLOUR photos from the command line, and the checks that run before any work:
extract, fit, evaluate, predict (one line per file, --skip-bad), sweep."""
from __future__ import annotations

import json
import shutil

import pytest
from colour_data import CLASS_NAMES, write_colour_folder

from vfe.cli import main


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli-colour")
    return tmp, write_colour_folder(tmp / "photos", n_train=15, n_test=5)


def cache_of(tmp) -> list[str]:
    return ["--cache-dir", str(tmp / "cache")]


@pytest.mark.slow
def test_extract_fit_evaluate_predict_on_rgb(photos, capsys):
    tmp, folder = photos
    assert main(["extract", str(folder), "--image-size", "32", *cache_of(tmp)]) == 0
    assert capsys.readouterr().out.startswith(f"{4 * 15} x 1280 features")
    model = tmp / "photos-linear.safetensors"
    assert main(["fit", str(folder), "--head", "linear", "--image-size", "32", "--param", "epochs=60",
                 "--out", str(model), *cache_of(tmp)]) == 0
    assert main(["evaluate", str(model), str(folder), *cache_of(tmp)]) == 0
    metrics = json.loads(capsys.readouterr().out.split("\n", 1)[1])  # after fit's "saved ..." line
    assert metrics["n"] == 4 * 5 and metrics["accuracy"] > 0.5  # 4 classes: chance 0.25

    files = sorted((folder / "test").rglob("*.png"))
    broken = folder / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    try:
        assert main(["predict", str(model), str(files[0]), str(broken), str(files[-1])]) == 2
        captured = capsys.readouterr()
        assert captured.out.startswith(str(files[0]))  # printed before the bad file stopped it
        assert "broken.png" in captured.err and "--skip-bad" in captured.err
        assert main(["predict", str(model), str(files[0]), str(broken), str(files[-1]), "--skip-bad",
                     "--top", "2"]) == 0
        captured = capsys.readouterr()
    finally:
        broken.unlink()
    lines = captured.out.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(files[0]), str(files[-1])]
    assert all(line.split("\t")[1].split()[0] in CLASS_NAMES for line in lines)
    assert "skipped 1 unreadable file" in captured.err


def test_evaluate_refuses_other_class_names_unless_told(photos, tmp_path, capsys):
    tmp, folder = photos
    model = tmp / "photos-linear.safetensors"
    if not model.exists():
        assert main(["fit", str(folder), "--head", "linear", "--image-size", "32", "--out", str(model),
                     *cache_of(tmp)]) == 0
    renamed = write_colour_folder(tmp_path / "renamed", n_train=2, n_test=2)
    (renamed / "train" / "rocket").rename(renamed / "train" / "spaceship")
    (renamed / "test" / "rocket").rename(renamed / "test" / "spaceship")
    capsys.readouterr()
    assert main(["evaluate", str(model), str(renamed), *cache_of(tmp)]) == 2
    err = capsys.readouterr().err
    assert "spaceship" in err and "--allow-class-mismatch" in err and len(err.strip().splitlines()) == 1
    assert main(["evaluate", str(model), str(renamed), "--allow-class-mismatch", *cache_of(tmp)]) == 0


def test_sweep_on_rgb(photos, capsys):
    tmp, folder = photos
    grid = json.dumps({"heads": {"linear": {"epochs": [20]}, "pca": {"latent_dim": 8}}, "seeds": [0, 1]})
    assert main(["sweep", "--name", "rgb", "--grid", grid, "--dataset", str(folder), "--image-size", "32",
                 "--n-train", "none", "--n-test", "none", "--runs-dir", str(tmp / "runs"), "--no-progress",
                 *cache_of(tmp), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out.rsplit("\n[vfe]", 1)[0])
    assert {r["head"] for r in rows} == {"linear", "pca"} and all(r["n_seeds"] == 2 for r in rows)
    assert all(r["accuracy_mean"] > 0.25 for r in rows)


@pytest.mark.parametrize("argv, message", [
    (["fit", "{folder}", "--out", "{existing}"], "exists; pass --overwrite"),
    (["fit", "{folder}", "--out", "{tmp}/model.pt"], "must end in .safetensors"),
    (["fit", "{folder}", "--out", "{tmp}/m.safetensors", "--n-train", "-3"], "--n-train must be at least 1"),
    (["fit", "{folder}", "--out", "{tmp}/m.safetensors", "--param", "epochs=many"], "epochs"),
    (["fit", "{folder}", "--out", "{tmp}/m.safetensors", "--weights", "{existing}"], "not a readable .safetensors"),
    (["predict", "{existing}", "{folder}/nope.png"], "no such file"),
    (["run", "--dataset", "{folder}", "--severities", "7", "--runs-dir", "{tmp}"], "--severities"),
    (["run", "--dataset", "{folder}", "--corruptions", "rain", "--runs-dir", "{tmp}"], "unknown rain"),
    # a parameter's range or choices (the head class's _parameter_constraints), in every command that takes one
    (["fit", "{folder}", "--out", "{tmp}/m.safetensors", "--param", "predict_mode=sampel"],
     "The 'predict_mode' parameter of head 'vfe' must be a str among"),
    (["run", "--dataset", "{folder}", "--runs-dir", "{tmp}", "--head-param", "vfe.predict_mode=sampel"],
     "The 'predict_mode' parameter of head 'vfe' must be a str among"),
    (["sweep", "--name", "s", "--runs-dir", "{tmp}", "--grid", '{{"heads": {{"vfe": {{"predict_mode": "sampel"}}}}}}'],
     "The 'predict_mode' parameter of head 'vfe' must be a str among"),
    (["fit", "{folder}", "--out", "{tmp}/m.safetensors", "--head", "t3a", "--param", "filter_k=0"],
     "'filter_k' parameter of head 't3a' must be an int in the range [1, inf) or a int among {-1}"),
    # the sweep grid and folder, before its data is loaded
    (["sweep", "--name", "s", "--runs-dir", "{tmp}", "--grid", '{{"heads": {{"linear": {{"epoch": [3]}}}}}}'],
     "head 'linear' has no parameter 'epoch'"),
    (["sweep", "--name", "s", "--runs-dir", "{tmp}", "--grid", '{{"heads": ["linear"], "train_sizes": [0]}}'],
     "'train_sizes' must be whole numbers >= 1, or null for the whole training set, got 0"),
    (["sweep", "--name", "s", "--runs-dir", "{tmp}", "--grid", '{{"heads": ["linear"], "seeds": ["a"]}}'],
     "'seeds' must be whole numbers >= 0, got 'a'"),
    (["sweep", "--name", "s", "--runs-dir", "{existing}", "--grid", '{{"heads": ["linear"]}}'],
     "cannot write there"),
    (["sweep", "--name", "s", "--runs-dir", "{tmp}", "--grid", '{{"heads": ["linear"]}}', "--n-train", "0"],
     "--n-train must be at least 1"),
    # the flag of the command run: `evaluate --split train` reads --n-test, not --n-train
    (["evaluate", "{existing}", "{folder}", "--split", "train", "--n-test", "0"], "--n-test must be at least 1"),
    # against the data's classes: fit loads its data here (extraction is what must not start)
    (["fit", "{folder}", "--out", "{tmp}/m.safetensors", "--n-train", "1"],
     "--n-train 1 is fewer than the 4 classes of"),
])
def test_cheap_checks_come_before_any_work(photos, tmp_path, capsys, monkeypatch, argv, message):
    from vfe.experiment import run as run_module
    from vfe.experiment import sweep
    from vfe.features.cache import FeatureCache

    def no_work(*args, **kwargs):
        raise AssertionError("extraction started before the arguments were checked")

    monkeypatch.setattr(FeatureCache, "extract", no_work)
    monkeypatch.setattr(run_module, "load_shared", no_work)
    monkeypatch.setattr(sweep, "load_shared", no_work)
    _, folder = photos
    existing = tmp_path / "existing.safetensors"
    existing.write_bytes(b"not a pipeline")
    argv = [a.format(folder=folder, existing=existing, tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert existing.read_bytes() == b"not a pipeline"  # nothing the user gave is overwritten


@pytest.fixture(scope="module")
def one_class(photos):
    """The photos' folder with one class left: a classifier cannot be fitted on it."""
    tmp, folder = photos
    single = tmp / "one-class"
    if not single.exists():
        for split in ("train", "test"):
            shutil.copytree(folder / split / CLASS_NAMES[0], single / split / CLASS_NAMES[0])
    return single


@pytest.mark.parametrize("argv, message", [
    (["fit", "{one}", "--head", "linear", "--out", "{tmp}/m.safetensors"], "all of one class (astronaut)"),
    (["fit", "{one}", "--head", "vfe", "--out", "{tmp}/m.safetensors"], "all of one class (astronaut)"),
    (["run", "--dataset", "{one}", "--runs-dir", "{tmp}"], "all of one class (astronaut)"),
    (["sweep", "--name", "s", "--runs-dir", "{tmp}", "--dataset", "{one}", "--grid", '{{"heads": ["linear"]}}'],
     "all of one class (astronaut)"),
    (["run", "--dataset", "{folder}", "--runs-dir", "{tmp}", "--n-train", "3"],
     "--n-train 3 is fewer than the 4 classes of"),
    (["sweep", "--name", "s", "--runs-dir", "{tmp}", "--dataset", "{folder}", "--n-train", "none",
      "--grid", '{{"heads": ["linear"], "train_sizes": [2]}}'], "train size 2 must be between the number of classes"),
])
def test_checks_against_the_datas_classes_come_before_any_extraction(photos, one_class, tmp_path, capsys,
                                                                      monkeypatch, argv, message):
    """One class, or fewer training images than classes: refused once the data is loaded, before extraction (a head
    refused them only after it, with scikit-learn's words and no flag)."""
    from vfe.experiment import run as run_module
    from vfe.experiment import sweep
    from vfe.features.cache import FeatureCache

    def no_work(*args, **kwargs):
        raise AssertionError("extraction started before the data's classes were checked")

    monkeypatch.setattr(FeatureCache, "extract", no_work)
    for module in (run_module, sweep):
        monkeypatch.setattr(module, "prepare_replicate", no_work)
    _, folder = photos
    argv = [a.format(folder=folder, one=one_class, tmp=tmp_path) for a in argv]
    assert main([*argv, "--image-size", "32"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
