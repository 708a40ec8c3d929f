"""Issue 22's acceptance chain, end to end per data set (a colour class folder; Fashion-MNIST), on one tiny
`vfe run --quick --save-best` each: the run writes a pipeline and its card; `vfe evaluate --corruptions` on the
pipeline reproduces the run's numbers for that head and replicate; `vfe export` + ONNX Runtime predicts the
classes `vfe predict` prints; `vfe predict --coverage 0.9` on the pipeline (its detector: --best-detector's
default, Mahalanobis) abstains on noise and answers clean images; the same head and replicate refitted by
`vfe fit --replicate` predicts as the saved pipeline does.

The pieces are tested alone elsewhere (tests/experiment/test_save_best.py, tests/test_abstention.py,
tests/test_export.py); this module chains them on the run's own output."""
from __future__ import annotations

import json

import numpy as np
import pytest
from colour_data import write_colour_folder
from test_abstention import predicted, write_noise  # tests/ is on the path (its conftest)
from test_save_best import _chosen, _evaluate, _onnx_agrees_with_predict  # this module's folder
from threads import one_thread

from vfe.card import card_markdown
from vfe.cli import main
from vfe.data import available_fashion_mnist, load_train_test
from vfe.experiment.best import CARD_FILE, PIPELINE_FILE
from vfe.heads.registry import params_for
from vfe.pipeline import Pipeline

CORRUPTIONS, SEVERITIES = ["gaussian_noise", "frost"], ["1", "5"]
# (data set argument, --image-size, --n-train, --n-test, the detector's validation images, the images' shape, how
# the detector is chosen). The colour photos at 64 px: at 32 px, max softmax flagged uniform noise on some
# replicates' draws only (measured: 0 to 6 of 6 over 4 seeds at 60 or 200 training images; Mahalanobis and the
# VFE's detectors 0 of 6), at 64 px on all 4; --best-detector auto picks it there by the OOD stage's measurement.
# Fashion-MNIST at 32 px with 100 training images: no detector catches every kind of unfamiliar input (at 90 %
# coverage on 200 test images, max softmax abstains on 98.5 % of uniform noise and 9 % of the test images under
# gaussian noise at severity 5, shrunk Mahalanobis on 2 % and 30 %: benchmarks/bench_detectors.py), auto picks
# Mahalanobis by its better worst case, so the test names max softmax
SETS = {"colour": (None, "64", 60, None, 60, ["32", "32", "3"], []),
        "fashion-mnist": ("fashion-mnist", "32", 100, 100, 1000, ["28", "28", "1"],
                          ["--best-detector", "msp", "--no-ood"])}


@pytest.fixture(scope="module", params=list(SETS))
def quick_run(request, tmp_path_factory):
    """(tmp folder, data set argument, run folder, its --n-test) of `vfe run --quick --save-best` at tiny sizes:
    32 or 64 px, 2 replicates, linear and vfe heads (the linear one at a higher learning rate for so few images; vfe's
    --quick parameters), 2 corruptions x 2 severities, 4 attacked images; the OOD stage on the colour photos only,
    where it chooses the pipeline's detector (--best-detector auto)."""
    name = request.param
    dataset, size, n_train, n_test, _, _, detector = SETS[name]
    if name == "fashion-mnist" and available_fashion_mnist() is None:
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    tmp = tmp_path_factory.mktemp(f"acceptance-{name}")
    if dataset is None:
        dataset = str(write_colour_folder(tmp / "photos", n_train=30, n_test=5))  # 120 training, 20 test photos
    argv = ["run", "--quick", "--save-best", "--dataset", dataset, "--image-size", size, "--replicates", "2",
            "--n-train", str(n_train), "--n-test", str(n_test).lower(), "--heads", "linear", "vfe",
            "--head-param", "linear.lr=0.01", "--head-param", "linear.epochs=40",  # trained, on 60 to 100 images
            "--corruptions", *CORRUPTIONS, "--severities", *SEVERITIES, "--n-attack", "4", "--attack-steps", "2",
            "--n-eot", "2", "--no-progress", "--name", name, "--runs-dir", str(tmp / "runs"),
            "--cache-dir", str(tmp / "cache"), *detector]
    with one_thread():  # outside the autouse one-thread fixture: no worker pools, the tests' float sums
        assert main(argv) == 0
    return tmp, dataset, tmp / "runs" / name, n_test


@pytest.mark.slow
def test_the_run_saves_a_pipeline_and_card_that_evaluate_reproduces(quick_run, capsys):
    tmp, dataset, out, n_test = quick_run
    assert (out / PIPELINE_FILE).is_file() and (out / CARD_FILE).is_file()
    results, card, head, r = _chosen(out)
    assert (out / CARD_FILE).read_text() == card_markdown(card)
    assert (card["protocol"], card["replicates"]) == ("frozen", 2)
    sizes = ["--n-test", n_test] if n_test is not None else []
    got = _evaluate(capsys, out / PIPELINE_FILE, dataset, *sizes, "--cache-dir", tmp / "fresh", "--corruptions",
                    *CORRUPTIONS, "--severities", *SEVERITIES)  # features computed again from the images
    assert got["accuracy"] == results["clean"][head][r]["accuracy"] == card["clean"]["accuracy"]
    assert got["corruptions"]["accuracy"] == results["corruptions"]["per_head"][head][r]["accuracy"]
    assert got["corruptions"]["per_family"] == card["corruptions"]["per_family"]


@pytest.mark.slow
def test_the_pipeline_exports_abstains_on_noise_and_a_refit_of_its_replicate_predicts_alike(quick_run, capsys,
                                                                                           request):
    tmp, dataset, out, _ = quick_run
    name = request.node.callspec.params["quick_run"]
    _, size, n_train, _, n_val, shape, _ = SETS[name]
    results, card, head, r = _chosen(out)
    best = out / PIPELINE_FILE
    test = load_train_test(dataset)[1]
    work = tmp / "checks"
    work.mkdir()
    clean = _onnx_agrees_with_predict(capsys, work, best, test.images[:20], shape)

    noise = write_noise(work / "noise", n=6)
    capsys.readouterr()
    assert main(["predict", str(best), str(clean), *map(str, noise), "--coverage", "0.9"]) == 0
    lines = predicted(capsys)
    detector = card["detector"]["name"]
    assert all(lines[p.name][0] == "abstain" and lines[p.name][1].startswith(f"{detector} ") for p in noise), \
        ({k: v for k, v in lines.items() if k.startswith("noise")}, card["detector"])
    answered = [rest[0].rsplit(" ", 1)[0] for name, rest in lines.items() if not name.startswith("noise")
                and rest[0] != "abstain"]
    assert len(answered) >= 14 and set(answered) <= set(Pipeline.load(best).class_names)  # of 20 clean images
    assert card["detector"]["validation_images"] == n_val  # every training image outside the subset, up to 1000
    if not SETS[name][-1]:  # --best-detector auto: max softmax, by the OOD stage's worst case over its sets
        assert card["detector"]["chosen_by"].startswith("--best-detector auto: the highest worst-case AUROC")

    # the saved head and replicate, refitted: --seed is the run's --data-seed, --replicate its replicate, --param
    # its --head-param for that head
    params = params_for(head, results["config"]["head_params"])
    refit = work / "refit.safetensors"
    assert main(["fit", dataset, "--head", head, *[f"--param={k}={json.dumps(v)}" for k, v in params.items()],
                 "--image-size", size, "--n-train", str(n_train), "--seed", str(card["data_seed"]),
                 "--replicate", r, "--cache-dir", str(tmp / "cache"), "--out", str(refit)]) == 0
    images = test.images[:20]
    assert np.array_equal(Pipeline.load(refit).predict_proba(images),
                          Pipeline.load(best).predict_proba(images))  # the run's replicate exactly
