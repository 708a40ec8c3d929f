"""A realistic run's results for the report tests, built by the real stages on scikit-learn digits.

Real heads (linear and VFE, 3 replicates, each on its own training subset with its own seed) are fitted on the
64-d digit features; clean metrics come from the clean stage; the corruption numbers come from the heads on
noised features; adversarial (per-image correctness on each replicate's own attacked images) and OOD numbers
are generated here. Everything then goes through the real summary functions (corruption_summary,
attack_intervals, summarise), as in `vfe.experiment.run.run`, and the results carry `report_inputs` as the run
stores them: the report sees only the results.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split

from vfe.data.types import ImageSet
from vfe.experiment.clean import evaluate_clean
from vfe.experiment.config import BackboneSettings, DataSettings, HeadSettings
from vfe.experiment.fit import fit_heads
from vfe.experiment.replicates import FIXED, REDRAWN, replicates
from vfe.experiment.run_settings import RunSettings
from vfe.experiment.stages.adversarial.settings import AttackSettings
from vfe.experiment.stages.corruptions.stage import corruption_summary
from vfe.experiment.summary import summarise
from vfe.experiment.sweep import summarise_cells
from vfe.io import read_json, write_json
from vfe.report.inputs import report_inputs
from vfe.robustness.calibration import probability_metrics
from vfe.robustness.stats import attack_intervals

HEADS = ["linear", "vfe"]
REPLICATES = replicates(0, 3)
N_ATTACKED = 64
HEAD_PARAMS = {"linear": {"epochs": 20, "lr": 0.01},
               "vfe": {"encoder_units": 64, "latent_dim": 16, "decoder_units": 64, "recon_weight": 100.0,
                       "vae_epochs": 30, "vae_lr": 0.003, "epochs": 20, "lr": 0.01, "n_samples": 4}}


def digits_test_set() -> tuple[np.ndarray, np.ndarray, np.ndarray, ImageSet]:
    """Digit features split 70/30, and the test images as 32x32 uint8 (the corruptions' minimum size)."""
    X, y = load_digits(return_X_y=True)
    train_idx, test_idx = train_test_split(np.arange(len(y)), test_size=0.3, random_state=0, stratify=y)
    X = (X / 16.0).astype(np.float32)
    images = np.kron(X.reshape(-1, 8, 8), np.ones((4, 4))) * 255
    test = ImageSet(images[test_idx].round().astype(np.uint8), y[test_idx], [str(d) for d in range(10)],
                    source="digits-32px")
    return X[train_idx], y[train_idx], X[test_idx], test


def _corrupted_metrics(models: dict, X: np.ndarray, y: np.ndarray, names: list[str], severities: list[int]) -> dict:
    """{(head, replicate): {corruption: {severity: metrics}}} from the real heads on noised features."""
    table: dict = {key: {} for key in models}
    for i, name in enumerate(names):
        strength = 0.05 + 0.03 * (i % 5)  # families differ in how hard they are
        for severity in severities:
            rng = np.random.default_rng(1000 * i + severity)
            Xc = np.clip(X + rng.normal(0, strength * severity, X.shape), 0, 1).astype(np.float32)
            for key, model in models.items():
                table[key].setdefault(name, {})[severity] = probability_metrics(model.predict_proba(Xc), y)
    return table


def _adversarial(clean: dict, rng: np.random.Generator) -> dict:
    """Per-replicate attack results shaped like vfe.experiment.stages.adversarial.stage's, with per-image correctness: each
    replicate attacks its own N_ATTACKED images (a hardness per image), which every head of the replicate
    shares; a head gets an image right while its hardness is below the head's accuracy under the attack. The
    sampling VFE head keeps part of its accuracy under the naive attack only (gradient masking); for the
    deterministic linear head EOT is the plain attack, so its "_eot" results repeat the plain ones."""
    hardness = {r.index: rng.random(N_ATTACKED) for r in REPLICATES}
    out: dict = {}
    for (head, r), metrics in clean.items():
        acc, samples = metrics["accuracy"], head == "vfe"
        accuracy = {"clean": acc}
        for norm, budgets in (("linf", (("2/255", 0.3), ("8/255", 0.85))), ("l2", (("0.25", 0.2), ("0.5", 0.6)))):
            for eps, drop in budgets:
                eot = acc * (1 - drop) + rng.normal(0, 0.01)
                naive = acc * (1 - drop * (0.4 if samples else 1.0)) + rng.normal(0, 0.01)
                if norm == "linf":
                    accuracy[f"fgsm_linf_{eps}"] = max(naive, eot) + 0.05
                accuracy[f"pgd_{norm}_{eps}"] = naive
                accuracy[f"pgd_{norm}_{eps}_eot"] = eot if samples else naive
        correct = {k: hardness[r] < v for k, v in accuracy.items()}
        out.setdefault(head, {})[str(r)] = {
            "accuracy": {k: float(c.mean()) for k, c in correct.items()},
            "correct": {k: "".join("1" if x else "0" for x in c) for k, c in correct.items()},
            "n": N_ATTACKED, "samples_randomly": samples, "steps": 5, "n_eot": 8}
    return out


def _fpr_at_95_tpr(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    threshold = np.quantile(in_scores, 0.05)  # 95 % of in-distribution images score above it
    return float((out_scores >= threshold).mean())


def _ood(models: dict, clean_probs: dict, X_test: np.ndarray) -> dict:
    """Real OOD scores of the heads: test digits against the same digits with shuffled pixels."""
    rng = np.random.default_rng(0)
    X_ood = np.stack([rng.permutation(x) for x in X_test]).astype(np.float32)
    per_head: dict = {}
    for (head, r), model in models.items():
        msp_in, msp_out = clean_probs[(head, r)].max(1), model.predict_proba(X_ood).max(1)
        labels = np.r_[np.ones(len(msp_in)), np.zeros(len(msp_out))]
        row = {"msp_auroc_shuffled": float(roc_auc_score(labels, np.r_[msp_in, msp_out])),
               "msp_fpr95_shuffled": _fpr_at_95_tpr(msp_in, msp_out)}
        if head == "vfe":
            err_in, err_out = model.reconstruction_error(X_test), model.reconstruction_error(X_ood)
            row["recon_auroc_shuffled"] = float(roc_auc_score(labels, -np.r_[err_in, err_out]))
        per_head.setdefault(head, {})[str(r)] = row
    return {"per_head": per_head}


@pytest.fixture(scope="session")
def report_run(tmp_path_factory):
    """The results of a small but complete run, as its results.json holds them."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: extra threads only contend on a shared machine
    try:
        results = _build_run()
    finally:
        torch.set_num_threads(threads)
    path = tmp_path_factory.mktemp("run") / "results.json"
    write_json(path, results)
    return read_json(path)


def _build_run():
    from vfe.robustness.corruptions import BENCHMARK_CORRUPTIONS, EXTRA_CORRUPTIONS

    X_train, y_train, X_test, test = digits_test_set()
    settings = RunSettings(name="report-test", progress=False,
                           data=DataSettings(dataset="digits", n_train=len(y_train), n_test=len(test)),
                           backbone=BackboneSettings(backbone="identity", weights="none", image_size=32),
                           heads=HeadSettings(heads=HEADS, replicates=len(REPLICATES), head_params=HEAD_PARAMS),
                           attacks=AttackSettings(n_attack=N_ATTACKED, n_eot=8, attack_steps=5))
    models, fit_seconds = {}, {}
    for rep in REPLICATES:  # each replicate: its own training subset (90 %) and seed
        rows = np.random.default_rng(rep.seed).permutation(len(y_train))[:len(y_train) * 9 // 10]
        fitted, seconds = fit_heads(settings.heads, HEADS, X_train[rows], y_train[rows], rep.index, rep.seed,
                                    progress=False)
        models.update(fitted)
        for head, s in seconds.items():
            fit_seconds.setdefault(head, []).extend(s)
    clean, clean_probs = evaluate_clean(models, X_test, test.labels)
    names = list(BENCHMARK_CORRUPTIONS) + list(EXTRA_CORRUPTIONS)
    severities = settings.corruptions.severities
    per_model = _corrupted_metrics(models, X_test, test.labels, names, severities)
    results = {
        "setting": {"dataset": "digits", "backbone": "identity", "weights": "none", "image_size": 32,
                    "feature_dim": X_train.shape[1], "n_train": len(y_train) * 9 // 10, "n_test": len(test),
                    "replicates": len(REPLICATES), "replicate_seeds": [r.seed for r in REPLICATES],
                    "redrawn_per_replicate": list(REDRAWN), "fixed_across_replicates": list(FIXED), "heads": HEADS,
                    "data_seed": 0, "torch": "2.14.1", "machine": "x86_64, 1 threads", "device": "cpu"},
        "config": settings.to_dict(),
        "clean": {h: {str(r.index): clean[(h, r.index)] for r in REPLICATES} for h in HEADS},
        "fit_seconds": fit_seconds,
        "histories": {f"{h}/replicate{r}": m.history_ for (h, r), m in models.items()},
        "corruptions": corruption_summary(per_model, clean, severities),
        "corruption_seconds": {n: 0.5 for n in names},
        "adversarial": _adversarial(clean, np.random.default_rng(7)),
        "ood": _ood(models, clean_probs, X_test),
    }
    results["adversarial_intervals"] = {h: attack_intervals(rows) for h, rows in results["adversarial"].items()}
    results["summary"] = summarise(results)
    results["sweep"] = summarise_cells([
        {"head": h, "params": HEAD_PARAMS[h], "train_size": None, "n_train": len(y_train) * 9 // 10,
         "seed": REPLICATES[r].seed, "fit_seconds": fit_seconds[h][r], "metrics": clean[(h, r)]} for h, r in models])
    results["timings"] = {"load data": 0.2, "fit heads": float(sum(map(sum, fit_seconds.values()))),
                          "corruptions (19 x 5 severities)": 190.0, "total": 412.5}
    results.update(report_inputs(models, test, clean_probs))
    return results
