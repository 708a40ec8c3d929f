"""Heads from outside vfe: a scikit-learn classifier written here (numpy, no vfe class) and a `Head` subclass,
each benchmarked through every stage of `vfe run`, by `--heads module:Class` and by `vfe.api.benchmark`; what
the user gets wrong (the module, the attribute, the class) is one line naming the flag."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from own_heads import restored_registry
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression

from vfe.api import benchmark, evaluate_pipeline
from vfe.cli import main
from vfe.errors import SettingsError
from vfe.heads import register_head
from vfe.heads.base import Head
from vfe.heads.registry import check_params, expand_heads, make_head
from vfe.pipeline import Pipeline

HERE = __name__  # the module name pytest imported this file under: what `--heads HERE:Class` imports
TINY = {"dataset": "digits", "image_size": 32, "n_train": 300, "n_test": 100, "replicates": 1,
        "corruptions": ["gaussian_noise"], "severities": [3], "n_attack": 8, "attack_eps_linf": [8 / 255],
        "attack_eps_l2": [1.0], "attack_steps": 3, "n_eot": 2, "progress": False}


def _squared_distances(X, centroids):
    return ((X[:, None, :] - centroids[None]) ** 2).sum(-1)


class CentroidProbabilities(torch.nn.Module):
    """features -> softmax over negative scaled squared distances to the class centroids (what attacks differentiate)."""

    def __init__(self, centroids: np.ndarray | torch.Tensor, temperature: float):
        super().__init__()
        self.register_buffer("centroids", torch.as_tensor(centroids, dtype=torch.float32))
        self.temperature = temperature

    def forward(self, features: torch.Tensor, n_samples: int | None = None) -> torch.Tensor:
        scaled = _squared_distances(features, self.centroids) / (self.temperature * features.shape[1])
        return torch.softmax(-scaled, 1)


class NumpyCentroid(ClassifierMixin, BaseEstimator):
    """Nearest class centroid in numpy: a scikit-learn classifier that knows nothing of vfe."""

    def __init__(self, temperature: float = 1.0, random_state: int = 0):
        self.temperature = temperature
        self.random_state = random_state

    def fit(self, X, y):
        X = np.asarray(X, np.float32)
        self.classes_, index = np.unique(y, return_inverse=True)
        self.centroids_ = np.stack([X[index == k].mean(0) for k in range(len(self.classes_))])
        return self

    def predict_proba(self, X) -> np.ndarray:
        scaled = _squared_distances(np.asarray(X, np.float32), self.centroids_) / (self.temperature * X.shape[1])
        weights = np.exp(scaled.min(1, keepdims=True) - scaled)
        return weights / weights.sum(1, keepdims=True)

    def predict(self, X) -> np.ndarray:
        return self.classes_[self.predict_proba(X).argmax(1)]

    def probability_module(self) -> torch.nn.Module:
        return CentroidProbabilities(self.centroids_, self.temperature)


class ShrunkCentroidHead(Head):
    """Class centroids shrunk towards the overall mean: a vfe Head, registered by the decorator in a test."""

    def __init__(self, shrinkage: float = 0.5, random_state: int = 0):
        self.shrinkage = shrinkage
        self.random_state = random_state

    def _fit(self, X: np.ndarray, y: np.ndarray) -> None:
        means = np.stack([X[y == k].mean(0) for k in range(len(self.classes_))])
        self.centroids_ = torch.from_numpy((1 - self.shrinkage) * means + self.shrinkage * X.mean(0))

    def _predict_proba(self, X: np.ndarray) -> np.ndarray:
        return self.probability_module()(torch.from_numpy(X)).numpy()

    def probability_module(self) -> torch.nn.Module:
        return CentroidProbabilities(self.centroids_, 1.0)

    def _get_state(self) -> dict[str, torch.Tensor]:
        return {"centroids": self.centroids_}

    def _set_state(self, tensors: dict[str, torch.Tensor], n_features: int) -> None:
        self.centroids_ = tensors["centroids"]  # a tensor: Pipeline.load checks the header on the meta device


class WithoutFit(BaseEstimator):
    """Gives probabilities, but cannot be fitted (nor predict): the benchmark refuses it at registration."""

    def __init__(self, random_state: int = 0):
        self.random_state = random_state

    def predict_proba(self, X):
        return np.full((len(X), 2), 0.5)


@pytest.fixture(autouse=True)
def _own_heads():
    with restored_registry():
        yield


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One feature cache for the module's runs: the second run reads the features the first extracted."""
    return tmp_path_factory.mktemp("cache")


def _flags(settings: dict) -> list[str]:
    """Settings as the `vfe run` flags that give them."""
    out = []
    for key, value in settings.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            out.append(flag if value else "--no-" + flag[2:])
        else:
            out += [flag, *map(str, value if isinstance(value, list) else [value])]
    return out


def _holds(results: dict, head: str) -> None:
    """`head` is in every section a reader looks at, with numbers a nearest-centroid classifier earns."""
    assert head in results["setting"]["heads"]
    assert results["clean"][head]["0"]["accuracy"] > 0.3  # 10 classes: chance is 0.1
    assert set(results["corruptions"]["per_head"][head]["0"]["accuracy"]) == {"gaussian_noise"}
    adv = results["adversarial"][head]["0"]["accuracy"]
    assert adv["pgd_linf_8/255"] <= adv["clean"]
    assert results["summary"]["table"][head]["clean_accuracy"]["n"] == 1
    assert head in results["summary"]["vs_baseline"]  # paired with linear
    assert head in {row["head"] for row in results["leaderboard"]}


@pytest.mark.slow
def test_vfe_run_takes_a_classifier_as_module_and_class(tmp_path, cache, capsys):
    ref = f"{HERE}:NumpyCentroid"
    argv = ["run", "--name", "own", "--runs-dir", str(tmp_path), "--cache-dir", str(cache), *_flags(TINY),
            "--heads", "linear", ref, "--head-param", "NumpyCentroid.temperature=0.5"]
    assert main(argv) == 0, capsys.readouterr().err
    results = json.loads((tmp_path / "own" / "results.json").read_text())
    _holds(results, "NumpyCentroid")
    assert results["config"]["heads"] == ["linear", ref]  # the run says how to run it again
    assert results["config"]["head_params"]["NumpyCentroid"] == {"temperature": 0.5}
    assert "NumpyCentroid" in (tmp_path / "own" / "report.md").read_text()


@pytest.mark.slow
def test_api_benchmark_runs_a_registered_head_beside_linear(tmp_path, cache):
    register_head("shrunk", about="class centroids shrunk to the mean")(ShrunkCentroidHead)
    results, folder = benchmark(ShrunkCentroidHead, runs_dir=str(tmp_path), cache_dir=str(cache),
                                head_params={"shrunk": {"shrinkage": 0.2}}, log=lambda *_: None, **TINY)
    assert folder == tmp_path / "benchmark-shrunk" and results["setting"]["heads"] == ["linear", "shrunk"]
    _holds(results, "shrunk")


def test_a_registered_classifier_is_made_and_checked_as_a_built_in_head(digits_features):
    X_train, X_test, y_train, y_test = digits_features
    assert expand_heads([f"{HERE}:NumpyCentroid", "linear"]) == ["NumpyCentroid", "linear"]
    head = make_head("NumpyCentroid", temperature=0.5, random_state=3).fit(X_train, y_train)
    assert head.score(X_test, y_test) > 0.85  # nearest centroid on the 8x8 digits
    probs = head.probability_module()(torch.from_numpy(X_test)).numpy()
    assert np.allclose(probs, head.predict_proba(X_test), atol=1e-5)  # what attacks differentiate is what it predicts
    with pytest.raises(SettingsError, match="did you mean 'temperature'"):
        check_params("NumpyCentroid", {"temprature": 2.0})
    with pytest.raises(SettingsError, match="'temperature' must be float"):
        check_params("NumpyCentroid", {"temperature": "hot"})


def logistic_regression(random_state: int) -> LogisticRegression:
    """A factory of unfitted classifiers, seeded by the benchmark."""
    return LogisticRegression(C=0.5, max_iter=200, random_state=random_state)


def test_a_factory_of_classifiers_is_a_head_too(digits_features, tmp_path):
    X_train, X_test, y_train, y_test = digits_features
    # registered, then refused before any work: it has no probability_module() for the attacks
    with pytest.raises(SettingsError, match="--n-attack: logreg has no probability_module"):
        benchmark(logistic_regression, head_name="logreg", runs_dir=str(tmp_path), **TINY)
    head = make_head("logreg", random_state=1).fit(X_train, y_train)
    assert head.estimator_.random_state == 1 and head.score(X_test, y_test) > 0.9


def _one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("ref, says", [
    ("no_such_module_for_vfe:Head", "--heads no_such_module_for_vfe:Head: cannot import 'no_such_module_for_vfe'"),
    (f"{HERE}:NoSuchClass", f"--heads {HERE}:NoSuchClass: module '{HERE}' has no attribute 'NoSuchClass'"),
    (f"{HERE}:WithoutFit", "WithoutFit lacks what the benchmark calls: fit(); predict()"),
    (f"{HERE}:HERE", "HERE is a str, not a class"),
    ("sklearn.neighbors:NearestCentroid", "a random_state parameter of __init__"),
    ("sklearn.linear_model:LogisticRegression", "--n-attack: LogisticRegression has no probability_module()"),
])
def test_a_head_that_cannot_run_is_one_line_naming_the_flag(tmp_path, capsys, ref, says):
    err = _one_line_error(capsys, ["run", "--runs-dir", str(tmp_path), "--heads", "linear", ref])
    assert says in err


def test_ray_workers_never_see_a_head_of_your_own(tmp_path, capsys):
    err = _one_line_error(capsys, ["run", "--runs-dir", str(tmp_path), "--engine", "ray", "--n-attack", "0",
                                   "--heads", "linear", f"{HERE}:NumpyCentroid"])
    assert "--engine ray: NumpyCentroid registered in this process only" in err


def test_vfe_fit_names_its_own_flag_and_needs_a_savable_head(tmp_path, capsys):
    out = str(tmp_path / "model.safetensors")
    err = _one_line_error(capsys, ["fit", "digits", "--head", f"{HERE}:Nope", "--out", out])
    assert err.endswith(f"--head {HERE}:Nope: module '{HERE}' has no attribute 'Nope'")
    err = _one_line_error(capsys, ["fit", "digits", "--head", f"{HERE}:NumpyCentroid", "--out", out])
    assert "--head NumpyCentroid: a pipeline file holds the head's state as tensors" in err


def test_vfe_fit_saves_a_head_of_your_own_that_loads_where_it_is_registered(tmp_path, capsys):
    out = tmp_path / "shrunk.safetensors"
    assert main(["fit", "digits", "--head", f"{HERE}:ShrunkCentroidHead", "--param", "shrinkage=0.1", "--n-train",
                 "100", "--image-size", "32", "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]) == 0
    pipe = Pipeline.load(out)  # this process registered the class: the file names it
    assert isinstance(pipe.head, ShrunkCentroidHead) and pipe.head.shrinkage == 0.1
    scored = evaluate_pipeline(out, "digits", n_test=100, cache_dir=str(tmp_path / "cache"), progress=False)
    assert scored["accuracy"] > 0.3  # 10 classes: chance is 0.1


def test_a_taken_name_or_a_name_the_flags_cannot_hold_is_refused():
    with pytest.raises(SettingsError, match="'linear' is taken by vfe.heads.linear:LinearHead"):
        register_head("linear")(NumpyCentroid)
    with pytest.raises(SettingsError, match="use letters, digits"):
        register_head("my.centroid")(NumpyCentroid)  # --head-param my.centroid.key=... could not name it
