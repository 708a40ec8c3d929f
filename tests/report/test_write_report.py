"""The report of a realistic run, written from its results alone: tables with the summary's numbers, a
self-contained HTML page that a real browser renders with its tables and figures, and honest notes for
stages that did not run."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from scipy import stats as scipy_stats

from vfe.experiment.stages.sections import SECTIONS
from vfe.experiment.summary import summarise
from vfe.io import write_json
from vfe.report import write_report

WINDOW = (1280, 4000)


def _cell(stat: dict, scale: float = 100, digits: int = 1) -> str:
    return f"{stat['mean'] * scale:.{digits}f} ± {stat['std'] * scale:.{digits}f}"


@pytest.fixture(scope="module")
def written(report_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    return out, write_report(out, report_run, SECTIONS), report_run


def _chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("chromium is not installed; the report's browser test needs it: apt-get install chromium")
    return path


def _chromium_run(tmp_path, *args: str) -> subprocess.CompletedProcess:
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           f"--user-data-dir={tmp_path / 'chromium-profile'}", *args]
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}"
    return done


@pytest.mark.slow
def test_markdown_holds_the_summary_rows_with_the_summary_numbers(written):
    _, paths, results = written
    md = paths["markdown"].read_text()
    table = results["summary"]["table"]
    assert f"| clean accuracy (%) | {_cell(table['linear']['clean_accuracy'])} | " \
           f"{_cell(table['vfe']['clean_accuracy'])} | higher |" in md
    assert f"| mCE (%) | {_cell(table['linear']['mCE'])} | {_cell(table['vfe']['mCE'])} | lower |" in md
    assert f"| clean NLL | {_cell(table['linear']['clean_nll'], 1, 3)} | {_cell(table['vfe']['clean_nll'], 1, 3)} |" in md
    eot = "adv:pgd_linf_8/255_eot"
    assert (f"| adversarial accuracy, PGD L∞ ε=8/255, EOT (%) | {_cell(table['linear'][eot])} | "
            f"{_cell(table['vfe'][eot])} | higher |") in md
    assert "OOD AUROC vs shuffled, reconstruction error score (%)" in md
    assert "| parameters of one linear head | 650 |" in md  # 64 features x 10 classes + 10 biases
    # the paired comparison row, recomputed here from the per-replicate clean accuracies with scipy
    reps = sorted(results["clean"]["vfe"])
    vfe, linear = ([results["clean"][h][r]["accuracy"] for r in reps] for h in ("vfe", "linear"))
    ci = scipy_stats.ttest_rel(vfe, linear).confidence_interval(0.95)
    verdict = "better than baseline" if ci.low > 0 else "worse than baseline" if ci.high < 0 else "no difference shown"

    def signed(x: float) -> str:
        return f"{x * 100:.1f}".replace("-", "−")

    diff = float(np.mean(np.subtract(vfe, linear)))
    assert (f"| clean accuracy (%) | {'+' if diff > 0 else '−'}{abs(diff) * 100:.1f} points | "
            f"[{signed(ci.low)}, {signed(ci.high)}] | paired t over replicates | ") in md
    assert f"| {verdict} |" in md
    run_part = md.split("## Sweep")[0]  # the sweep's cells are still over its own seeds
    assert not any(old in run_part for old in ("seed spread", "over seeds", "per seed", "same seed", "seed by seed"))
    assert "| replicates | 3 |" in md
    # every better / worse the narrative says comes with its paired interval in the same bullet
    said = md.split("## What this says")[1].split("\n## ")[0]
    for bullet in (line for line in said.splitlines() if line.startswith("- ")):
        if "better" in bullet or "worse" in bullet:
            assert re.search(r"\[[−\d.]+, [−\d.]+\]", bullet), bullet
    for name in ("corruptions_mean", "corruptions_noise", "corruptions_digital", "adversarial", "reliability",
                 "corruption_grid", "training_linear", "training_vfe"):
        assert f"](figures/{name}.png)" in md
        assert Image.open(paths[name]).size[0] > 300, name
    assert "does not survive EOT" in md  # the generated VFE numbers hide from the naive attack only
    sweep_row = next(r for r in results["sweep"] if r["head"] == "linear")
    assert (f"| linear | epochs=20, lr=0.01 | all | {sweep_row['n_train']} | 3 | "
            f"{sweep_row['accuracy_mean']:.4g} ± {sweep_row['accuracy_std']:.2g} |") in md


@pytest.mark.slow
def test_html_is_self_contained(written):
    _, paths, _ = written
    html = paths["html"].read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html), "external resource in report.html"
    assert "<script" not in html and "<link" not in html
    sources = re.findall(r'<img[^>]* src="([^"]+)"', html)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)


@pytest.mark.slow
def test_chromium_renders_tables_and_every_figure(written, tmp_path):
    _, paths, results = written
    url = paths["html"].resolve().as_uri()
    dom = _chromium_run(tmp_path, "--dump-dom", url).stdout
    figures = [k for k in paths if k not in ("markdown", "html")]
    assert dom.count("<img") == len(figures) == 10
    assert "<table>" in dom and "clean accuracy (%)" in dom
    assert _cell(results["summary"]["table"]["vfe"]["clean_accuracy"]) in dom

    shot = tmp_path / "shot.png"
    _chromium_run(tmp_path, f"--screenshot={shot}", f"--window-size={WINDOW[0]},{WINDOW[1]}", url)
    rgb = np.asarray(Image.open(shot).convert("RGB"), dtype=int)
    assert rgb.shape == (WINDOW[1], WINDOW[0], 3)
    grey = rgb.mean(-1)
    ink = (grey < 200).mean()  # text, table rules, plot lines
    assert 0.01 < ink < 0.5, f"screenshot looks blank or broken: {ink:.1%} dark pixels"
    assert (grey[:150] < 128).mean() > 0.005, "no title text at the top of the page"
    coloured = ((rgb.max(-1) - rgb.min(-1)) > 80).mean()  # the heads' blue and orange curves
    assert coloured > 2e-4, f"no plotted curves visible ({coloured:.3%} coloured pixels): figures did not render"


@pytest.mark.slow
def test_missing_stages_render_as_skipped(report_run, tmp_path):
    keep = ("setting", "config", "clean", "fit_seconds", "histories")
    results = {k: report_run[k] for k in keep}
    results["summary"] = summarise(results)
    paths = write_report(tmp_path, results, SECTIONS)
    md, html = paths["markdown"].read_text(), paths["html"].read_text()
    for stage in ("corruption", "adversarial", "out-of-distribution"):
        assert f"The {stage} stage was skipped" in md
        assert f"The {stage} stage was skipped" in html
    assert "Reliability diagrams need the clean test probabilities" in md
    assert "Not measured in this run (stage skipped): corruptions, adversarial, ood." in md
    assert set(paths) == {"markdown", "html", "training_linear", "training_vfe"}


def test_results_without_clean_metrics_are_refused(tmp_path):
    with pytest.raises(ValueError, match="holding at least 'clean'"):
        write_report(tmp_path, {"setting": {}}, SECTIONS)


@pytest.mark.slow
def test_the_report_needs_no_stage_head_or_backbone_code(report_run, tmp_path):
    """Written in a fresh process from results.json alone, the report loads none of the run's machinery."""
    write_json(tmp_path / "results.json", report_run)
    code = ("import sys; from vfe.io import read_json; from vfe.report import write_report; "
            "from vfe.experiment.stages.sections import SECTIONS; "
            f"write_report({str(tmp_path)!r}, read_json({str(tmp_path / 'results.json')!r}), SECTIONS); "
            "print(sorted(m for m in sys.modules if m.startswith(('vfe.experiment', 'vfe.heads', "
            "'vfe.backbones'))))")
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=300)
    stages = ("corruptions", "selective", "adversarial", "ood")  # each stage's package and section alone
    assert done.stdout.strip() == str(sorted(["vfe.experiment", "vfe.experiment.stages", "vfe.experiment.stages.sections",
                                              *(f"vfe.experiment.stages.{s}" for s in stages),
                                              *(f"vfe.experiment.stages.{s}.section" for s in stages)]))
    assert (tmp_path / "figures" / "corruption_grid.png").exists() and (tmp_path / "figures" / "reliability.png").exists()


@pytest.mark.slow
def test_each_corruption_is_marked_seen_or_held_out_for_augmented_heads(report_run, tmp_path):
    from vfe.experiment.augment import augmentation_record

    results = {**report_run, "augmentation": augmentation_record("noise", (1, 2, 3, 4, 5))}
    md = write_report(tmp_path, results, SECTIONS)["markdown"].read_text()
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in md.splitlines()
            if line.startswith("| ") and line.count("|") > 4 and line.split("|")[2].strip() in ("seen", "held out")}
    # by hand: the noise family is the four *_noise corruptions; everything else was held out
    assert {name for name, mark in rows.items() if mark == "seen"} == {"gaussian noise", "shot noise",
                                                                        "impulse noise", "speckle noise"}
    assert len(rows) == 19 and "blur, weather, digital stayed held out" in md
    plain = write_report(tmp_path / "plain", report_run, SECTIONS)["markdown"].read_text()
    assert "held out" not in plain  # no augmented head, no marking
