"""Adversarial accuracy of every fitted head, attacked end to end through the backbone.

Result per (head, seed):
    {"accuracy": {"clean": ..., "fgsm_linf_2/255": ..., "pgd_linf_8/255": ..., "pgd_linf_8/255_eot": ...,
                  "pgd_l2_0.5": ..., "pgd_l2_0.5_eot": ...},
     "n": images attacked, "samples_randomly": bool, "steps": ..., "n_eot": ..., "seconds": ...}
Keys are `vfe.robustness.attack_spec.AttackSpec.key` names; the summary reports them as `adv:<key>`.
Each result also holds "correct": {key: '0110…'}, whether the head got each attacked image right (one
character per image, in subset order; a string so results.json stays compact), so that the stage's
"adversarial_intervals" can give a 95 % bootstrap interval over images and seeds: with ~100 images the
subset's sampling error exceeds the spread over seeds, which share those images.

Accuracy is that of the head's own prediction (`predict`, with its predict_mode and n_samples) on
the adversarial images: what a user of the head would get. For a deterministic head EOT is the
plain attack, so each "_eot" key repeats the plain number (it is not run twice); for a head that
samples, the plain and the EOT attack both run, and a gap between them is gradient masking.

Cost: the budgets of a PGD attack run from the smallest up, and an image whose adversarial version
is already *settled* (misclassified by the head's prediction and by each of n_eot draws of a
sampling head) keeps that version at the larger budgets: it lies inside the larger ball, so the
attack stays valid, and only the images still standing are attacked again. For a deterministic head
this is exactly as strong as attacking every image; FGSM, one step by definition, attacks all.

With `--engine ray` each head x seed is attacked in a Ray task of its own (vfe.benchmark.fanout), on a copy of
the backbone rebuilt there; each attack runs under its own seeded random state, so the numbers are the same
wherever and in whichever order the heads are attacked.
"""
from __future__ import annotations

import copy
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from vfe.backbones import Backbone
from vfe.benchmark.config import AttackSettings, EngineSettings
from vfe.benchmark.context import RunContext
from vfe.benchmark.fanout import TASK_DEVICE, fan_out
from vfe.benchmark.summary import by_head
from vfe.data.split import balanced_subset
from vfe.data.types import ImageSet
from vfe.robustness.attacks import (
    AttackSpec,
    LogProbabilities,
    attack_specs,
    make_attack,
    perturb,
    samples_randomly,
    to_unit_float,
)
from vfe.robustness.stats import attack_intervals

# images per attack batch: the backward pass keeps a whole batch's activations, and small batches are
# also faster on CPU (PGD-10 on 100 images at 112 px: 8.3 s and 1.3 GB peak RSS at 16 against 13.0 s
# and 3.1 GB at 100; benchmarks/bench_attack_batch.py)
BATCH_SIZE = 16


def run_stage(settings: AttackSettings, ctx: RunContext) -> dict:
    """results.json's "adversarial" section, {head: {seed: result}}, and "adversarial_intervals",
    {head: {attack key: {mean, low, high, n_images, n_seeds, level}}} (`vfe.robustness.stats.attack_intervals`)."""
    per_head = by_head(run_attacks(settings, ctx.prepared.backbone, ctx.models, ctx.prepared.test,
                                   ctx.data_seed, ctx.device, ctx.progress, ctx.cluster))
    return {"adversarial": per_head,
            "adversarial_intervals": {head: attack_intervals(per_seed) for head, per_seed in per_head.items()}}


def run_attacks(settings: AttackSettings, backbone, models: dict, test: ImageSet, data_seed: int,
                device: str | torch.device, progress: bool = True, cluster: EngineSettings | None = None) -> dict:
    """{(head, seed): result} (see the module docstring) on a class-balanced subset of `settings.n_attack`
    test images chosen with `data_seed`; the same images for every head. With `cluster.engine == "ray"` each
    head x seed is attacked in a Ray task of its own (one CPU, one thread), with the same numbers as here."""
    subset = balanced_subset(test, settings.n_attack, data_seed, "attack")
    specs = attack_specs(settings.attack_eps_linf, settings.attack_eps_l2, eot=True)
    if cluster is not None and cluster.engine == "ray":
        shared = {"parts": _shippable(backbone), "models": models, "images": subset.images, "labels": subset.labels,
                  "specs": specs, "settings": settings, "data_seed": data_seed}
        done = dict(fan_out(attack_task, list(models), shared, progress=progress, desc="attacks (ray)",
                            unit="head"))
        return {key: done[i] for i, key in enumerate(models)}
    images = to_unit_float(subset.images).to(device)
    results = {}
    with tqdm(total=len(models) * len(specs), desc="attacks", unit="attack", disable=not progress,
              dynamic_ncols=True) as bar:
        for (head, seed), model in models.items():
            results[(head, seed)] = attack_one(backbone, model, images, subset.labels, specs, settings, data_seed,
                                               device, bar, f"{head}/seed{seed}")
    return results


def attack_task(key: tuple[str, int], *, parts: dict, models: dict, images: np.ndarray, labels: np.ndarray,
                specs: list[AttackSpec], settings: AttackSettings, data_seed: int) -> dict:
    """One head x seed attacked in a Ray task: the backbone rebuilt on the task's CPU from `_shippable`'s parts."""
    backbone = Backbone(device=torch.device(TASK_DEVICE), **parts)
    return attack_one(backbone, models[key], to_unit_float(images), labels, specs, settings, data_seed, TASK_DEVICE)


def _shippable(backbone: Backbone) -> dict:
    """Backbone's constructor arguments (its network on the CPU, and its metadata), for a Ray task to rebuild it:
    attacks differentiate `forward`, plain torch in fp32, so the traced or other-runtime fast path stays here."""
    model = backbone.model if backbone.device.type == "cpu" else copy.deepcopy(backbone.model).cpu()
    return {"model": model, "name": backbone.name, "weights": backbone.weights, "data_config": backbone.data_config,
            "settings": backbone.settings}


def attack_one(backbone, model, images: torch.Tensor, labels: np.ndarray, specs: list[AttackSpec],
               settings: AttackSettings, data_seed: int, device, bar=None, name: str = "") -> dict:
    """One fitted head attacked with every spec (the module docstring's result), under a random state seeded
    with `data_seed`: a head's numbers do not depend on which heads were attacked before it, or where."""
    started = time.perf_counter()
    with torch.random.fork_rng():
        torch.manual_seed(data_seed)  # the sampling heads' draws when deciding which images are settled
        result = _attack(backbone, model, images, labels, specs, settings, data_seed, device, bar, name)
    return {**result, "seconds": round(time.perf_counter() - started, 3)}


def _attack(backbone, model, images: torch.Tensor, labels: np.ndarray, specs: list[AttackSpec],
            settings: AttackSettings, data_seed: int, device, bar, name: str) -> dict:
    head = _on_device(model.probability_module(), device).eval()
    target = torch.from_numpy(_class_index(model, labels)).to(device)
    clean = _features(backbone, images)
    random_head = samples_randomly(head, torch.from_numpy(clean[:8]).to(device))
    draws = settings.n_eot if random_head else 1
    plain = LogProbabilities(backbone, head)
    eot = LogProbabilities(backbone, head, n_samples=settings.n_eot)
    correct = {"clean": model.predict(clean) == labels}
    clean_settled = _settled(model, head, clean, labels, target, draws)
    # per PGD attack: features of the adversarial images held so far, and which of them are settled
    held: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
    for spec in specs:
        if bar is not None:
            bar.set_postfix_str(f"{name} {spec.key}")
            bar.update(1)
        if spec.eot and not random_head:
            correct[spec.key] = correct[AttackSpec(spec.method, spec.norm, spec.eps).key]
            continue
        family = (spec.method, spec.norm, spec.eot)
        if spec.method == "pgd":
            features, settled = held.get(family, (clean.copy(), clean_settled.copy()))
        else:  # FGSM: every image, one step
            features, settled = clean.copy(), np.zeros(len(images), bool)
        todo = np.flatnonzero(~settled)
        if len(todo):
            attack = make_attack(spec, eot if spec.eot else plain, settings.attack_steps)
            with torch.random.fork_rng():
                torch.manual_seed(data_seed)  # the same random starts for every head
                features[todo] = _features(backbone, perturb(attack, images[todo], target[todo], BATCH_SIZE))
            settled[todo] = _settled(model, head, features[todo], labels[todo], target[todo], draws)
        if spec.method == "pgd":
            held[family] = features, settled
        correct[spec.key] = model.predict(features) == labels
    return {"accuracy": {key: float(np.mean(c)) for key, c in correct.items()},
            "correct": {key: "".join("1" if x else "0" for x in c) for key, c in correct.items()},
            "n": len(images), "samples_randomly": bool(random_head),
            "steps": int(settings.attack_steps), "n_eot": int(settings.n_eot)}


@torch.no_grad()
def _features(backbone, images: torch.Tensor) -> np.ndarray:
    batches = [backbone(images[i:i + BATCH_SIZE]) for i in range(0, len(images), BATCH_SIZE)]
    return torch.cat(batches).float().cpu().numpy()


@torch.no_grad()
def _settled(model, head, features: np.ndarray, labels: np.ndarray, target: torch.Tensor,
             draws: int) -> np.ndarray:
    """Misclassified by the head's prediction and by every one of `draws` draws of its probability module."""
    wrong = model.predict(features) != labels
    x = torch.from_numpy(features).to(target.device)
    for _ in range(draws):
        wrong &= (head(x).argmax(1) != target).cpu().numpy()
    return wrong


def _class_index(model, labels: np.ndarray) -> np.ndarray:
    """Test labels as indices into the head's classes (the order of its probability outputs)."""
    unseen = sorted(set(labels.tolist()) - set(model.classes_.tolist()))
    if unseen:
        raise ValueError(f"test labels {unseen} were never seen by the head "
                         f"(its classes: {model.classes_.tolist()})")
    return np.searchsorted(model.classes_, labels).astype(np.int64)


def _on_device(module: torch.nn.Module, device) -> torch.nn.Module:
    """The head's module on the attack's device; a copy when it must move, so the fitted head stays put."""
    device = torch.device(device)
    if all(p.device == device for p in module.parameters()):
        return module
    return copy.deepcopy(module).to(device)
