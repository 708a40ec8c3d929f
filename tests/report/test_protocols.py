"""The reference protocol's report sections on hand-made results: every cell is checked against a value
computed here."""
from __future__ import annotations

import numpy as np

from vfe.report.document import Document
from vfe.report.protocols import finetune_section, protocols_section
from vfe.report.to_markdown import to_markdown


def _summary(per_replicate: dict[str, dict[str, list[float]]]) -> dict:
    """{head: {metric: [per-replicate values]}} -> the run's summary table (mean, ddof=1 std), computed with numpy."""
    return {"table": {head: {k: {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)), "n": len(v)}
                             for k, v in metrics.items()} for head, metrics in per_replicate.items()}}


REFERENCE = {"linear": {"clean_accuracy": [0.90, 0.92, 0.91], "adv:pgd_linf_8/255_eot": [0.0, 0.02, 0.01],
                        "adv:pgd_linf_2/255_eot": [0.3, 0.3, 0.3], "ood:selected_auroc_digits": [0.8, 0.9, 0.85]},
             "vfe": {"clean_accuracy": [0.88, 0.89, 0.90], "adv:pgd_linf_8/255_eot": [0.0, 0.0, 0.03],
                     "adv:pgd_linf_2/255_eot": [0.2, 0.3, 0.4], "ood:selected_auroc_digits": [0.9, 0.9, 0.9]}}
FROZEN = {"linear": {"clean_accuracy": [0.87, 0.88, 0.875], "adv:pgd_linf_8/255_eot": [0.0, 0.0, 0.0],
                     "adv:pgd_linf_2/255_eot": [0.1, 0.2, 0.3], "ood:selected_auroc_digits": [0.7, 0.75, 0.8]}}


def _table(section) -> dict[str, list[str]]:
    table = next(b for b in section.blocks if hasattr(b, "rows"))
    return {row[0]: row[1:] for row in table.rows}, table.header


def test_side_by_side_cells_are_each_runs_own_mean_std_and_the_strongest_attack_with_its_interval():
    setting = {"dataset": "fashion-mnist", "n_test": 2000, "replicates": 3, "replicate_seeds": [7, 8, 9],
               "backbone": "efficientnet_lite0"}
    results = {"setting": {**setting, "protocol": "reference"}, "summary": _summary(REFERENCE),
               "adversarial_intervals": {"linear": {"pgd_linf_8/255_eot": {"low": 0.0, "high": 0.025}}},
               "compared_run": {"setting": {**setting, "protocol": "frozen"}, "summary": _summary(FROZEN),
                                "adversarial_intervals": {}}}
    rows, header = _table(protocols_section(results))
    assert header == ["metric", "linear · reference", "vfe · reference", "linear · frozen"]
    clean = rows["clean accuracy (%)"]
    for cell, values in zip(clean, [[0.90, 0.92, 0.91], [0.88, 0.89, 0.90], [0.87, 0.88, 0.875]], strict=True):
        assert cell == f"{100 * np.mean(values):.1f} ± {100 * np.std(values, ddof=1):.1f}"
    attack = next(k for k in rows if "8/255" in k)  # the strongest L-inf EOT budget, not 2/255
    assert not any("2/255" in k for k in rows)
    assert rows[attack][0] == f"{100 * np.mean([0.0, 0.02, 0.01]):.1f} ± {100 * np.std([0.0, 0.02, 0.01], ddof=1):.1f}" \
                              " [0.0, 2.5]"
    assert rows[attack][1].count("[") == 0  # no interval recorded for that head: none shown
    assert any("digits" in k for k in rows)
    paragraph = next(b for b in protocols_section(results).blocks if hasattr(b, "text")).text
    assert "n_test=2000, 3 replicates" in paragraph and "seeds" not in paragraph


def test_no_compared_run_and_no_finetuning_add_no_section():
    assert protocols_section({"summary": _summary(FROZEN)}) is None
    assert finetune_section({"clean": {}}) is None


def test_the_finetune_section_shows_each_replicates_record():
    def record(seed: int, accuracy: float, cached: bool) -> dict:
        return {"cut_point": "blocks.5.1", "trainable_fraction": 0.7256, "activation_shape": [192, 4, 4],
                "activation_storage": "fp16", "storage_min_cosine": 1.0, "compare_model_test_accuracy": accuracy,
                "settings": {"finetune_epochs": 2, "finetune_batch_size": 100, "finetune_lr": 0.001}, "seed": seed,
                "history": {"records": [{"epoch": 1, "loss": 1.5, "acc": 0.5, "seconds": 10.0},
                                        {"epoch": 2, "loss": 0.75, "acc": 0.8, "seconds": 20.0}]},
                "seconds": 30.0, "loaded_from_cache": cached, "weights_sha256": "ab" * 32}

    ft = {"0": record(11, 0.8123, True), "1": record(12, 0.8323, False)}
    text = to_markdown(Document("t", "s", [finetune_section({"finetune": ft})]))
    assert "| share of the backbone's parameters trained | 72.6 % |" in text
    # compare model accuracy: mean (0.8123 + 0.8323) / 2 = 0.8223, sample std 0.02 / sqrt(2) = 0.0141
    assert "test accuracy, mean ± std over 2 replicates | 82.2 ± 1.4 |" in text
    assert "| 0 | 11 | 0.8123 | 0.75, 0.8 | 30.0 s | read from the cache, sha256 abababababababab… |" in text
    assert "| 1 | 12 | 0.8323 | 0.75, 0.8 | 30.0 s | trained in this run, sha256 abababababababab… |" in text
    assert "| input augmentation | none |" in text and "| linear probe first (LP-FT), epochs | no |" in text
    for r in ft.values():
        r["settings"].update(finetune_augmix=True, finetune_js_weight=12.0, finetune_lp_epochs=4)
    text = to_markdown(Document("t", "s", [finetune_section({"finetune": ft})]))
    assert "| input augmentation | AugMix, two views per image and epoch, Jensen-Shannon weight 12.0" in text
    assert "| linear probe first (LP-FT), epochs | 4 |" in text


def test_the_attack_row_drops_to_the_largest_budget_where_some_head_is_above_zero():
    """At 8/255 every head is at 0 % here: that row would tell nothing, so the row is 2/255's."""
    zeroed = {run: {h: {**m, "adv:pgd_linf_8/255_eot": [0.0, 0.0, 0.0]} for h, m in heads.items()}
              for run, heads in (("reference", REFERENCE), ("frozen", FROZEN))}
    setting = {"dataset": "fashion-mnist", "n_test": 2000, "replicates": 3, "backbone": "efficientnet_lite0"}
    results = {"setting": {**setting, "protocol": "reference"}, "summary": _summary(zeroed["reference"]),
               "compared_run": {"setting": {**setting, "protocol": "frozen"}, "summary": _summary(zeroed["frozen"])}}
    rows, _ = _table(protocols_section(results))
    attack = [k for k in rows if "255" in k]
    assert len(attack) == 1 and "2/255" in attack[0]
    assert rows[attack[0]][0] == f"{30.0:.1f} ± {0.0:.1f}"
