"""The robustness card (vfe.card): every number is the results.json value it names, on a hand-made run."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from vfe.card import CardError, build_card, card_markdown, detector_card, family_accuracy
from vfe.experiment.leaderboard import leaderboard
from vfe.experiment.stages.corruptions.stage import corruption_summary
from vfe.experiment.summary import by_head, summarise

SEVERITIES = [1, 5]
CORRUPTIONS = ["gaussian_noise", "defocus_blur", "fog", "speckle_noise"]  # speckle_noise: an extra corruption
FACTOR = {"defocus_blur": 2, "speckle_noise": 0.5}


def hand_made_results(clean: dict[str, list[float]], drop: dict[str, list[float]] | None = None,
                      attack: dict[str, list[float]] | None = None) -> dict:
    """A results.json content with the sections a card and --save-best read: `clean` head -> clean accuracy per
    replicate; `drop` head -> how much accuracy each replicate loses at severity 5 (a fifth of it at 1, twice
    as much on defocus blur, half as much on speckle noise); `attack` head -> accuracy under pgd per replicate (fgsm: 0.1 more). The summary
    and the leaderboard are computed by the run's own functions."""
    drop = drop or {}
    heads = list(clean)
    n_rep = len(next(iter(clean.values())))
    clean_m = {(h, r): {"accuracy": a, "nll": 1.0 - a, "ece": 0.05 + 0.01 * r} for h in heads
               for r, a in enumerate(clean[h])}
    per_model = {}
    for h in heads:
        for r, a in enumerate(clean[h]):
            d = drop.get(h, [0.3] * n_rep)[r]
            per_model[(h, r)] = {c: {s: {"accuracy": max(0.0, a - d * s / 5 * FACTOR.get(c, 1)),
                                         "nll": 1.0, "ece": 0.1} for s in SEVERITIES} for c in CORRUPTIONS}
    adversarial = {h: {str(r): {"accuracy": {"clean": clean[h][r], "pgd_linf_8/255": x,
                                             "fgsm_linf_8/255": min(1.0, x + 0.1)}, "n": 8}
                       for r, x in enumerate(xs)} for h, xs in (attack or {}).items()}
    ood = {"per_head": {h: {str(r): {"selected_auroc_fashion-mnist": 0.7 + 0.01 * r, "msp_auroc_fashion-mnist": 0.6}
                            for r in range(n_rep)} for h in heads}}
    results = {"setting": {"dataset": "digits", "protocol": "frozen", "backbone": "efficientnet_lite0",
                           "weights": "default", "image_size": 32, "n_train": 300, "n_test": 100,
                           "replicates": n_rep, "replicate_seeds": [100 + r for r in range(n_rep)], "data_seed": 0},
               "config": {"corruption_params": "auto"},
               "clean": by_head(clean_m),
               "corruptions": corruption_summary(per_model, clean_m, SEVERITIES),
               "ood": ood}
    if adversarial:
        results["adversarial"] = adversarial
    results["summary"] = summarise(results)
    results["leaderboard"] = leaderboard(results, {})
    return json.loads(json.dumps(results))  # as read back from results.json: string keys, plain types


@pytest.fixture
def results():
    return hand_made_results({"linear": [0.80, 0.82, 0.81], "vfe": [0.81, 0.83, 0.815]},
                             drop={"linear": [0.3, 0.3, 0.3], "vfe": [0.2, 0.25, 0.22]},
                             attack={"linear": [0.2, 0.1, 0.3], "vfe": [0.25, 0.15, 0.05]})


def test_every_number_on_the_card_is_the_results_value_it_names(results):
    card = build_card(results, "vfe", 1)
    row = next(r for r in results["leaderboard"] if r["head"] == "vfe")
    per_head = results["corruptions"]["per_head"]["vfe"]["1"]
    assert card["clean"] == results["clean"]["vfe"]["1"] and card["ece"] == results["clean"]["vfe"]["1"]["ece"]
    assert card["clean_over_replicates"] == {"accuracy": row["clean_accuracy"], "vs_linear": row["clean_vs_linear"]}
    assert card["corruptions"]["mean_accuracy"] == per_head["mean_accuracy"]
    assert card["corruptions"]["mean_accuracy_all"] == per_head["mean_accuracy_all"]
    held = card["held_out_robustness"]
    assert held["value"] == row["headline_by_replicate"]["1"] and held["over_replicates"] == row["headline"]
    assert held["vs_linear"] == row["headline_vs_linear"] and held["metric"] == row["headline_metric"]
    assert held["vs_linear"]["low"] < held["vs_linear"]["high"]  # an interval, over 3 replicates
    # the strongest attack: the minimum over the attacks tried ("clean" is not an attack)
    assert card["strongest_attack"]["attack"] == "pgd_linf_8/255"
    assert card["strongest_attack"]["accuracy"] == results["adversarial"]["vfe"]["1"]["accuracy"]["pgd_linf_8/255"]
    assert card["ood_auroc"] == {"fashion-mnist": results["ood"]["per_head"]["vfe"]["1"]["selected_auroc_fashion-mnist"]}
    assert (card["dataset"], card["protocol"], card["replicates"], card["backbone"], card["replicate_seed"]) == \
        ("digits", "frozen", 3, "efficientnet_lite0", 101)
    assert card["vfe_version"] and json.loads(json.dumps(card)) == card  # JSON-able as it is


def test_families_average_their_benchmark_corruptions_over_severities(results):
    acc = results["corruptions"]["per_head"]["linear"]["0"]["accuracy"]
    families = build_card(results, "linear", 0)["corruptions"]["per_family"]
    assert families["noise"] == pytest.approx((acc["gaussian_noise"]["1"] + acc["gaussian_noise"]["5"]) / 2)
    assert set(families) == {"noise", "blur", "weather"}  # speckle_noise is an extra corruption: left out
    assert families["blur"] == pytest.approx(sum(acc["defocus_blur"].values()) / 2)
    assert family_accuracy({}) == {}


def test_a_card_without_attacks_or_with_a_wrong_head_or_replicate(results):
    del results["adversarial"]
    assert build_card(results, "linear", "2")["strongest_attack"] is None
    with pytest.raises(CardError, match="no head 'mlp'.*linear, vfe"):
        build_card(results, "mlp", 0)
    with pytest.raises(CardError, match="no replicate 7"):
        build_card(results, "vfe", 7)


def test_the_markdown_shows_the_card(results):
    card = build_card(results, "vfe", 0)
    text = card_markdown(card)
    assert text.startswith("# Robustness card: `vfe`, replicate 0")
    assert f"| clean accuracy | {100 * card['clean']['accuracy']:.1f} % |" in text
    assert f"| corruption accuracy, blur | {100 * card['corruptions']['per_family']['blur']:.1f} % |" in text
    assert "strongest attack (pgd_linf_8/255, 8 images)" in text and "OOD AUROC vs fashion-mnist" in text
    low = card["held_out_robustness"]["vs_linear"]["low"]
    assert f"[{100 * low:+.1f}," in text and not any(math.isnan(x) for x in [low])


def _detector(name: str, scores: list[float], coverage: float = 0.9):
    from vfe.robustness.detectors import Detector
    from vfe.robustness.selective import threshold_for_coverage

    scores = np.asarray(scores, dtype=np.float64)
    return Detector(name, coverage, threshold_for_coverage(scores, coverage), scores)


def test_the_cards_detector_is_what_the_pipeline_abstains_with_and_what_the_run_measured_of_it(results):
    results["ood"]["per_head"]["vfe"]["1"]["recon_auroc_fashion-mnist"] = 0.93
    results["ood"]["feature_baselines"] = {"mahalanobis_auroc_fashion-mnist": {"0": 0.97, "1": 0.95}}  # not it
    results["ood"]["selection"] = {"detector_mahalanobis": {"1": {"fashion-mnist": {
        "validation_auroc": 0.9, "auroc": 0.98, "fpr95": 0.1}}}}
    results["selective"] = {"per_head": {"vfe": {"1": {
        "clean": {"msp": {"risk_80": 0.02, "risk_90": 0.04, "aurc": 0.01},
                  "vfe-recon": {"risk_80": 0.03, "risk_90": 0.05, "aurc": 0.02}},
        "held_out": {"vfe-recon": {"risk_80": 0.21, "risk_90": 0.25, "aurc": 0.12}}}}}}
    scores = list(range(1, 21))  # 20 validation images: 18 answered at 90 %
    card = detector_card(results, "vfe", 1, _detector("vfe-recon", scores), "--best-detector vfe-recon")
    assert (card["name"], card["coverage"], card["validation_images"]) == ("vfe-recon", 0.9, 20)
    assert card["threshold"] == 18 and card["validation_coverage"] == 0.9
    assert card["ood_auroc"] == {"fashion-mnist": 0.93}
    assert card["selective"] == {"clean": {"risk_80": 0.03, "risk_90": 0.05, "aurc": 0.02},
                                 "held_out": {"risk_80": 0.21, "risk_90": 0.25, "aurc": 0.12}}
    maha = detector_card(results, "vfe", 1, _detector("mahalanobis", scores))
    assert maha["ood_auroc"] == {"fashion-mnist": 0.98}  # the detector's own score, the covariance shrunk
    assert maha["selective"] is None  # the run measured no Mahalanobis risk for this head
    text = card_markdown({**build_card(results, "vfe", 1), "detector": card})
    assert "| abstains (vfe predict --coverage) | vfe-recon score above 18: answers 90.0 % of 20 validation " \
           "images (target 90.0 %); chosen by --best-detector vfe-recon |" in text
    assert "| vfe-recon: selective risk at 90 % coverage, held-out corrupted images (the run's, all severities) " \
           "| 25.0 % |" in text and "| vfe-recon OOD AUROC vs fashion-mnist (test half) | 93.0 % |" in text
    none = detector_card(results, "vfe", 1, None, "--best-detector none")
    assert none == {"name": None, "why_none": "--best-detector none"}
    assert "| abstains (vfe predict --coverage) | no: --best-detector none |" in \
        card_markdown({**build_card(results, "vfe", 1), "detector": none})
