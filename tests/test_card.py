"""The robustness card (vfe.card): every number is the results.json value it names, on a hand-made run."""
from __future__ import annotations

import json
import math

import pytest

from vfe.benchmark.corruption import corruption_summary
from vfe.benchmark.leaderboard import leaderboard
from vfe.benchmark.summary import by_head, summarise
from vfe.card import CardError, build_card, card_markdown, family_accuracy

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
