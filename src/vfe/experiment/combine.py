"""One leaderboard over runs that differ only in stage 0, how the top of the backbone was fine-tuned (plain,
LP-FT, AugMix with the Jensen-Shannon term, ...): `vfe leaderboard BASE_RUN OTHER_RUN...`.

Why it is a fair comparison: the runs share the data, the test subset, the replicates' seeds (hence each
replicate's training subset, heads' seeds and attacked images) and the corruption noise, which `combine`
checks before anything else. So replicate r of a head in one run pairs with replicate r of the linear head of
the base run: the only factor that differs is the fine-tuning. Each run's heads join the base run's under
"<head>@<label>"; the base run's `linear` head is the normaliser of every headline and the baseline of every
paired verdict (vfe.experiment.leaderboard).
"""
from __future__ import annotations

import math

from vfe.errors import SettingsError
from vfe.experiment.leaderboard import leaderboard
from vfe.experiment.run_settings import RunSettings
from vfe.experiment.summary import BASELINE
from vfe.heads.registry import is_augmented

# what must be equal for replicate r of two runs to share every random factor but stage 0
SAME_SETTING = ("dataset", "backbone", "weights", "image_size", "n_train", "n_test", "data_seed", "replicate_seeds",
                "protocol")
SAME_CONFIG = ("corruptions", "severities", "corruption_params", "noise_per_replicate", "n_attack", "attack_eps_linf",
               "attack_eps_l2", "attack_steps", "n_eot", "augment_family", "augmix_views", "runtime")
# what a setting an older run does not name was, where that is not today's default
BEFORE_NAMED = {"runtime": "torch"}  # runs before --runtime reached vfe run extracted with torch


def check_comparable(base: tuple[str, dict], other: tuple[str, dict]) -> None:
    """One SettingsError naming the first setting two runs do not share."""
    (base_label, a), (label, b) = base, other
    # a setting an older run does not name had its default's behaviour then
    defaults = {**RunSettings().to_dict(), **BEFORE_NAMED}
    for section, keys in (("setting", SAME_SETTING), ("config", SAME_CONFIG)):
        for key in keys:
            mine, theirs = ({**(defaults if section == "config" else {}), **r.get(section, {})}.get(key)
                            for r in (a, b))
            if mine != theirs:
                raise SettingsError(f"runs {base_label} and {label} differ in {key} ({mine!r} vs {theirs!r}): only "
                                    "runs that differ in fine-tuning alone pair replicate by replicate; rerun one "
                                    "with the other's settings")
    if BASELINE not in a.get("clean", {}):
        raise SettingsError(f"run {base_label} has no {BASELINE} head, the normaliser of the leaderboard: rerun it "
                            f"with --heads {BASELINE} ...")


def _renamed(per_head: dict, label: str | None) -> dict:
    return {head if label is None else f"{head}@{label}": value for head, value in per_head.items()}


def combine(runs: dict[str, dict]) -> dict:
    """{label: results.json} (the first is the base run) -> one results dict holding every run's heads (the
    others' as "<head>@<label>"), its "leaderboard", "base" (the base run's label) and "runs" (each run's heads
    and fine-tuning settings)."""
    labels = list(runs)
    if len(labels) < 2:
        raise SettingsError("vfe leaderboard needs two runs or more: the base run first, then the runs to rank "
                            "beside it")
    if len(set(labels)) != len(labels):
        raise SettingsError(f"run labels must differ, got {', '.join(labels)}; name them with --labels")
    base = runs[labels[0]]
    for label in labels[1:]:
        check_comparable((labels[0], base), (label, runs[label]))
    out: dict = {"setting": {**base["setting"], "heads": []}, "config": base["config"], "clean": {},
                 "fit_seconds": {}, "corruptions": {**base["corruptions"], "per_head": {}}, "adversarial": {},
                 "ood": {"per_head": {}}, "base": labels[0], "runs": {}}
    if "augmentation" in base:
        out["augmentation"] = base["augmentation"]
    augmented = {}
    for i, label in enumerate(labels):
        r, tag = runs[label], None if i == 0 else label
        out["clean"].update(_renamed(r["clean"], tag))
        out["fit_seconds"].update(_renamed(r.get("fit_seconds", {}), tag))
        out["corruptions"]["per_head"].update(_renamed(r.get("corruptions", {}).get("per_head", {}), tag))
        out["adversarial"].update(_renamed(r.get("adversarial") or {}, tag))
        out["ood"]["per_head"].update(_renamed((r.get("ood") or {}).get("per_head", {}), tag))
        augmented.update(_renamed({h: is_augmented(h) for h in r["clean"]}, tag))
        out["runs"][label] = {"finetune": {k: v for k, v in r["config"].items() if k.startswith("finetune_")},
                              "heads": list(_renamed(r["clean"], tag))}
    out["setting"]["heads"] = list(out["clean"])
    out["leaderboard"] = leaderboard(out, augmented)
    return out


def _cell(stat: dict | None, scale: float = 100.0) -> str:
    return "–" if not stat or stat.get("mean") is None else f"{stat['mean'] * scale:.1f} ± {stat['std'] * scale:.1f}"


def _versus(c: dict | None, scale: float = 100.0) -> str:
    if not c or c.get("mean_diff") is None or not math.isfinite(c.get("low") or math.nan):
        return ""  # no interval (one replicate, or the same difference in each): no verdict either
    words = {"better than baseline": "better", "worse than baseline": "worse"}
    return (f" ({c['mean_diff'] * scale:+.1f} [{c['low'] * scale:+.1f}, {c['high'] * scale:+.1f}], "
            f"{words.get(c['verdict'], c['verdict'])})")


def board_lines(combined: dict) -> list[str]:
    """The combined leaderboard as a Markdown table: mean ± std over replicates, and in brackets the paired
    difference from the base run's linear head with its 95 % interval and verdict."""
    board = combined["leaderboard"]
    kind = (board[0]["headline_metric"] if board else "summed_relative_mCE").replace("_", " ")
    attack = next((row["attack"] for row in board if row.get("attack")), None)
    lines = [(f"| head | clean accuracy (%) | held-out corruption accuracy (%) | {kind} (linear = 100) | "
             f"{attack or 'attack'} accuracy (%) |"), "| --- | --- | --- | --- | --- |"]
    for row in board:
        lines.append(f"| {row['head']} | {_cell(row['clean_accuracy'])}{_versus(row.get('clean_vs_linear'))} | "
                     f"{_cell(row.get('held_out_accuracy'))} | "
                     f"{_cell(row.get('headline'))}{_versus(row.get('headline_vs_linear'))} | "
                     f"{_cell(row.get('attack_accuracy'))}{_versus(row.get('attack_vs_linear'))} |")
    return lines
