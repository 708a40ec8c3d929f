"""`vfe run --quick` end to end on COLOUR photos, as a class folder and as a CIFAR-format archive:
corruptions, L2 and L-inf attacks with EOT, OOD and the report all run on RGB images."""
from __future__ import annotations

import json

import numpy as np
import pytest
from colour_data import CLASS_NAMES, write_colour_cifar, write_colour_folder

from vfe.cli import main

QUICK_RGB = ["--quick", "--image-size", "32", "--replicates", "1", "--n-train", "none", "--n-test", "none",
             "--heads", "linear", "vfe-k8", "--head-param", "vfe.vae_epochs=40", "--corruptions", "gaussian_noise",
             "frost", "saturate", "--n-attack", "8", "--attack-steps", "2", "--n-eot", "2", "--no-progress"]


@pytest.fixture(scope="module")
def colour_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("colour")
    folder = write_colour_folder(tmp / "photos", n_train=15, n_test=5)
    archive = write_colour_cifar(tmp / "cifar", n_train=15, n_test=5)
    runs = {}
    for name, data in (("folder", folder), ("cifar", archive)):
        code = main(["run", *QUICK_RGB, "--dataset", str(data), "--name", name, "--runs-dir", str(tmp / "runs"),
                     "--cache-dir", str(tmp / "cache")])
        assert code == 0, name
        runs[name] = json.loads((tmp / "runs" / name / "results.json").read_text())
    return tmp, runs


@pytest.mark.slow
def test_every_stage_runs_on_rgb(colour_runs):
    tmp, runs = colour_runs
    results = runs["folder"]
    assert results["setting"]["n_train"] == 4 * 15 and results["setting"]["n_test"] == 4 * 5
    assert json.loads(json.dumps(results["example_image"]["shape"])) == [32, 32, 3]
    for head in ("linear", "vfe-k8"):
        assert results["clean"][head]["0"]["accuracy"] > 1 / len(CLASS_NAMES)  # better than chance
        assert set(results["corruptions"]["per_head"][head]["0"]["accuracy"]) == {"gaussian_noise", "frost",
                                                                                   "saturate"}
    adv = results["adversarial"]["vfe-k8"]["0"]
    assert adv["samples_randomly"] and {"pgd_l2_0.5", "pgd_l2_0.5_eot", "pgd_linf_8/255_eot"} <= set(adv["accuracy"])
    assert all(0 <= v <= 1 for v in adv["accuracy"].values())
    assert set(results["ood"]["per_head"]["linear"]["0"]) >= {"msp_auroc_gaussian_noise_s5"}
    for name in ("report.md", "report.html"):
        assert (tmp / "runs" / "folder" / name).stat().st_size > 1000


@pytest.mark.slow
def test_a_class_folder_and_a_cifar_archive_of_the_same_photos_give_the_same_numbers(colour_runs):
    _, runs = colour_runs
    folder, cifar = runs["folder"], runs["cifar"]
    assert folder["clean"] == cifar["clean"]
    assert np.allclose(folder["corruptions"]["per_head"]["linear"]["0"]["accuracy"]["frost"]["5"],
                       cifar["corruptions"]["per_head"]["linear"]["0"]["accuracy"]["frost"]["5"])
