"""A pipeline that abstains: `vfe fit --detector NAME --coverage C` chooses a threshold on held-out validation
images and saves it in the pipeline (checksummed); `vfe predict --coverage C` prints `abstain` and the score
for images past it. The issue's acceptance test: noise images are abstained on, clean ones answered, on
grayscale digits and colour photos."""
from __future__ import annotations

import json
import re
import shlex
import struct
from pathlib import Path

import numpy as np
import pytest
from colour_data import CLASS_NAMES, write_colour_folder
from PIL import Image
from safetensors.torch import load_file, save_file

from vfe import api
from vfe.api import fit_pipeline, predict_files
from vfe.backbones import create_backbone
from vfe.cli import build_parser, main
from vfe.data import load_train_test
from vfe.data.split import balanced_subset
from vfe.data.types import ImageSet
from vfe.errors import PipelineFileError, SettingsError
from vfe.experiment.detection import detection_split
from vfe.heads import make_head
from vfe.pipeline import Pipeline, read_metadata, sealed_metadata
from vfe.robustness.detectors import DETECTORS, Abstained, fit_detector
from vfe.robustness.selective import threshold_for_coverage

LINEAR = ["--head", "linear", "--param", "epochs=40", "--param", "lr=0.003", "--image-size", "32"]


def write_noise(folder, n: int = 6, size: int = 32, seed: int = 0) -> list:
    """Uniform RGB noise PNGs: nothing like any training image."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = [folder / f"noise{i}.png" for i in range(n)]
    for path in paths:
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    return paths


def predicted(capsys) -> dict[str, list[str]]:
    """{file name: the rest of its line, split on tabs} of what vfe predict printed."""
    return {line.split("\t")[0].rsplit("/", 1)[-1]: line.split("\t")[1:]
            for line in capsys.readouterr().out.strip().splitlines()}


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory):
    """(pipeline file, folder of clean test digits, folder of noise) for a linear head on efficientnet_lite0 at
    32 px, with a Mahalanobis detector for 90 % coverage chosen on 100 validation images."""
    tmp = tmp_path_factory.mktemp("abstain-digits")
    out = tmp / "digits.safetensors"
    assert main(["fit", "digits", *LINEAR, "--n-train", "300", "--detector", "mahalanobis", "--coverage", "0.9",
                 "--n-val", "100", "--cache-dir", str(tmp / "cache"), "--out", str(out)]) == 0
    clean = tmp / "clean"
    clean.mkdir()
    test = load_train_test("digits")[1]
    for i in range(20):
        Image.fromarray(test.images[i, :, :, 0]).save(clean / f"digit{i:02d}.png")
    return out, clean, write_noise(tmp / "noise")


# -- the acceptance test ---------------------------------------------------------------------------------

def test_predict_abstains_on_noise_and_answers_clean_digits(digits_model, capsys):
    out, clean, noise = digits_model
    capsys.readouterr()
    assert main(["predict", str(out), str(clean), *map(str, noise), "--coverage", "0.9"]) == 0
    lines = predicted(capsys)
    assert all(lines[p.name][0] == "abstain" for p in noise)
    detector, score, above, threshold = lines[noise[0].name][1].split(" ")  # "mahalanobis 1.9e+05 > 118.9"
    assert detector == "mahalanobis" and above == ">" and float(score) > float(threshold)
    answered = [name for name, rest in lines.items() if name.startswith("digit") and rest[0] != "abstain"]
    assert len(answered) >= 16  # 90 % coverage on validation; 20 clean test digits
    assert all(lines[name][0].split(" ")[0] in map(str, range(10)) for name in answered)


def test_predict_abstains_on_noise_and_answers_clean_colour_photos(tmp_path, capsys):
    """Colour crops of four photos. On them, with 60 training images, the Mahalanobis distance (like the VFE's
    reconstruction error) does not flag uniform noise, whose features are small (docs/abstention.md); the
    head's max softmax probability does."""
    folder = write_colour_folder(tmp_path / "photos", n_train=30, n_test=5)
    out = tmp_path / "photos.safetensors"
    assert main(["fit", str(folder), *LINEAR, "--n-train", "60", "--detector", "msp", "--n-val", "60",
                 "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]) == 0
    assert "answering 0.9000 of 60 validation images (target coverage 0.9)" in capsys.readouterr().out
    noise = write_noise(tmp_path / "noise")
    assert main(["predict", str(out), str(folder / "test"), *map(str, noise), "--coverage", "0.9"]) == 0
    lines = predicted(capsys)
    assert len(lines) == 4 * 5 + len(noise)
    assert all(lines[p.name][0] == "abstain" and lines[p.name][1].startswith("msp -") for p in noise)
    answered = [rest for name, rest in lines.items() if not name.startswith("noise") and rest[0] != "abstain"]
    assert len(answered) >= 16 and all(rest[0].split(" ")[0] in CLASS_NAMES for rest in answered)


# -- the threshold and the validation images --------------------------------------------------------------

def test_the_threshold_gives_the_target_coverage_on_the_validation_scores(digits_model):
    detector = Pipeline.load(digits_model[0]).detector
    scores = detector.validation_scores
    assert detector.name == "mahalanobis" and len(scores) == 100 and len(np.unique(scores)) == 100
    assert detector.threshold == np.sort(scores)[89]  # the 90th of 100: 90 accepted, 10 past it
    assert np.sum(scores <= detector.threshold) == 90 and detector.validation_coverage == 0.9
    meta = read_metadata(digits_model[0])["detector"]
    assert meta == {"name": "mahalanobis", "coverage": 0.9, "threshold": detector.threshold,
                    "validation_coverage": 0.9, "n_validation": 100}


def test_another_coverage_at_predict_time_rederives_the_threshold(digits_model):
    out, clean, _ = digits_model
    pipe = Pipeline.load(out)
    detector = pipe.detector
    assert detector.threshold_at(None) == detector.threshold_at(0.9) == detector.threshold
    assert detector.threshold_at(0.5) == threshold_for_coverage(detector.validation_scores, 0.5) \
        == np.sort(detector.validation_scores)[49]
    at = {c: [isinstance(r, Abstained) for _, r in predict_files(pipe, [clean], coverage=c)] for c in (0.5, 0.9)}
    assert sum(at[0.5]) > sum(at[0.9]) and all(a >= b for a, b in zip(at[0.5], at[0.9]))  # never fewer


def pool_of(labels) -> ImageSet:
    """An ImageSet whose image i holds i, so the subsets a split draws can be told apart."""
    index = np.arange(len(labels))
    images = np.stack([index % 256, index // 256], -1).astype(np.uint8).reshape(-1, 1, 2, 1)
    return ImageSet(images, np.asarray(labels), [f"c{k}" for k in range(max(labels) + 1)])


def ids(data: ImageSet) -> set[int]:
    return {int(a) + 256 * int(b) for a, b in data.images.reshape(-1, 2)}


def test_validation_images_are_a_seeded_balanced_draw_outside_the_training_subset():
    pool = pool_of([k for k in range(3) for _ in range(100)])  # 3 classes of 100
    train, val = detection_split(pool, 60, seed=4, coverage=0.9, n_val=30)
    assert ids(train) == ids(balanced_subset(pool, 60, 4, "train"))  # the training images of a fit without one
    assert not ids(train) & ids(val) and len(val) == 30 and np.bincount(val.labels).tolist() == [10, 10, 10]
    again, other = detection_split(pool, 60, 4, 0.9, 30)[1], detection_split(pool, 60, 5, 0.9, 30)[1]
    assert ids(again) == ids(val) and ids(other) != ids(val)
    assert len(detection_split(pool, 60, 4, 0.9)[1]) == 240  # by default every image left (<= 1000)
    train, val = detection_split(pool, None, seed=0, coverage=0.9)  # no --n-train: a fifth, then train on the rest
    assert len(val) == 60 and ids(train) == set(range(300)) - ids(val)
    assert ids(detection_split(pool, None, seed=1, coverage=0.9)[1]) != ids(val)  # seeded
    for n_train, n_val, needed in ((290, None, 20), (60, 10, 20), (60, 241, 20)):
        with pytest.raises(SettingsError, match=f"needs {needed} to .* validation images") as err:
            detection_split(pool, n_train, 0, 0.9, n_val)
        assert "\n" not in str(err.value) and "--n-val" in str(err.value)
    with pytest.raises(SettingsError, match="needs 100 to 240"):  # at 99 %, 100 images leave one past it
        detection_split(pool, 60, 0, 0.99, 50)


# -- saving and loading -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_vfe():
    """(backbone, VFE head, training features and labels, validation features): test_resnet, random weights."""
    digits = load_train_test("digits")[0]
    backbone = create_backbone("test_resnet", weights="none", image_size=32, device="cpu")
    X = backbone.extract(digits.images[:260], progress=False)
    head = make_head("vfe", vae_epochs=3, epochs=3, latent_dim=8, random_state=0).fit(X[:200], digits.labels[:200])
    return backbone, head, X[:200], digits.labels[:200], X[200:]


@pytest.mark.parametrize("name", list(DETECTORS))
def test_save_and_load_keep_every_detector_bit_identical(tiny_vfe, name, tmp_path):
    backbone, head, X, y, X_val = tiny_vfe
    detector = fit_detector(name, head, X, y, X_val, 0.8)
    path = Pipeline(backbone, head, None, detector).save(tmp_path / f"{name}.safetensors")
    loaded = Pipeline.load(path, device="cpu").detector
    for key in ("validation_scores", "means", "precision"):
        before, after = getattr(detector, key), getattr(loaded, key)
        assert (before is None) == (after is None) == (name != "mahalanobis" and key != "validation_scores")
        if before is not None:
            assert before.dtype == after.dtype == np.float64 and before.tobytes() == after.tobytes()
    assert (loaded.name, loaded.coverage, loaded.threshold) == (name, 0.8, detector.threshold)
    assert loaded.score(head, X_val).tobytes() == detector.score(head, X_val).tobytes()
    assert loaded.validation_coverage == detector.validation_coverage == 0.8  # 60 images: 48 accepted


def tensor_bytes(path, name: str) -> range:
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    start, stop = json.loads(data[8:8 + n])[name]["data_offsets"]
    return range(8 + n + start, 8 + n + stop)


@pytest.mark.parametrize("tensor", ["detector.precision", "detector.validation_scores"])
def test_a_flipped_bit_in_a_detector_tensor_is_the_checksum_error(tiny_vfe, tensor, tmp_path, capsys):
    backbone, head, X, y, X_val = tiny_vfe
    path = Pipeline(backbone, head, None, fit_detector("mahalanobis", head, X, y, X_val, 0.9)).save(
        tmp_path / "p.safetensors")
    data = bytearray(path.read_bytes())
    data[tensor_bytes(path, tensor)[5]] ^= 0x01  # the lowest bit of one float64's mantissa
    path.write_bytes(bytes(data))
    with pytest.raises(PipelineFileError, match=f"checksum mismatch in tensor '{tensor}'"):
        Pipeline.load(path, device="cpu")
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(image)
    assert main(["predict", str(path), str(image), "--coverage", "0.9"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and f"checksum mismatch in tensor '{tensor}'" in err


def test_detector_tensors_that_do_not_fit_its_header_are_refused(tiny_vfe, tmp_path):
    """A file resealed with its checksums but without the Mahalanobis means, or with detector tensors and no
    detector in its header, is refused before anything is built."""
    backbone, head, X, y, X_val = tiny_vfe
    path = Pipeline(backbone, head, None, fit_detector("mahalanobis", head, X, y, X_val, 0.9)).save(
        tmp_path / "p.safetensors")
    tensors, meta = load_file(path), read_metadata(path)
    for name, (kept, document) in {
            "lacks.safetensors": ({k: v for k, v in tensors.items() if k != "detector.means"}, meta),
            "stray.safetensors": (tensors, {k: v for k, v in meta.items() if k != "detector"})}.items():
        save_file(kept, tmp_path / name, metadata=sealed_metadata(json.dumps(document), kept))
        with pytest.raises(PipelineFileError, match="detector"):
            read_metadata(tmp_path / name)


def test_a_pipeline_without_a_detector_loads_and_predict_coverage_says_how_to_fit_one(tiny_vfe, tmp_path,
                                                                                        capsys):
    backbone, head, *_ = tiny_vfe
    path = Pipeline(backbone, head).save(tmp_path / "plain.safetensors")
    assert "detector" not in read_metadata(path) and Pipeline.load(path, device="cpu").detector is None
    assert not [k for k in load_file(path) if k.startswith("detector.")]
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(image)
    assert main(["predict", str(path), str(image)]) == 0
    capsys.readouterr()
    assert main(["predict", str(path), str(image), "--coverage", "0.9"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "no detector" in err and "--detector" in err


# -- mistakes: one line, exit 2, before any work ------------------------------------------------------------

@pytest.fixture
def nothing_read(monkeypatch):
    """Reading an image, the data or a pipeline fails the test: the checks must come first."""
    def fail(*args, **kwargs):
        raise AssertionError("read before the arguments were checked")
    monkeypatch.setattr(api, "read_image", fail)
    monkeypatch.setattr(api, "_load_split", fail)
    monkeypatch.setattr(Pipeline, "load", fail)


@pytest.mark.parametrize("coverage", ["0", "1.5", "x", "1", "-0.2", "nan"])
def test_a_bad_coverage_is_one_line_before_any_image_is_read(coverage, nothing_read, tmp_path, capsys):
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(image)
    out = str(tmp_path / "m.safetensors")
    for argv in (["predict", out, str(image), "--coverage", coverage],
                 ["fit", "digits", "--detector", "msp", "--coverage", coverage, "--out", out]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err == f"vfe {argv[0]}: error: --coverage must be a number strictly between 0 and 1 (e.g. 0.9), " \
                      f"got {coverage!r}\n"


def test_detector_mistakes_in_fit_are_one_line_before_any_work(nothing_read, tmp_path, capsys):
    out = str(tmp_path / "m.safetensors")
    for argv, said in ((["--detector", "vfe-recon", "--head", "linear"], "needs a VFE head (--head vfe)"),
                       (["--detector", "mahalanobi"], "choose one of msp, mahalanobis, vfe-recon, vfe-elbo"),
                       (["--coverage", "0.9"], "give --detector too"),
                       (["--n-val", "50"], "give --detector too"),
                       (["--detector", "msp", "--n-val", "0"], "--n-val must be at least 1")):
        assert main(["fit", "digits", *argv, "--out", out]) == 2
        err = capsys.readouterr().err
        assert said in err and err.count("\n") == 1, err


def test_too_few_validation_images_is_one_line(tmp_path, capsys):
    assert main(["fit", "digits", "--head", "linear", "--n-train", "1430", "--detector", "msp",
                 "--out", str(tmp_path / "m.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "needs 20 to 7 validation images" in err and "lower --n-train" in err and err.count("\n") == 1


def test_help_lists_every_detector_and_the_coverage_flags():
    commands = build_parser()._subparsers._group_actions[0].choices
    fit, predict = commands["fit"].format_help(), commands["predict"].format_help()
    assert all(f"{name}:" in " ".join(fit.split()) for name in DETECTORS)
    assert "--coverage" in fit and "--n-val" in fit and "--coverage" in predict and "abstain" in predict


def test_the_python_api_fits_and_abstains(tmp_path):
    """fit_pipeline(detector=...) and predict_files(coverage=...), on the tiny random backbone (fast)."""
    pipe, _ = fit_pipeline("digits", head="linear", head_params={"epochs": 5}, backbone="test_resnet",
                           weights="none", image_size=32, n_train=200, detector="mahalanobis", coverage=0.8,
                           n_val=50, cache_dir=str(tmp_path / "cache"), progress=False, device="cpu")
    assert pipe.detector.name == "mahalanobis" and pipe.detector.validation_coverage == 0.8
    noise = write_noise(tmp_path / "noise", n=3)
    results = list(predict_files(pipe, noise, coverage=0.8))
    assert all(isinstance(r, Abstained) and r.score > r.threshold == pipe.detector.threshold for _, r in results)
    probs, scores, abstain = pipe.predict_or_abstain(np.zeros((2, 8, 8, 1), np.uint8) + 255)
    assert probs.shape == (2, 10) and scores.shape == abstain.shape == (2,)


# -- the docs page's example -------------------------------------------------------------------------------

DOC = Path(__file__).resolve().parents[1] / "docs" / "abstention.md"


def test_the_docs_example_runs_and_prints_what_the_page_shows(tmp_path, monkeypatch, capsys):
    """Every python and bash block of docs/abstention.md, in order, in one folder; the printed predictions
    abstain on the same files as the page's output block."""
    monkeypatch.chdir(tmp_path)
    blocks = re.findall(r"```(\w+)\n(.*?)```", DOC.read_text(), re.DOTALL)
    namespace: dict = {}
    shown = []
    for kind, code in blocks:
        if kind == "python":
            exec(compile(code, str(DOC), "exec"), namespace)  # noqa: S102 - the doc's own example, as written
        elif kind == "bash":
            for line in code.strip().splitlines():
                assert main(shlex.split(line)[1:]) == 0, line
        elif kind == "text":
            shown = code.strip().splitlines()
    printed = capsys.readouterr().out.splitlines()
    predicted_lines = [line for line in printed if line.startswith("mixed/")][:5]  # the bash block's predict
    expected = [line for line in shown if line.startswith("mixed/")]
    assert [line.split("\t")[:2] if "abstain" in line else line.split("\t")[0] for line in predicted_lines] == \
        [line.split("\t")[:2] if "abstain" in line else line.split("\t")[0] for line in expected]
    assert any(line.startswith("detector mahalanobis: abstains above") for line in printed)


def test_fit_pipeline_with_a_vfe_detector_saves_and_predicts(tmp_path):
    pipe, _ = fit_pipeline("digits", head="vfe", head_params={"vae_epochs": 2, "epochs": 2, "latent_dim": 8},
                           backbone="test_resnet", weights="none", image_size=32, n_train=100, detector="vfe-elbo",
                           coverage=0.75, n_val=40, cache_dir=str(tmp_path / "cache"), progress=False, device="cpu")
    assert pipe.detector.name == "vfe-elbo" and pipe.detector.validation_coverage == 0.75  # 30 of 40
    loaded = Pipeline.load(pipe.save(tmp_path / "vfe.safetensors"), device="cpu")
    images = load_train_test("digits")[1].images[:8]
    before, after = pipe.predict_or_abstain(images), loaded.predict_or_abstain(images)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(before, after))
