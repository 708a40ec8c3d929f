"""Adversarial accuracy of every fitted head, attacked end to end through the backbone.

Result per (head, replicate):
    {"accuracy": {"clean": ..., "fgsm_linf_2/255": ..., "pgd_linf_8/255": ..., "pgd_linf_8/255_eot": ...,
                  "pgd_l2_0.5": ..., "pgd_l2_0.5_eot": ...},
     "n": images attacked, "samples_randomly": bool, "steps": ..., "n_eot": ..., "seconds": ...}
Keys are `vfe.robustness.attack_spec.AttackSpec.key` names; the summary reports them as `adv:<key>`.
Each result also holds "correct": {key: '0110…'}, whether the head got each attacked image right (one
character per image, in subset order; a string so results.json stays compact), so that the stage's
"adversarial_intervals" can give a 95 % bootstrap interval over replicates and images (each replicate its own
images): with ~100 images the subset's sampling error is as large as the spread over replicates.

Accuracy is that of the head's own prediction (`predict`, with its predict_mode and n_samples) on
the adversarial images: what a user of the head would get. For a deterministic head EOT is the
plain attack, so each "_eot" key repeats the plain number (it is not run twice); for a head that
samples, the plain and the EOT attack both run, and a gap between them is gradient masking.

Cost: the budgets of a PGD attack run from the smallest up, and an image whose adversarial version
is already *settled* (misclassified by the head's prediction and by each of n_eot draws of a
sampling head) keeps that version at the larger budgets: it lies inside the larger ball, so the
attack stays valid, and only the images still standing are attacked again. For a deterministic head
this is exactly as strong as attacking every image; FGSM, one step by definition, attacks all.

Heads that adapt at test time (registry `adapts`: t3a, linear-tts) would hide behind their adaptation if they
were attacked only through it (gradient masking; Athalye et al. 2018, Tramer et al. 2020). They are also attacked
by transfer from their non-adapting base (`base_probability_module()`: images crafted on it, scored by the head's
real prediction) and by BPDA (the adapting forward pass, the base's gradient); their `accuracy` / `correct` are
the per-image worst case over the three (an image counts only if it withstands all), with `per_attack`,
`per_attack_correct`, `strongest` (the attack with the lowest accuracy alone) and `seconds_per_attack`.

"+bn" heads (`--test-time-bn`: BatchNorm adapted to each test batch) adapt at test time too, in the backbone:
they are attacked the same three ways, on the attacked images as one batch (`_attack`).

Replicate r attacks its own class-balanced draw of the test images, with its own random starts.

Each head x replicate is attacked in a worker process of its own, two (one per core) at a time
(vfe.experiment.processes), or with `--engine ray` in a Ray task (vfe.experiment.fanout), on a copy of the backbone
rebuilt there; each attack runs under its own seeded random state, so the numbers are the same wherever and in
whichever order the heads are attacked."""
from __future__ import annotations

import copy
import functools
import time
from dataclasses import dataclass

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from vfe.backbones.adapt_bn import AdaptedNetwork
from vfe.backbones.shipping import rebuild, shippable
from vfe.data.split import balanced_index
from vfe.data.types import ImageSet
from vfe.experiment.config import EngineSettings
from vfe.experiment.context import RunContext
from vfe.experiment.fanout import TASK_DEVICE, fan_out
from vfe.experiment.processes import local_workers, map_local
from vfe.experiment.stages import Stage
from vfe.experiment.stages.adversarial.section import adversarial_section
from vfe.experiment.stages.adversarial.settings import AttackSettings, check_attacks
from vfe.experiment.stages.corruptions.adapted_bn import base_head
from vfe.experiment.summary import by_head
from vfe.hardware import torch_threads
from vfe.heads.registry import REGISTRY, is_external
from vfe.robustness.attacks import (
    AttackSpec,
    LogProbabilities,
    StraightThroughLogProbabilities,
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


@dataclass
class AttackDraw:
    """One replicate's attack: its backbone, its fitted heads {(head, replicate): head}, its test set and seed."""

    backbone: object
    models: dict
    test: ImageSet
    seed: int  # which test images are attacked (a class-balanced draw) and the attacks' random starts


def run_stage(settings: AttackSettings, ctx: RunContext) -> dict:
    """results.json's "adversarial" section, {head: {replicate: result}}, and "adversarial_intervals",
    {head: {attack key: {mean, low, high, ...}}} (`vfe.robustness.stats.attack_intervals`). Replicate r attacks
    its own images (drawn with its seed) through its own backbone; every head of a replicate, the same images.
    Every replicate's heads are attacked side by side in worker processes (`attack_draws`); "+bn" heads after
    them, here."""
    draws = [AttackDraw(p.backbone, ctx.models_of(r), p.test, p.seed) for r, p in enumerate(ctx.replicates)]
    attacked = attack_draws(settings, draws, ctx.device, ctx.progress, ctx.cluster, local_workers(ctx.device))
    for r, p in enumerate(ctx.replicates):
        if r in ctx.adapted:
            extractor, models = ctx.adapted[r]
            attacked.update(run_attacks(settings, p.backbone, models, p.test, p.seed, ctx.device, ctx.progress,
                                        adapted=AdaptedNetwork(extractor), twins=ctx.models_of(r)))
    per_head = by_head(attacked)
    return {"adversarial": per_head,
            "adversarial_intervals": {head: attack_intervals(per_rep) for head, per_rep in per_head.items()}}


def run_attacks(settings: AttackSettings, backbone, models: dict, test: ImageSet, seed: int,
                device: str | torch.device, progress: bool = True, cluster: EngineSettings | None = None, *,
                adapted: torch.nn.Module | None = None, twins: dict | None = None) -> dict:
    """{(head, replicate): result} (see the module docstring) on a class-balanced subset of `settings.n_attack`
    test images chosen with `seed` (the replicate's), the same images for every head; "images" in each result
    lists their rows in the test set. With `cluster.engine == "ray"` each head is attacked in a Ray task of its
    own (one CPU, one thread), with the same numbers as here. "+bn" heads (`adapted`: the backbone with adapted
    BatchNorm; `twins`: {(head, replicate): the plain head each was refitted from}) are attacked here."""
    if adapted is None:
        return attack_draws(settings, [AttackDraw(backbone, models, test, seed)], device, progress, cluster)
    rows, images_u8, labels = _attacked_images(settings, test, seed)
    specs = attack_specs(settings.attack_eps_linf, settings.attack_eps_l2, eot=True)
    images = to_unit_float(images_u8).to(device)
    results = {}
    with tqdm(total=len(models) * len(specs), desc="attacks", unit="attack", disable=not progress,
              dynamic_ncols=True) as bar:
        for (head, replicate), model in models.items():
            result = attack_one(backbone, model, images, labels, specs, settings, seed, device, bar,
                                f"{head}/replicate{replicate}", adapted=adapted, twin=twins[(base_head(head), replicate)])
            results[(head, replicate)] = {**result, "images": rows.tolist()}
    return results


def attack_draws(settings: AttackSettings, draws: list[AttackDraw], device: str | torch.device,
                 progress: bool = True, cluster: EngineSettings | None = None, workers: int = 1) -> dict:
    """{(head, replicate): result} for every head of every draw (`run_attacks`, without "+bn" heads), attacked
    here, in `workers` worker processes (vfe.experiment.processes; heads registered in this process only stay
    here), or in Ray tasks when `cluster.engine == "ray"`. On the CPU each attack runs at one thread wherever it
    runs, so its numbers do not depend on where (tests/robustness/test_attack_workers.py)."""
    chosen = [_attacked_images(settings, d.test, d.seed) for d in draws]
    specs = attack_specs(settings.attack_eps_linf, settings.attack_eps_l2, eot=True)
    items = [(key, k) for k, d in enumerate(draws) for key in d.models]
    ray = cluster is not None and cluster.engine == "ray"
    if any(is_external(head) for (head, _), _k in items):
        workers = 1
    if ray or (workers > 1 and len(items) > 1):
        shared = {"draws": [(shippable(d.backbone), images, labels, d.seed)
                            for d, (_, images, labels) in zip(draws, chosen, strict=True)],
                  "models": {key: draws[k].models[key] for key, k in items}, "specs": specs, "settings": settings}
        send = fan_out if ray else functools.partial(map_local, workers=workers)
        order = longest_first(items, draws, settings.n_eot)  # the jobs left last are short: no worker idles long
        done = {order[i]: result for i, result in send(
            attack_task, [items[i] for i in order], shared, progress=progress, unit="head",
            desc="attacks (ray)" if ray else f"attacks ({min(workers, len(items))} heads at a time)")}
    else:
        done = {}
        # on the CPU at one thread, as in a worker: a backward pass's sums follow the thread count, and one image in
        # 100 of a PGD attack can land on the other side at two threads (benchmarks/README.md, "make run")
        threads = 1 if torch.device(device).type == "cpu" else torch.get_num_threads()
        images = [to_unit_float(images_u8).to(device) for _, images_u8, _ in chosen]  # once per draw, not per head
        with tqdm(total=len(items) * len(specs), desc="attacks", unit="attack", disable=not progress,
                  dynamic_ncols=True) as bar, torch_threads(threads), threadpool_limits(limits=threads):
            for i, ((head, replicate), k) in enumerate(items):
                done[i] = attack_one(draws[k].backbone, draws[k].models[(head, replicate)], images[k], chosen[k][2],
                                     specs, settings, draws[k].seed, device, bar, f"{head}/replicate{replicate}")
    return {key: {**done[i], "images": chosen[k][0].tolist()} for i, (key, k) in enumerate(items)}


def longest_first(items: list, draws: list[AttackDraw], n_eot: int) -> list[int]:
    """The positions of `items` ((head, replicate), draw) with the costliest attacks first, else in their order.

    A head that samples at prediction time is attacked with n_eot draws at every step of its EOT attacks (the
    VFE head: about twice the linear head's time in `make run`); started first, such jobs leave the short ones
    to fill the last minutes on two workers, where in the order heads x replicates one worker idled 45 s of the
    stage's 196 s. The order changes when each job runs, never its numbers: each seeds its own generator."""
    def cost(position: int) -> int:
        key, k = items[position]
        model = draws[k].models[key]
        n_features = getattr(model, "n_features_in_", None)
        if not n_features:
            return 1
        with torch.random.fork_rng(devices=[]):  # a sampling head draws: this process's generator is left as it was
            return n_eot if samples_randomly(model.probability_module(), torch.zeros(8, n_features)) else 1

    return sorted(range(len(items)), key=lambda i: -cost(i))


def _attacked_images(settings: AttackSettings, test: ImageSet, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, uint8 images, labels) of the class-balanced `settings.n_attack` test images drawn with `seed`."""
    rows = balanced_index(test.labels, settings.n_attack, seed)
    return rows, np.asarray(test.images)[rows], np.asarray(test.labels)[rows]


def attack_task(item: tuple[tuple[str, int], int], *, draws: list[tuple], models: dict, specs: list[AttackSpec],
                settings: AttackSettings) -> dict:
    """One head attacked in a worker process or a Ray task, through its draw's backbone rebuilt on the CPU by the
    one shipping rule (vfe.backbones.shipping): attacks differentiate `forward`, torch in fp32, so no fast path is
    built."""
    key, k = item
    shipped, images, labels, seed = draws[k]
    backbone = rebuild(shipped, TASK_DEVICE, fast_path=False)
    return attack_one(backbone, models[key], to_unit_float(images), labels, specs, settings, seed, TASK_DEVICE)


def attack_one(backbone, model, images: torch.Tensor, labels: np.ndarray, specs: list[AttackSpec],
               settings: AttackSettings, data_seed: int, device, bar=None, name: str = "", *,
               adapts: bool | None = None, adapted: torch.nn.Module | None = None, twin=None) -> dict:
    """One fitted head attacked with every spec (the module docstring's result), under a random state seeded
    with `data_seed`: a head's numbers do not depend on which heads were attacked before it, or where.
    `adapts`: whether the head adapts at test time, so that it is also attacked through its base (`_attack`);
    None asks the registry (`model_adapts`). `adapted`: for a "+bn" head, the backbone with adapted BatchNorm
    (`vfe.backbones.adapt_bn.AdaptedNetwork`) whose features it is scored on, and `twin`, the plain head it was
    refitted from: it adapts at test time too, and is attacked as `_attack` says."""
    if adapts is None:
        adapts = model_adapts(model) or adapted is not None
    started = time.perf_counter()
    with torch.random.fork_rng():
        torch.manual_seed(data_seed)  # the sampling heads' draws when deciding which images are settled
        result = _attack(backbone, model, images, labels, specs, settings, data_seed, device, bar, name, adapts,
                         adapted, twin)
    return {**result, "seconds": round(time.perf_counter() - started, 3)}


def _attack(backbone, model, images: torch.Tensor, labels: np.ndarray, specs: list[AttackSpec],
            settings: AttackSettings, data_seed: int, device, bar, name: str, adapts: bool = False,
            adapted: torch.nn.Module | None = None, twin=None) -> dict:
    """attack_one's result. A head that adapts at test time is attacked three ways with every spec, since a
    gradient through its adapting module can point nowhere useful (gradient masking): "direct" through that
    module; "transfer", images crafted on its non-adapting base (`base_probability_module()`) and scored by
    the head's own prediction; "bpda", forward through the adapting module and gradient through the base
    (`StraightThroughLogProbabilities`). An image counts as correct under a spec only if it is correct under
    all three (the worst case, as AutoAttack reports it), and "per_attack", "per_attack_correct",
    "strongest" and "seconds_per_attack" say how each did. Any other head gets the direct attack alone and
    no such fields.

    A "+bn" head (`adapted` given) adapts in the backbone: the attacked images form one batch, split into the
    adapted batches as its features always are, so each image's features depend on the others and every image
    is perturbed at once (the attacker controls the test batch). "direct" differentiates the adapted network,
    through the batch statistics; "transfer" crafts the images on the plain backbone and `twin` (the head it
    was refitted from, through its own base if it adapts); "bpda" runs the adapted network forward and the
    plain backbone backward, with the head itself. No image is ever settled early (see the module docstring):
    a larger budget attacks the whole batch again."""
    head = _on_device(model.probability_module(), device).eval()
    target = torch.from_numpy(_class_index(model, labels)).to(device)
    if adapted is None:
        featurize = functools.partial(_features, backbone)
    else:  # a "+bn" head's features: the images it is given form one batch
        featurize = lambda x: _features(adapted, x, len(x))
    clean = featurize(images)
    random_head = samples_randomly(head, torch.from_numpy(clean[:8]).to(device))
    draws = settings.n_eot if random_head else 1
    correct = {"clean": model.predict(clean) == labels}
    paths = _paths(backbone, model, head, settings, device, adapts, adapted, twin)
    per_attack, seconds = {}, {}
    for attack, (plain, eot, module, batch) in paths.items():
        started = time.perf_counter()
        if adapted is not None:
            settled = _never_settled
        elif adapts:
            settled = functools.partial(_settled_together, model, module, labels=labels, target=target, draws=draws)
        else:
            settled = functools.partial(_settled_rows, model, head, labels=labels, target=target, draws=draws)
        per_attack[attack] = _attack_path(featurize, model, images, labels, target, clean, specs, settings, data_seed,
                                          (plain, eot), batch, settled, random_head, bar,
                                          f"{name} {attack}" if adapts else name, advance=attack == "direct")
        seconds[attack] = round(time.perf_counter() - started, 3)
    keys = [spec.key for spec in specs]
    for key in keys:
        correct[key] = np.logical_and.reduce([per_attack[attack][key] for attack in paths])
    result = {"accuracy": {key: float(np.mean(c)) for key, c in correct.items()},
              "correct": {key: _bits(c) for key, c in correct.items()},
              "n": len(images), "samples_randomly": bool(random_head),
              "steps": int(settings.attack_steps), "n_eot": int(settings.n_eot)}
    if adapts:
        result.update(
            per_attack={key: {a: float(np.mean(per_attack[a][key])) for a in paths} for key in keys},
            per_attack_correct={key: {a: _bits(per_attack[a][key]) for a in paths} for key in keys},
            strongest={key: min(paths, key=lambda a, key=key: int(per_attack[a][key].sum())) for key in keys},
            seconds_per_attack=seconds)
    return result


def _paths(backbone, model, head: torch.nn.Module, settings: AttackSettings, device, adapts: bool,
           adapted: torch.nn.Module | None, twin) -> dict[str, tuple]:
    """{attack: (model torchattacks differentiates, its EOT version, the head module the forward pass runs,
    images per perturbed batch)}, in the order in which `strongest` breaks ties (see `_attack`)."""
    eot = settings.n_eot
    if adapted is None:
        paths = {"direct": (LogProbabilities(backbone, head), LogProbabilities(backbone, head, n_samples=eot), head,
                            BATCH_SIZE)}
        if adapts:
            base = _on_device(_base_module(model), device).eval()
            paths["transfer"] = (LogProbabilities(backbone, base), LogProbabilities(backbone, base, n_samples=eot),
                                 base, BATCH_SIZE)
            paths["bpda"] = (StraightThroughLogProbabilities(backbone, head, base),
                             StraightThroughLogProbabilities(backbone, head, base, n_samples=eot), head, BATCH_SIZE)
        return paths
    whole = None  # the whole attacked set in one batch: filled in by _attack_path
    base = _on_device(_non_adapting(model), device).eval()
    source = _on_device(_non_adapting(twin), device).eval()
    return {"direct": (LogProbabilities(adapted, head), LogProbabilities(adapted, head, n_samples=eot), head, whole),
            "transfer": (LogProbabilities(backbone, source), LogProbabilities(backbone, source, n_samples=eot),
                         source, BATCH_SIZE),
            "bpda": (StraightThroughLogProbabilities(backbone, head, base, adaptive_backbone=adapted),
                     StraightThroughLogProbabilities(backbone, head, base, n_samples=eot, adaptive_backbone=adapted),
                     head, whole)}


def _attack_path(featurize, model, images: torch.Tensor, labels: np.ndarray, target: torch.Tensor,
                 clean: np.ndarray, specs: list[AttackSpec], settings: AttackSettings, data_seed: int,
                 models: tuple[torch.nn.Module, torch.nn.Module], batch: int | None, settled, random_head: bool,
                 bar, name: str, advance: bool) -> dict[str, np.ndarray]:
    """{spec key: whether the head's prediction is right on each image} for one way of attacking it. `models`:
    what torchattacks differentiates, plainly and with EOT, on batches of `batch` images (None: all at once);
    `featurize(images)`: the features the head is scored on; `settled(features, rows)`: which of `rows` need no
    larger budget (the module docstring's cost note). `advance`: whether the progress bar counts these specs."""
    correct: dict[str, np.ndarray] = {}
    plain, eot = models
    clean_settled = settled(clean, np.arange(len(clean)))
    # per PGD attack: features of the adversarial images held so far, and which of them are settled
    held: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
    for spec in specs:
        if bar is not None:
            bar.set_postfix_str(f"{name} {spec.key}")
            if advance:
                bar.update(1)
        if spec.eot and not random_head:
            correct[spec.key] = correct[AttackSpec(spec.method, spec.norm, spec.eps).key]
            continue
        family = (spec.method, spec.norm, spec.eot)
        if spec.method == "pgd":
            features, done = held.get(family, (clean.copy(), clean_settled.copy()))
        else:  # FGSM: every image, one step
            features, done = clean.copy(), np.zeros(len(images), bool)
        todo = np.flatnonzero(~done)
        if len(todo):
            attack = make_attack(spec, eot if spec.eot else plain, settings.attack_steps)
            with torch.random.fork_rng():
                torch.manual_seed(data_seed)  # the same random starts for every head
                adversarial = perturb(attack, images[todo], target[todo], batch or len(todo))
            features[todo] = featurize(adversarial)
            done[todo] = settled(features, todo)
        if spec.method == "pgd":
            held[family] = features, done
        correct[spec.key] = model.predict(features) == labels
    return correct


def _never_settled(features: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """For a "+bn" head: no image is settled, since its prediction changes with the rest of the batch."""
    return np.zeros(len(rows), bool)


def _settled_rows(model, head, features: np.ndarray, rows: np.ndarray, *, labels: np.ndarray, target: torch.Tensor,
                  draws: int) -> np.ndarray:
    """`_settled` on `rows` alone: for a head that does not adapt, a row's prediction is its own."""
    return _settled(model, head, features[rows], labels[rows], target[rows], draws)


@torch.no_grad()
def _settled_together(model, module, features: np.ndarray, rows: np.ndarray, *, labels: np.ndarray,
                      target: torch.Tensor, draws: int) -> np.ndarray:
    """Which of `rows` are misclassified by the head's prediction on all the attacked images together (what is
    scored: an adapting head's prediction of a row depends on the other rows) and by every one of `draws`
    draws of `module` (what the attack's forward pass runs) on those rows."""
    wrong = (model.predict(features) != labels)[rows]
    x = torch.from_numpy(features[rows]).to(target.device)
    for _ in range(draws):
        wrong &= (module(x).argmax(1) != target[rows]).cpu().numpy()
    return wrong


def _base_module(model) -> torch.nn.Module:
    """The non-adapting path of a head that adapts at test time, as a probability module."""
    if not hasattr(model, "base_probability_module"):
        raise TypeError(f"{type(model).__name__} adapts at test time (its registry entry says adapts=True) but has "
                        "no base_probability_module(), the non-adapting path that transfer and BPDA attacks need")
    return model.base_probability_module()


def _non_adapting(model) -> torch.nn.Module:
    """A head's probability module without its own adaptation: its base if it adapts, else the module itself."""
    return _base_module(model) if model_adapts(model) else model.probability_module()


def model_adapts(model) -> bool:
    """Whether a fitted head adapts to the rows it is given: the registry entry of its class (or of a class it
    derives from) says `adapts`. By class, so presets and subclasses of an adapting head count too."""
    adapting = {entry.target for entry in REGISTRY.values() if entry.adapts}
    return any(f"{cls.__module__}:{cls.__qualname__}" in adapting for cls in type(model).__mro__)


def _bits(correct: np.ndarray) -> str:
    """Per-image correctness as '0110…' (compact in results.json)."""
    return "".join("1" if x else "0" for x in correct)


@torch.no_grad()
def _features(network, images: torch.Tensor, batch: int = BATCH_SIZE) -> np.ndarray:
    """Features of float images, `batch` at a time (all at once for a "+bn" head: its batches are its own)."""
    batches = [network(images[i:i + batch]) for i in range(0, len(images), batch)]
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


STAGE = Stage("adversarial", ("attacks",), run_stage, adversarial_section,
              enabled=lambda own: own.n_attack > 0, label=lambda own: f"adversarial attacks ({own.n_attack} images)",
              check=lambda own, heads: check_attacks(own))
