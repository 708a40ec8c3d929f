"""The result tables and verdicts of the README and the docs site, generated from committed results files.

    python scripts/readme_results.py import runs/reference reference --run-args='--protocol reference'
                                              # trims a run's results.json into benchmarks/results/readme/
                                              # (or a `vfe leaderboard --out` file, as leaderboard-<name>)
    python scripts/readme_results.py render   # rewrite the generated blocks of README.md and docs/findings.md
    python scripts/readme_results.py check    # exit 1 if a generated block of either page disagrees

Each page in PAGES holds generated blocks between `<!-- results:BLOCK begin ... -->` and
`<!-- results:BLOCK end -->`; none of their numbers is typed by hand:
  answer               the main job's answer in one line per protocol: each head's paired difference from the
                       linear head on the robustness measures (corruption accuracy, relative mCE, attack)
  main                 the main job under both protocols (files reference.json, frozen.json): mean ± std over
                       replicates per head, and each head's paired difference from the linear head of its run
  reproduce            a second full-size run against the first (benchmarks/results/reproduce.json)
  selective-answer     the same block's answer lines alone (the README)
  selective            selective classification under corruption (selective.json: the main job under the
                       reference protocol, the same command and seeds as reference.json, with the stage that
                       measures it): each detector's risk at 90 % coverage on the held-out corruptions, paired
                       with max softmax
  leaderboard-<name>   a leaderboard run (file leaderboard-<name>.json): every head ranked by its headline
                       corruption measure, with paired verdicts
  leaderboard-answer-<name>  the same, one line per head: headline and clean accuracy against the linear head
Every "better" / "worse" printed is the run's own paired verdict (a paired t-interval over replicates, or for
attacks a paired bootstrap over replicates and images) and is printed with that interval; anything else is
"no difference shown". tests/test_readme_results.py runs `check` and recomputes a row by hand.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "readme"
REPRODUCE = ROOT / "benchmarks" / "results" / "reproduce.json"  # benchmarks/bench_reproduce.py's comparisons
README = ROOT / "README.md"
FINDINGS = ROOT / "docs" / "findings.md"
PAGES = (README, FINDINGS)  # every page with generated blocks; `check` fails when any of them disagrees
BLOCK = re.compile(r"(<!-- results:(?P<name>[a-z0-9-]+) begin[^>]*-->\n)(?P<body>.*?)(<!-- results:(?P=name) end -->)",
                   re.DOTALL)
PROTOCOLS = ("reference", "frozen")  # the main block's columns: the reference's protocol first
# what a trimmed results file keeps: everything the README and bench_reproduce read, none of the bulk
KEEP = ("setting", "config", "clean", "summary", "leaderboard", "finetune", "timings", "peak_rss_mb",
        "adversarial_intervals", "corruption_seconds", "selective", "runs", "base")
# rows of the main table: (summary metric, label, in percent)
ROWS = (("clean_accuracy", "clean accuracy (%)", True),
        ("corruption_accuracy", "mean corruption accuracy, 15 benchmark corruptions x 5 severities (%)", True),
        ("summed_relative_mCE", "summed relative mCE (linear = 100)", True),
        ("relative_mCE", "relative mCE (linear = 100)", True),
        ("clean_ece", "clean ECE, 15 bins (%)", True),
        ("clean_nll", "clean NLL (nats)", False))
VERDICT_WORDS = {"better than baseline": "better", "worse than baseline": "worse"}
BASE_HEAD = "linear"  # a leaderboard's normaliser: every other head is paired with it
HEADLINE_LABELS = {"summed_relative_mCE": "summed relative mCE (linear = 100)",
                   "summed_mCE": "summed mCE (linear = 100)", "corruption_error": "mean corruption error (%)"}


def trim(results: dict) -> dict:
    """The parts of a results.json the README and the reproducibility check need (kB, not MB)."""
    out = {k: results[k] for k in KEEP if k in results}
    if "ood" in results:
        out["ood"] = {k: results["ood"][k] for k in ("per_head", "feature_baselines", "ood_sets") if k in results["ood"]}
    if "adversarial" in results:  # per-replicate accuracies; the per-image strings stay in the run folder
        out["adversarial"] = {h: {r: {k: v for k, v in res.items() if k not in ("correct", "per_attack_correct")}
                                  for r, res in per.items()} for h, per in results["adversarial"].items()}
    return out


def load(name: str, folder: Path) -> dict | None:
    path = folder / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


# -- numbers ---------------------------------------------------------------------------------------------


def mean_std(stat: dict | None, percent: bool = True) -> str:
    if not stat or stat.get("mean") is None or stat["mean"] != stat["mean"]:
        return "–"
    return f"{100 * stat['mean']:.1f} ± {100 * stat['std']:.1f}" if percent else \
        f"{stat['mean']:.3f} ± {stat['std']:.3f}"


def paired(c: dict | None, percent: bool = True) -> str:
    """'−0.2 [−0.4, −0.1], worse': a paired difference (head − linear), its 95 % interval and its verdict."""
    if not c or c.get("mean_diff") is None:
        return ""

    def f(v: float) -> str:
        return (f"{100 * v:+.1f}" if percent else f"{v:+.3f}").replace("-", "−")

    low, high = c.get("low"), c.get("high")
    if low is None or not math.isfinite(low):  # no interval, so no verdict (an old run's unpaired one included)
        return f"{f(c['mean_diff'])}, no difference shown"
    return f"{f(c['mean_diff'])} [{f(low)}, {f(high)}], {VERDICT_WORDS.get(c.get('verdict'), 'no difference shown')}"


def shown(c: dict | None) -> bool:
    """Whether a paired comparison excludes no difference: a "better" / "worse" verdict with a finite interval."""
    low = (c or {}).get("low")
    return (c or {}).get("verdict") in VERDICT_WORDS and low is not None and math.isfinite(low)


def with_paired(cell: str, c: dict | None, percent: bool = True) -> str:
    return f"{cell} ({paired(c, percent)})" if c and c.get("mean_diff") is not None else cell


def attack_label(key: str) -> str:
    """"pgd_linf_1/255_eot" -> "PGD L∞ 1/255, EOT"."""
    method, norm, eps, *eot = key.split("_")
    return f"{method.upper()} {'L∞' if norm == 'linf' else norm.upper()} {eps}" + (", EOT" if eot else "")


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header),
            *("| " + " | ".join(r) + " |" for r in rows)]


# -- blocks ------------------------------------------------------------------------------------------------


def setting_line(name: str, r: dict) -> str:
    s = r["setting"]
    ft = r.get("finetune") or {}
    compare = ""
    if ft:
        acc = ", ".join(f"{100 * v['compare_model_test_accuracy']:.2f}" for v in ft.values())
        compare = f"; compare model (fine-tuned top + its Dense layer) {acc} % test accuracy per replicate"
    total = (r.get("timings") or {}).get("total")
    wall = f"; wall time {total / 60:.1f} min" if total else ""
    program = "vfe leaderboard" if "runs" in r else "vfe run"  # a `vfe leaderboard --out` file, or a run's results
    command = f"`{program} {' '.join(r['command'])}`: " if r.get("command") else ""
    return (f"- {name}: {command}{s['backbone']} ({s['weights']} weights) at {s['image_size']} px on {s['dataset']}, "
            f"{s['n_train']} training and {s['n_test']} test images, {s['replicates']} replicates (seeds "
            f"{', '.join(map(str, s['replicate_seeds']))}){compare}; {runtime_text(r)}{wall}")


def runtime_text(r: dict) -> str:
    """What extracted the run's features. A run from before `vfe run` had --runtime extracted with torch."""
    if "runtime" in r["setting"]:
        return f"features on {r['setting']['runtime']}"
    return "features on torch (before --runtime auto was the default: add --runtime torch to repeat it)"


def ranked_attack(results: dict) -> str | None:
    """The attack the run's leaderboard ranks heads by (L∞, EOT, the smallest budget)."""
    return next((row["attack"] for row in results.get("leaderboard") or [] if row.get("attack")), None)


def main_block(folder: Path) -> list[str]:
    runs = {p: r for p in PROTOCOLS if (r := load(p, folder)) is not None}
    if not runs:
        return ["_No committed results files for this block._"]
    columns = [(p, h) for p, r in runs.items() for h in r["summary"]["table"]]
    rows = []
    for metric, label, percent in ROWS:
        cells = []
        for p, h in columns:
            summary = runs[p]["summary"]
            cells.append(with_paired(mean_std(summary["table"][h].get(metric), percent),
                                     summary.get("vs_baseline", {}).get(h, {}).get(metric), percent))
        rows.append([label, *cells])
    for attack in sorted({a for r in runs.values() if (a := ranked_attack(r))}):
        cells = []
        for p, h in columns:
            summary = runs[p]["summary"]
            key = f"adv:{attack}"
            cells.append(with_paired(mean_std(summary["table"][h].get(key)),
                                     summary.get("vs_baseline", {}).get(h, {}).get(key)))
        rows.append([f"{attack_label(attack)} accuracy (%)", *cells])
    for ood_set in sorted({k.removeprefix("ood:selected_auroc_") for r in runs.values()
                           for t in r["summary"]["table"].values() for k in t if k.startswith("ood:selected_auroc_")}):
        key = f"ood:selected_auroc_{ood_set}"
        cells = [with_paired(mean_std(runs[p]["summary"]["table"][h].get(key)),
                             runs[p]["summary"].get("vs_baseline", {}).get(h, {}).get(key)) for p, h in columns]
        rows.append([f"OOD AUROC, {ood_set.replace('_', ' ')} vs the test set (%)", *cells])
    lines = [*(setting_line(p, r) for p, r in runs.items()), "",
             *table(["mean ± std over replicates (head − linear, paired 95 % interval, verdict)",
                     *(f"{p}: {h}" for p, h in columns)], rows), "",
             ("Verdicts that exclude no difference (paired t over replicates; attacks: paired bootstrap over "
             "replicates and images):"), ""]
    said = [f"- {p}: {h} − linear, {metric}: {paired(c, not metric.endswith('nll'))}"
            for p, r in runs.items() for h, per in r["summary"].get("vs_baseline", {}).items()
            for metric, c in per.items() if shown(c)]
    return lines + (said or ["- none"])


# the measures the headline question ("is the classifier more robust?") is answered on, besides the attack
ROBUSTNESS = (("corruption_accuracy", "mean corruption accuracy"), ("summed_relative_mCE", "summed relative mCE"),
              ("relative_mCE", "relative mCE"))


def answer_block(folder: Path) -> list[str]:
    """One line per protocol and head: its paired differences from the linear head on the robustness measures,
    each with its interval, and the verdicts they give."""
    runs = {p: r for p in PROTOCOLS if (r := load(p, folder)) is not None}
    if not runs:
        return ["_No committed results files for this block._"]
    lines = []
    for p, r in runs.items():
        attack = ranked_attack(r)
        measures = [*ROBUSTNESS, *([(f"adv:{attack}", f"{attack_label(attack)} accuracy")] if attack else [])]
        for head, per in r["summary"].get("vs_baseline", {}).items():
            parts, verdicts = [], set()
            for key, label in measures:
                c = per.get(key)
                if not c or c.get("mean_diff") is None:
                    continue
                text = paired(c)
                interval, _, verdict = text.rpartition(", ")
                parts.append((label, interval, verdict))
                verdicts.add(verdict)
            if not parts:
                continue
            if verdicts == {"no difference shown"}:
                said = "; ".join(f"{label} {interval}" for label, interval, _ in parts) + ": no difference shown on any"
            else:
                said = "; ".join(f"{label} {interval}, {verdict}" for label, interval, verdict in parts)
            lines.append(f"- **{p} protocol**, {head} − linear (paired 95 % intervals): {said}.")
    return lines or ["- no paired comparison in the results files"]


DETECTOR_LABELS = {"msp": "max softmax", "mahalanobis": "Mahalanobis", "vfe-recon": "VFE reconstruction error",
                   "vfe-elbo": "VFE negative ELBO"}
VFE_DETECTORS = ("vfe-recon", "vfe-elbo")


def selective_block(folder: Path, answer_only: bool = False) -> list[str]:
    """Each classifier head and detector on the held-out corruptions: risk at 90 % coverage and AURC, mean ± std
    over replicates, each detector paired with the same head's max softmax; then the answer for the VFE's
    detectors (alone with `answer_only`: the README's block)."""
    r = load("selective", folder)
    sel = (r or {}).get("selective")
    if not sel:
        return ["_No committed results file for this block._"]
    rows, answers = [], []
    for head, groups in sel["summary"].items():
        held = groups.get("held_out")
        if not held:
            continue
        for detector in sel["detectors"]:
            versus = sel["vs_msp"][head]["held_out"].get(detector, {})
            rows.append([f"`{head}`", DETECTOR_LABELS.get(detector, detector),
                         with_paired(mean_std(held[detector]["risk_90"]), versus.get("risk_90")),
                         with_paired(mean_std(held[detector]["aurc"]), versus.get("aurc"))])
            if detector in VFE_DETECTORS:
                c = versus.get("risk_90") or {}
                word = {"better than baseline": "lower", "worse than baseline": "higher"}.get(c.get("verdict"))
                verdict = f"{word} risk than max softmax" if word and shown(c) else "no difference shown"
                answers.append(f"- `{head}` head, {DETECTOR_LABELS[detector]}: {paired(c).rpartition(', ')[0]}, "
                               f"{verdict}")
    n = next(iter(sel["n_images"].values()), {}).get("held_out")
    if answer_only:
        return answers
    return [setting_line("run", r) + (f"; held-out corruptions: every benchmark corruption x severity pooled into "
                                      f"one stream of {n} images per replicate"), "",
            *table(["classifier", "detector", "risk at 90 % coverage (%)", "AURC (%)"], rows), "",
            ("Each cell: mean ± std over replicates; in brackets the paired difference from the same head's max "
             "softmax with its 95 % interval (paired t over replicates); lower is better."), "",
            "Lower risk at 90 % coverage than max softmax, VFE detectors (difference, paired 95 % interval):", "",
            *answers]


def leaderboard_verdicts(results: dict) -> list[str]:
    """Every paired verdict of a leaderboard that excludes no difference, with its interval."""
    board = results["leaderboard"]
    kind = board[0]["headline_metric"] if board else "summed_relative_mCE"
    attack = ranked_attack(results)
    columns = (("clean_vs_linear", "clean accuracy"), ("headline_vs_linear", HEADLINE_LABELS.get(kind, kind)),
               ("attack_vs_linear", f"{attack_label(attack) if attack else 'attack'} accuracy"))
    said = [f"- `{row['head']}` − `linear`, {label}: {paired(row[key])}"
            for row in board for key, label in columns
            if shown(row.get(key))]
    return ["Verdicts that exclude no difference:", "", *(said or ["- none"])]


def leaderboard_block(results: dict) -> list[str]:
    board = results["leaderboard"]
    kind = board[0]["headline_metric"] if board else "summed_relative_mCE"
    attack = ranked_attack(results)
    rows = []
    for row in board:
        strongest = sorted(set((row.get("attack_strongest") or {}).values()))
        ood = "; ".join(f"{k} {mean_std(v)}" for k, v in (row.get("ood_auroc") or {}).items()) or "–"
        fit = row.get("fit_seconds") or {}
        rows.append([f"`{row['head']}`",
                     with_paired(mean_std(row["clean_accuracy"]), row.get("clean_vs_linear")),
                     mean_std(row.get("held_out_accuracy")),
                     with_paired(mean_std(row.get("headline")), row.get("headline_vs_linear")),
                     with_paired(mean_std(row.get("attack_accuracy")), row.get("attack_vs_linear"))
                     + (f"; strongest: {', '.join(strongest)}" if strongest and strongest != ["direct"] else ""),
                     mean_std(row.get("clean_ece")), ood,
                     f"{fit['mean']:.1f} s" if fit.get("mean") is not None else "–"])
    defaults = {"finetune_lp_epochs": 0, "finetune_augmix": False, "finetune_augment": False}
    runs = [f"- `{label}`: {run.get('path', label)}, fine-tuning "
            + (", ".join(f"{k.removeprefix('finetune_')} {v}" for k, v in run["finetune"].items()
                         if k in defaults and v != defaults[k] or k == "finetune_js_weight" and
                         run["finetune"].get("finetune_augmix")) or "plain")
            for label, run in sorted((results.get("runs") or {}).items(), key=lambda kv: kv[0] != results.get("base"))]
    return [setting_line("runs" if runs else "run", results), *runs, "",
            *table(["head", "clean accuracy (%)", "held-out corruption accuracy (%)", HEADLINE_LABELS.get(kind, kind),
                    f"{attack_label(attack) if attack else 'attack'} accuracy (%)", "clean ECE (%)",
                    "OOD AUROC (%)", "fit time per replicate"], rows), "",
            ("Each cell: mean ± std over replicates; in brackets the paired difference from the linear head with its "
            "95 % interval and verdict (paired t over replicates; the attack column: paired bootstrap over "
            "replicates and images). Ranked by the headline measure (docs/leaderboard.md)."), "",
            *leaderboard_verdicts(results)]


def leaderboard_answer(results: dict) -> list[str]:
    """A leaderboard in one line per head against the base run's linear head (the README's short form): the
    headline measure and clean accuracy, each with its paired interval and verdict."""
    kind = results["leaderboard"][0]["headline_metric"] if results["leaderboard"] else "summed_relative_mCE"
    return [f"- `{row['head']}`: {HEADLINE_LABELS.get(kind, kind)} "
            f"{with_paired(mean_std(row.get('headline')), row.get('headline_vs_linear'))}; clean accuracy "
            f"{with_paired(mean_std(row['clean_accuracy']), row.get('clean_vs_linear'))}"
            for row in results["leaderboard"] if row["head"] != BASE_HEAD]


def reproduce_block(path: Path = REPRODUCE) -> list[str]:
    """One line from benchmarks/bench_reproduce.py's full-size comparison of two `make run`s (its "main" entry)."""
    entries = json.loads(path.read_text()) if path.exists() else {}
    run, same = entries.get("main"), entries.get("main-same-threads")
    if run is None:
        return ["_No full-size comparison in benchmarks/results/reproduce.json._"]
    edge = sum("edge" in row["interval"] for row in run["rows"] if row["inside"] and row["run1_mean"] != row["run2_mean"])
    return [f"- **A second run lands inside the first's intervals.** `make run` again from an empty cache, with "
            f"{run['threads_run2']} thread instead of {run['threads_run1']}: {run['inside']} of {run['total']} "
            f"headline numbers inside the first run's 95 % intervals"
            + (f" ({edge} through the exact binomial bound of an attack every image fell to)" if edge else "")
            + "; per-replicate numbers "
            + ("bit-identical" if run["bitwise_equal_per_replicate"] else "not bit-identical (the thread count "
               "changes the fine-tuning's sums)")
            + (f"; at the same thread count a third run gave the first run's numbers bit for bit ("
               f"{', '.join(same['bitwise_sections'])} per replicate, and every summary number)"
               if same and same["bitwise_equal_per_replicate"] and same["summary_tables_equal"] else
               f"; a third run at the same thread count, of the current code: {same['inside']} of {same['total']} "
               "inside, not bit for bit (its attacks run at one thread, the first run's at two)"
               if same else "")
            + " (`benchmarks/bench_reproduce.py`; benchmarks/README.md, \"A second run\")."] + runtime_lines(entries)


def runtime_lines(entries: dict) -> list[str]:
    """The comparison of `make run` on the default runtime with the torch run before it ("main-runtime")."""
    run = entries.get("main-runtime")
    if run is None:
        return []
    line = (f"- **The default runtime moves no headline number out of the torch run's intervals.** `make run` with "
            f"`--runtime auto` (OpenVINO for the frozen bottom and each fine-tuned top) against the same command on "
            f"torch before it: {run['inside']} of {run['total']} headline numbers inside the torch run's 95 % "
            "intervals; per-replicate numbers not bit-identical (features differ by rounding) "
            "(`benchmarks/bench_reproduce.py --compare`).")
    return [line]


def render_block(name: str, folder: Path = RESULTS) -> list[str]:
    if name == "main":
        return main_block(folder)
    if name == "answer":
        return answer_block(folder)
    if name == "reproduce":
        return reproduce_block()
    if name in ("selective", "selective-answer"):
        return selective_block(folder, answer_only=name == "selective-answer")
    if name.startswith("leaderboard-answer-"):
        results = load(name.replace("-answer", "", 1), folder)
        return leaderboard_answer(results) if results else ["_No committed results file for this block._"]
    if name.startswith("leaderboard-"):
        results = load(name, folder)
        return leaderboard_block(results) if results else ["_No committed results file for this block._"]
    raise SystemExit(f"unknown generated block {name!r} (known: answer, main, reproduce, selective, "
                     "selective-answer, leaderboard-<name>, leaderboard-answer-<name>)")


def rendered_page(text: str, folder: Path = RESULTS, page: Path = README) -> str:
    """The page's text with every generated block rewritten from the results files in `folder`."""
    if not BLOCK.search(text):
        raise SystemExit(f"{page}: no generated block (<!-- results:NAME begin --> ... <!-- results:NAME end -->)")
    return BLOCK.sub(lambda m: m.group(1) + "\n".join(["", *render_block(m["name"], folder), ""]) + "\n" + m.group(4),
                     text)


rendered_readme = rendered_page  # the README's name for it


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help="trim RUN_DIR/results.json (or a `vfe leaderboard --out` file) into "
                                        "benchmarks/results/readme/NAME.json")
    imp.add_argument("run_dir", help="a finished run's folder, or the JSON file `vfe leaderboard --out` wrote")
    imp.add_argument("name", help="reference | frozen | selective | leaderboard-<name>")
    imp.add_argument("--run-args", default="", help="the `vfe run` arguments that made the run, for the README")
    sub.add_parser("render", help="rewrite the generated blocks of README.md and docs/findings.md")
    sub.add_parser("check", help="exit 1 when a generated block of README.md or docs/findings.md is not what "
                                 "render would write")
    args = ap.parse_args(argv)
    if args.command == "import":
        given = Path(args.run_dir)
        source = given if given.suffix == ".json" else given / "results.json"
        if not source.exists():
            print(f"{source}: no results.json; give the folder of a finished `vfe run`, or the file `vfe leaderboard "
                  "--out` wrote", file=sys.stderr)
            return 2
        if args.name not in (*PROTOCOLS, "selective") and not args.name.startswith("leaderboard-"):
            print(f"{args.name}: name the file reference, frozen, selective or leaderboard-<name>", file=sys.stderr)
            return 2
        RESULTS.mkdir(parents=True, exist_ok=True)
        target = RESULTS / f"{args.name}.json"
        trimmed = {**trim(json.loads(source.read_text())), "command": args.run_args.split()}
        tmp = target.with_suffix(".tmp")
        tmp.write_text(json.dumps(trimmed, indent=1, sort_keys=True) + "\n")
        tmp.replace(target)
        print(f"wrote {target}")
        return 0
    wrong = []
    for page in PAGES:
        text = page.read_text()
        new = rendered_page(text, page=page)
        if args.command == "render":
            if new != text:
                tmp = page.with_suffix(".tmp")
                tmp.write_text(new)
                tmp.replace(page)
            print(f"{page}: generated blocks {'rewritten' if new != text else 'already up to date'}")
        elif new != text:
            wrong.append(page)
            print(f"{page} disagrees with benchmarks/results/readme/*.json: run `python scripts/readme_results.py "
                  "render`", file=sys.stderr)
    if wrong:
        return 1
    if args.command == "check":
        print(f"{', '.join(str(p) for p in PAGES)} agree with the results files")
    return 0

if __name__ == "__main__":
    sys.exit(main())
