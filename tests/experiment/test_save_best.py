"""`vfe run --save-best` (vfe.experiment.best): which head and replicate it saves, and that the saved pipeline
scores what the run measured, prints its card, and exports to ONNX with the same predictions."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from test_card import hand_made_results  # tests/ is on the path (its conftest), as for colour_data
from test_run import tiny_config

from vfe.card import build_card, card_markdown, detector_card
from vfe.cli import main
from vfe.data import load_train_test
from vfe.data.split import balanced_subset
from vfe.errors import SettingsError
from vfe.experiment.best import (
    CARD_FILE,
    PIPELINE_FILE,
    auto_detector,
    median_replicate,
    save_best,
    select_best,
)
from vfe.experiment.detection import detection_split
from vfe.experiment.run import run
from vfe.experiment.run_settings import check
from vfe.pipeline import Pipeline

# -- the selection rule, on hand-made results -------------------------------------------------------------------


def test_a_more_robust_head_outside_half_a_point_of_clean_accuracy_is_skipped():
    # vfe: 1 point less accurate in every replicate (interval [-1, -1] + spread), and far more robust
    results = hand_made_results({"linear": [0.80, 0.82, 0.81], "vfe": [0.79, 0.8105, 0.80]},
                                drop={"linear": [0.3] * 3, "vfe": [0.1] * 3})
    assert results["leaderboard"][0]["head"] == "vfe"  # first on the leaderboard...
    choice = select_best(results)
    assert choice["head"] == "linear"  # ...but not within 0.5 points
    assert "lower bound < -0.5" in choice["heads"]["vfe"]


def test_a_head_within_half_a_point_with_a_better_headline_is_chosen_on_its_median_replicate():
    # vfe: 0.2 points less accurate, paired interval's lower bound above -0.5
    results = hand_made_results({"linear": [0.80, 0.82, 0.81], "vfe": [0.798, 0.8185, 0.8075]},
                                drop={"linear": [0.3] * 3, "vfe": [0.1] * 3})
    low = results["summary"]["vs_baseline"]["vfe"]["clean_accuracy"]["low"]
    assert -0.005 < low < 0
    choice = select_best(results)
    assert (choice["head"], choice["replicate"]) == ("vfe", 2)  # clean 0.798, 0.8075, 0.8185: replicate 2
    assert "median clean accuracy of 3" in choice["rule"]


def test_adapting_heads_and_bn_twins_are_never_saved():
    results = hand_made_results({"linear": [0.80, 0.82, 0.81], "t3a": [0.81, 0.83, 0.82],
                                 "linear+bn": [0.81, 0.83, 0.82]},
                                drop={"linear": [0.3] * 3, "t3a": [0.05] * 3, "linear+bn": [0.05] * 3})
    choice = select_best(results)
    assert choice["head"] == "linear"
    assert choice["heads"]["t3a"].startswith("not eligible: adapts to each test set")
    assert choice["heads"]["linear+bn"].startswith("not eligible: adapts its backbone's BatchNorm")


def test_ties_go_to_the_higher_clean_accuracy_then_to_the_run_order():
    results = hand_made_results({"linear": [0.80, 0.82, 0.81], "pca": [0.81, 0.83, 0.82],
                                 "vfe": [0.82, 0.84, 0.83]},
                                drop={"linear": [0.3] * 3, "pca": [0.1] * 3, "vfe": [0.1] * 3})
    rows = {row["head"]: row for row in results["leaderboard"]}
    rows["vfe"]["headline"] = dict(rows["pca"]["headline"])  # exactly equal headlines
    assert select_best(results)["head"] == "vfe"  # the more accurate of the two
    rows["vfe"]["clean_accuracy"] = dict(rows["pca"]["clean_accuracy"])
    first = next(row["head"] for row in results["leaderboard"] if row["head"] in ("pca", "vfe"))
    assert select_best(results)["head"] == first  # then the leaderboard's (the run's) order


def test_with_one_replicate_the_mean_difference_decides_and_the_card_says_so():
    results = hand_made_results({"linear": [0.80], "vfe": [0.797]}, drop={"linear": [0.3], "vfe": [0.1]})
    choice = select_best(results)
    assert choice["head"] == "vfe" and "no paired interval (1 replicate(s) or no spread)" in choice["heads"]["vfe"]
    results = hand_made_results({"linear": [0.80], "vfe": [0.79]}, drop={"linear": [0.3], "vfe": [0.1]})
    assert select_best(results)["head"] == "linear"


def test_the_median_replicate_is_the_lower_middle_one_for_an_even_count():
    results = hand_made_results({"linear": [0.80, 0.70, 0.90, 0.75]})
    assert median_replicate(results, "linear") == 3  # 0.70, 0.75 | 0.80, 0.90
    assert median_replicate(hand_made_results({"linear": [0.8, 0.8, 0.8]}), "linear") == 1  # equal: index order


def test_auto_takes_the_detector_with_the_best_mean_validation_auroc_over_the_ood_sets():
    results = hand_made_results({"linear": [0.80, 0.82], "vfe": [0.81, 0.83]})

    def choice(**auroc):
        return {"chosen": max(auroc, key=auroc.get), "validation_auroc": auroc}

    # vfe, replicate 1, worst case (mean): msp 0.6 (0.75), recon 0.7 (0.8), elbo 0.68 (0.79), Mahalanobis 0.6 (0.78)
    results["ood"]["selection"] = {
        "per_head": {"vfe": {"1": {"digits": choice(msp=0.9, recon=0.7, elbo=0.68),
                                   "gaussian_noise_s5": choice(msp=0.6, recon=0.9, elbo=0.9)}}},
        "feature_baselines": {"1": {"digits": choice(mahalanobis=0.99, relative_mahalanobis=0.99),  # not these:
                                    "gaussian_noise_s5": choice(mahalanobis=0.99, relative_mahalanobis=0.99)}},
        "detector_mahalanobis": {"1": {"digits": {"validation_auroc": 0.96}, "gaussian_noise_s5": {
            "validation_auroc": 0.6}}}}  # the detector's own Mahalanobis (the covariance shrunk)
    name, how = auto_detector(results, "vfe", 1)
    assert name == "vfe-recon"
    assert how.endswith("2 sets on their validation halves (msp 0.600 (mean 0.750), mahalanobis 0.600 (mean "
                        "0.780), vfe-recon 0.700 (mean 0.800), vfe-elbo 0.680 (mean 0.790))")
    maha = results["ood"]["selection"]["detector_mahalanobis"]["1"]
    maha["gaussian_noise_s5"]["validation_auroc"] = 0.7  # worst case 0.7 as recon's, mean 0.83 above its 0.8
    assert auto_detector(results, "vfe", 1)[0] == "mahalanobis"
    maha["digits"]["validation_auroc"] = 0.9  # (0.7, 0.8) each: DETECTORS' order
    assert auto_detector(results, "vfe", 1)[0] == "mahalanobis"
    maha["digits"]["validation_auroc"] = 0.99  # the best mean cannot make up for a worse worst case
    maha["gaussian_noise_s5"]["validation_auroc"] = 0.69
    assert auto_detector(results, "vfe", 1)[0] == "vfe-recon"
    del results["ood"]["selection"]
    assert auto_detector(results, "vfe", 1) == ("mahalanobis", ("--best-detector auto without the OOD stage "
                                                "(--no-ood): mahalanobis, which any head offers"))


def test_no_linear_head_saves_nothing_and_says_why_in_one_line(tmp_path):
    results = hand_made_results({"linear": [0.80, 0.82], "vfe": [0.81, 0.83]})
    del results["clean"]["linear"]
    lines = []
    assert save_best(results, {}, [], tmp_path, lines.append) is None
    assert len(lines) == 1 and "no pipeline saved: the run has no linear head" in lines[0]
    assert not list(tmp_path.iterdir())


def test_save_best_is_checked_before_any_work(tmp_path):
    with pytest.raises(SettingsError, match="add linear to --heads"):
        check(tiny_config(tmp_path, heads=["vfe"], save_best=True))
    with pytest.raises(SettingsError, match="needs the corruption stage"):
        check(tiny_config(tmp_path, corruptions=[], save_best=True))
    check(tiny_config(tmp_path, corruptions=[]))  # without --save-best, as before
    with pytest.raises(SettingsError, match="--best-detector must be auto, one of msp, mahalanobis, vfe-recon, "
                                            "vfe-elbo or none, got 'maha'"):
        check(tiny_config(tmp_path, save_best=True, best_detector="maha"))
    with pytest.raises(SettingsError, match="--best-coverage: coverage must be a number strictly between 0 and 1"):
        check(tiny_config(tmp_path, save_best=True, best_coverage=1.0))
    with pytest.raises(SettingsError, match="--n-train none trains on all of them: give --n-train, or "
                                            "--best-detector none"):
        check(tiny_config(tmp_path, save_best=True, n_train=None))
    check(tiny_config(tmp_path, save_best=True, n_train=None, best_detector="none"))
    with pytest.raises(SettingsError, match="--best-detector, --best-coverage: the detector of the pipeline "
                                            "--save-best writes; add --save-best"):
        check(tiny_config(tmp_path, best_detector="msp", best_coverage=0.8))


def test_too_few_images_for_the_detectors_threshold_stop_the_run_before_any_extraction(tmp_path):
    # digits' training split: 1437 images; 1400 for training leave 37, and coverage 0.99 needs 100
    with pytest.raises(SettingsError, match=r"needs 100 training images outside the training subset, and "
                                            r"--n-train 1400 leaves 37 of 1437: lower --n-train or --best-coverage"):
        run(tiny_config(tmp_path, save_best=True, n_train=1400, best_coverage=0.99), log=lambda *_: None)
    assert not any((tmp_path / "cache").rglob("*.npy")) and not (tmp_path / "runs" / "tiny").exists()


# -- end to end: a tiny run, its pipeline evaluated, its card printed, exported --------------------------------


def _chosen(out: Path) -> tuple[dict, dict, str, str]:
    results = json.loads((out / "results.json").read_text())
    card = Pipeline.load(out / PIPELINE_FILE).card
    return results, card, card["head"], str(card["replicate"])


def _evaluate(capsys, *args) -> dict:
    capsys.readouterr()
    assert main(["evaluate", *map(str, args)]) == 0
    return json.loads(capsys.readouterr().out)


def _predicted(capsys, pipeline: Path, folder: Path) -> dict[str, str]:
    capsys.readouterr()
    assert main(["predict", str(pipeline), str(folder)]) == 0
    # "name<TAB>class probability": class names may hold spaces (Fashion-MNIST's "Ankle boot")
    return {Path(name).name: rest.rsplit(" ", 1)[0]
            for name, rest in (line.split("\t") for line in capsys.readouterr().out.splitlines())}


def _onnx_agrees_with_predict(capsys, tmp: Path, pipeline: Path, images: np.ndarray, shape: list[str]) -> Path:
    """`vfe export` + ONNX Runtime gives the classes `vfe predict` prints, on `images` written as PNG files; the
    folder of those files."""
    import onnxruntime as ort
    from PIL import Image

    folder = tmp / "to-predict"
    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(folder / f"{i:03d}.png")
    onnx_file = tmp / "best.onnx"
    assert main(["export", str(pipeline), "--out", str(onnx_file), "--input-shape", *shape]) == 0
    probs = ort.InferenceSession(str(onnx_file)).run(None, {"images": images})[0]
    names = Pipeline.load(pipeline).class_names
    assert _predicted(capsys, pipeline, folder) == {f"{i:03d}.png": names[k] for i, k in enumerate(probs.argmax(1))}
    return folder


@pytest.fixture(scope="module", params=["frozen", "reference"])
def digits_best(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"best-{request.param}")
    extra = {"protocol": "reference", "finetune_epochs": 1} if request.param == "reference" else {}
    out = run(tiny_config(tmp, heads=["linear", "vfe"], save_best=True, **extra), log=lambda *_: None)
    return tmp, out, request.param


@pytest.mark.slow
def test_digits_best_pipeline_scores_what_the_run_measured(digits_best, capsys):
    tmp, out, protocol = digits_best
    results, card, head, r = _chosen(out)
    assert set(card["selection"]["heads"]) == {"linear", "vfe"}
    pipe = Pipeline.load(out / PIPELINE_FILE)
    name, how = auto_detector(results, head, r)  # --best-detector's default
    assert pipe.detector.name == name and how.startswith("--best-detector auto: the highest worst-case AUROC")
    assert card == {**build_card(results, head, r), "selection": card["selection"],
                    "detector": detector_card(results, head, r, pipe.detector, how)}
    assert (out / CARD_FILE).read_text() == card_markdown(card)
    fresh = tmp / f"fresh-cache-{protocol}"  # features computed again from the images, not read from the run's
    got = _evaluate(capsys, out / PIPELINE_FILE, "digits", "--n-test", 100, "--cache-dir", fresh, "--corruptions",
                    "gaussian_noise", "defocus_blur", "--severities", 1, 5)
    ran = results["clean"][head][r]
    # equal accuracy; NLL and ECE bit for bit under the frozen protocol, within 1e-4 under the reference one,
    # whose run fed the top float16 activations cached at the cut (the pipeline runs the network in float32)
    assert got["accuracy"] == ran["accuracy"]
    tolerance = 0 if protocol == "frozen" else 1e-4
    assert abs(got["nll"] - ran["nll"]) <= tolerance and abs(got["ece"] - ran["ece"]) <= tolerance
    assert got["corruptions"]["accuracy"] == results["corruptions"]["per_head"][head][r]["accuracy"]
    assert got["corruptions"]["per_family"] == card["corruptions"]["per_family"]
    assert got["corruptions"]["mean_accuracy"] == pytest.approx(card["corruptions"]["mean_accuracy"], abs=1e-12)


@pytest.mark.slow
def test_digits_best_pipeline_abstains_with_a_threshold_from_training_images_it_never_saw(digits_best):
    _, out, protocol = digits_best
    results, card, _, r = _chosen(out)
    pipe = Pipeline.load(out / PIPELINE_FILE)
    detector = pipe.detector
    assert detector.coverage == 0.9  # --best-coverage's default
    seed = results["setting"]["replicate_seeds"][int(r)]
    pool = load_train_test("digits")[0]  # the run's training split (--data-seed 0)
    train = balanced_subset(pool, 300, seed, "train")  # the replicate's training subset
    in_train = {image.tobytes() for image in train.images}
    _, validation = detection_split(pool, 300, seed, 0.9)
    assert len(validation) == min(1000, len(pool) - 300) == len(detector.validation_scores)
    assert not any(image.tobytes() in in_train for image in validation.images)
    # the validation images' scores, recomputed from the images through the saved pipeline; under the reference
    # protocol the run's top read float16 activations cached at the cut (the pipeline runs float32 throughout),
    # which moves squared Mahalanobis distances by up to 0.3 % (measured)
    scores = detector.score(pipe.head, pipe.features(validation.images))
    rtol = 1e-5 if protocol == "frozen" else 1e-2
    np.testing.assert_allclose(np.sort(scores), np.sort(detector.validation_scores), rtol=rtol)
    answered = int(np.sum(detector.validation_scores <= detector.threshold))
    assert answered == math.ceil(0.9 * len(validation))  # the threshold answers 90 % of them
    assert card["detector"]["threshold"] == detector.threshold and card["detector"]["validation_images"] == 1000


@pytest.mark.slow
def test_digits_best_pipeline_prints_its_card_and_exports(digits_best, capsys, tmp_path):
    _, out, protocol = digits_best
    capsys.readouterr()
    assert main(["predict", str(out / PIPELINE_FILE), "--card"]) == 0
    assert capsys.readouterr().out == card_markdown(Pipeline.load(out / PIPELINE_FILE).card) + "\n"
    if protocol == "frozen":
        from vfe.data import load_train_test

        _onnx_agrees_with_predict(capsys, tmp_path, out / PIPELINE_FILE, load_train_test("digits")[1].images[:40],
                                  ["8", "8", "1"])


@pytest.mark.slow
def test_a_pipeline_without_a_card_says_so_in_one_line(tmp_path, capsys):
    from vfe.api import fit_pipeline

    pipe, _ = fit_pipeline("digits", head="linear", image_size=32, n_train=100, cache_dir=str(tmp_path / "c"),
                           progress=False)
    assert pipe.card is None
    path = pipe.save(tmp_path / "plain.safetensors")
    assert Pipeline.load(path).card is None
    capsys.readouterr()
    assert main(["predict", str(path), "--card"]) == 0
    assert capsys.readouterr().out == f"{path}: no robustness card (only pipelines saved by vfe run --save-best " \
                                      "carry one)\n"
    assert main(["predict", str(path), "x.png", "--card"]) == 2  # --card takes no images
    assert "give no images with it" in capsys.readouterr().err
