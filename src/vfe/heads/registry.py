"""The one list of heads: each registered once, with what every command needs to know about it.

The CLI's choices, the benchmark's `--heads all`, the sweep's input check, the fit stage's parameters
and the classes a saved pipeline may name all derive from `REGISTRY`. Head classes are named as
"module:Class" strings and imported on first use, so listing or validating heads does not load torch.

Heads from outside vfe join the same registry, for this process: `@register_head("name", ...)` on the class,
or a "package.module:Class" reference in `--heads` / `--head` (`resolve_head`), which imports the module the
user named and registers the class under its name. Either way the class is checked once, at registration,
for what the benchmark calls on it (`_lacking`).
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
import numbers
import re
import types
import typing
from collections.abc import Callable, Mapping
from functools import cache
from typing import TYPE_CHECKING, Any

import numpy as np

from vfe.errors import PipelineFileError, SettingsError, VfeError

if TYPE_CHECKING:
    from vfe.heads.base import Head

INPUTS = ("features", "images")


@dataclasses.dataclass(frozen=True)
class HeadSpec:
    """A registered head: its class (`target`), or for a preset the `base` head and the `params` it sets.

    A preset inherits its base head's class (unless it names a subclass as its own `target`), inputs and
    user parameters; its own `params` override the class defaults and are overridden by the user's. An
    entry with a `target` may set `params` too (a wrapper's, e.g. the ensemble's `base`).
    """

    name: str
    target: str = ""  # "module:Class", imported on first use; a preset's is filled in from its base
    inputs: str = "features"  # what fit takes: "features" (N x D floats) or "images" (uint8)
    base: str | None = None
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    augmented: bool = False  # fitted with fit(X, y, X_aug=...) on features of corrupted training images
    augmix: bool = False  # fitted with fit(X, y, X_aug=views): K AugMix views per training image (n x K x d)
    adapts: bool = False  # adapts to each test set at prediction time: attacked also through its base, OOD mixed
    benchmark: bool = True  # compared by the feature benchmark (`vfe run --heads all`)
    excluded_because: str = ""
    about: str = ""

    def __post_init__(self):
        object.__setattr__(self, "params", types.MappingProxyType(dict(self.params)))
        if not (self.target or self.base):
            raise TypeError(f"head {self.name!r}: give its class (target) or the head it is a preset of (base)")
        if self.inputs not in INPUTS:
            raise TypeError(f"head {self.name!r}: inputs must be one of {INPUTS}, got {self.inputs!r}")
        if self.benchmark == bool(self.excluded_because):
            raise TypeError(f"head {self.name!r}: a head left out of the benchmark says why, and only then")


def _preset(name: str, base: str, params: dict | None = None, **kwargs) -> HeadSpec:
    return HeadSpec(name, base=base, params=params or {}, **kwargs)


def _registry(*entries: HeadSpec) -> dict[str, HeadSpec]:
    """{name: spec}, each preset given its base's class and inputs (the base is registered before it)."""
    out: dict[str, HeadSpec] = {}
    for entry in entries:
        if entry.base is not None:
            base = out[entry.base]
            entry = dataclasses.replace(entry, target=entry.target or base.target, inputs=base.inputs,
                                        adapts=entry.adapts or base.adapts)
        out[entry.name] = entry
    return out


REGISTRY: dict[str, HeadSpec] = _registry(
    HeadSpec("linear", "vfe.heads.linear:LinearHead", about="Dropout -> Dense on the features (the reference)"),
    HeadSpec("vfe", "vfe.heads.vfe:VFEHead", about="variational feature encoder + classifier on a sampled z"),
    _preset("vfe-mean", "vfe", {"classifier_input": "mean", "predict_mode": "mean"},
            about="VFE, classifier trained and run on z_mean (deterministic)"),
    _preset("vfe-k8", "vfe", {"predict_mode": "average", "n_samples": 8},
            about="VFE, probabilities averaged over 8 sampled z"),
    _preset("vfe-aug", "vfe", augmented=True, about="VFE trained on clean + corrupted-image features"),
    HeadSpec("pca", "vfe.heads.pca:PCAHead", about="PCA to the VFE's latent size, then the linear head"),
    HeadSpec("ae", "vfe.heads.autoencoder:AutoencoderHead",
             about="deterministic feature autoencoder, classifier on its code"),
    _preset("dae", "ae", {"noise_std": 0.3}, about="denoising autoencoder: Gaussian noise on the features"),
    _preset("dae-aug", "ae", augmented=True,
            about="denoising autoencoder: features of corrupted images -> their clean features"),
    HeadSpec("vib", "vfe.heads.vib:VIBHead", about="deep variational information bottleneck (Alemi et al.)"),
    HeadSpec("t3a", "vfe.heads.t3a:T3AHead", adapts=True,
             about="linear head, class templates adjusted online on each test set (T3A, Iwasawa & Matsuo 2021)"),
    HeadSpec("linear-tts", "vfe.heads.restandardise:RestandardisedHead", adapts=True,
             about="linear head on test features re-standardised to the training mean/std, per test set"),
    HeadSpec("linear-ens", "vfe.heads.ensemble:SeedEnsemble", params={"base": "linear"},
             about="5 linear heads with different seeds, probabilities averaged"),
    HeadSpec("vfe-ens", "vfe.heads.ensemble:SeedEnsemble", params={"base": "vfe"}, benchmark=False,
             excluded_because="fits 5 VFE heads (5 feature VAEs), 5x the vfe head's time: use `vfe fit "
                              "--head vfe-ens` or `vfe sweep`",
             about="5 VFE heads with different seeds, probabilities averaged"),
    HeadSpec("svm", "vfe.heads.svm:SVMHead", benchmark=False,
             excluded_because="a head for very small data sets (measured: minutes per fit at 10,000 labels)",
             about="linear SVM with calibrated probabilities, for tens of labels per class"),
    HeadSpec("finetune", "vfe.heads.finetune:FinetuneHead", inputs="images", benchmark=False,
             excluded_because="trains the backbone on images: use `vfe fit --head finetune`",
             about="the backbone's top fine-tuned with Dropout -> Dense, on images; `recipe` keras-guide (default: "
                   "BatchNorm frozen, head first, lr 1e-4, flip/rotation/zoom) or reference (the run's stage 0)"),
    HeadSpec("linear-augmix", "vfe.heads.augmix:AugMixLinearHead", base="linear", augmix=True,
             about="linear head on clean + AugMix-view features (no benchmark corruption seen in training)"),
    HeadSpec("linear-augmix-js", "vfe.heads.augmix:AugMixLinearHead", base="linear", params={"js_weight": 12.0},
             augmix=True, about="linear-augmix + AugMix's Jensen-Shannon consistency term (weight 12)"),
    _preset("vfe-augmix", "vfe", augmix=True, about="VFE on clean + AugMix-view features, both stages"),
    _preset("vfe-augmix-js", "vfe", {"js_weight": 12.0}, augmix=True,
            about="vfe-augmix + AugMix's Jensen-Shannon consistency term (weight 12) in stage 2"),
)

# Classes a saved pipeline may name besides the registered ones (wrappers around a head).
_WRAPPERS = ("vfe.heads.priors:PriorCorrected",)

_BUILT_IN = frozenset(REGISTRY)
_CLASSES: dict[str, type] = {}  # target -> class registered from outside vfe (its module may not be importable)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")  # no "." (--head-param NAME.KEY), ":" (a reference) or "+" (a twin)


def _import(target: str) -> type:
    if target in _CLASSES:
        return _CLASSES[target]
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def register_head(name: str, *, about: str = "", params: Mapping[str, Any] | None = None, adapts: bool = False,
                  augmented: bool = False, augmix: bool = False, benchmark: bool = True,
                  excluded_because: str = "") -> Callable[[type], type]:
    """Class decorator: the class becomes head `name` for `make_head`, `vfe run --heads`, `--head-param` and the
    report, as a built-in head is. The options are HeadSpec's (`params`: defaults this entry sets).

    The class is a scikit-learn classifier on feature vectors (a `vfe.heads.base.Head` subclass, or any class
    with `fit(X, y)`, `predict`, `predict_proba`, `get_params` and an `__init__` taking `random_state`); what it
    lacks is one SettingsError naming it. Registered for this process only: Ray workers do not know the name.
    """
    def register(cls: type) -> type:
        _add(HeadSpec(name, _target_of(cls), params=params or {}, adapts=adapts, augmented=augmented,
                      augmix=augmix, benchmark=benchmark, excluded_because=excluded_because,
                      about=about or _first_line(cls.__doc__)), cls)
        return cls
    return register


def resolve_head(head: str, flag: str) -> str:
    """The registered name of `head`: a name as it is; a "package.module:Class" reference (given by `flag`)
    imported now, its class registered under its class name unless it is registered already. A module that
    fails to import, a missing attribute or a class the benchmark cannot use is one SettingsError naming the flag."""
    if ":" not in head:
        return head
    module, _, attr = head.partition(":")
    if not module or not attr:
        raise SettingsError(f"{flag} {head}: a head of your own is given as package.module:Class")
    try:
        found = getattr(importlib.import_module(module), attr, None)
    except VfeError as err:
        raise SettingsError(f"{flag} {head}: {err}") from err
    except Exception as err:  # the user's module: whatever its import raised, in one line
        said = " ".join(str(err).split())  # one line, whatever the module's exception says
        raise SettingsError(f"{flag} {head}: cannot import {module!r} ({type(err).__name__}: {said})") from err
    if found is None:
        raise SettingsError(f"{flag} {head}: module {module!r} has no attribute {attr!r}")
    if not isinstance(found, type):
        raise SettingsError(f"{flag} {head}: {attr} is a {type(found).__name__}, not a class")
    known = registered_name(found)
    if known is not None:
        return known
    try:
        register_head(attr)(found)
    except SettingsError as err:
        raise SettingsError(f"{flag} {head}: {err}") from None
    return attr


def registered_name(cls: type) -> str | None:
    """The first name `cls` is registered under (its own entry before presets of it), or None."""
    target = _target_of(cls)
    return next((name for name, entry in REGISTRY.items() if entry.target == target), None)


def is_external(name: str) -> bool:
    """Whether `name` was registered in this process from outside vfe (unknown to a fresh process, e.g. a Ray worker)."""
    return name in REGISTRY and name not in _BUILT_IN


def _add(entry: HeadSpec, cls: type) -> None:
    """Register `cls` as `entry`; the same class again replaces its entry, another class under a taken name is refused."""
    if not _NAME.fullmatch(entry.name) or entry.name == "all":
        raise SettingsError(f"head name {entry.name!r}: use letters, digits, '-' and '_' (not 'all')")
    taken = REGISTRY.get(entry.name)
    if taken is not None and taken.target != entry.target:
        raise SettingsError(f"head name {entry.name!r} is taken by {taken.target}; register {entry.target} "
                            "under another name")
    lacking = _lacking(cls, entry)
    if lacking:
        raise SettingsError(f"head {entry.name!r}: {getattr(cls, '__name__', cls)} lacks what the benchmark calls: "
                            f"{'; '.join(lacking)}")
    _CLASSES[entry.target] = cls
    REGISTRY[entry.name] = entry
    _parameter_types.cache_clear()  # the same target may now be another class (a module imported again)


def _lacking(cls: type, entry: HeadSpec) -> list[str]:
    """What a head class must have for every stage of the benchmark and does not."""
    if not isinstance(cls, type):
        return [f"a class (got a {type(cls).__name__})"]
    out = [f"{method}()" for method in ("fit", "predict", "predict_proba", "get_params")
           if not callable(getattr(cls, method, None))]
    if "random_state" not in inspect.signature(cls.__init__).parameters:
        out.append("a random_state parameter of __init__ (each replicate seeds every head)")
    fit = getattr(cls, "_fit", None) or getattr(cls, "fit", None)  # a Head's fit passes X_aug to its _fit
    if (entry.augmented or entry.augmix) and fit is not None and "X_aug" not in inspect.signature(fit).parameters:
        out.append("fit(X, y, X_aug=...) (augmented / augmix heads train on extra views)")
    if entry.adapts and not callable(getattr(cls, "base_probability_module", None)):
        out.append("base_probability_module() (adapts=True: its non-adapting path, for the transfer and BPDA attacks)")
    return out


def _target_of(cls: type) -> str:
    return f"{getattr(cls, '__module__', '?')}:{getattr(cls, '__qualname__', type(cls).__name__)}"


def _first_line(doc: str | None) -> str:
    return (doc or "").strip().split("\n")[0]


def head_names() -> list[str]:
    """Every name make_head accepts, in registry order."""
    return list(REGISTRY)


def spec(name: str) -> HeadSpec:
    """The registry entry of `name`; an unknown name is a SettingsError listing the valid ones."""
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise SettingsError(f"unknown head {name!r}; available: {', '.join(head_names())}") from None


def feature_heads() -> list[str]:
    """Heads fitted on backbone features (what `vfe fit` and sweeps on cached features can run)."""
    return [n for n, s in REGISTRY.items() if s.inputs == "features"]


def benchmark_heads() -> list[str]:
    """What `--heads all` compares: linear and vfe first (the reference pair), then registry order."""
    names = [n for n, s in REGISTRY.items() if s.benchmark]
    first = [n for n in ("linear", "vfe") if n in names]
    return first + [n for n in names if n not in first]


def expand_heads(heads: list[str]) -> list[str]:
    """`heads` with "all" replaced by benchmark_heads(), in order, without repeats.

    A "package.module:Class" reference is imported and registered now (`resolve_head`), and stands for its name.
    A head the benchmark does not compare (or an unknown name) is a SettingsError saying why.
    """
    names = [n for h in heads for n in (benchmark_heads() if h == "all" else [resolve_head(h, "--heads")])]
    for name in names:
        entry = spec(name)
        if not entry.benchmark:
            raise SettingsError(f"head {name!r} is not part of the feature benchmark: {entry.excluded_because}")
    return list(dict.fromkeys(names))


def head_class_of(name: str) -> type:
    """The class behind a head or preset name (imported now)."""
    return _import(spec(name).target)


def is_augmented(name: str) -> bool:
    """Whether `name` is fitted with features of corrupted training images (fit(X, y, X_aug=...))."""
    return spec(name).augmented


def is_augmix(name: str) -> bool:
    """Whether `name` is fitted with AugMix views of the training images (fit(X, y, X_aug=n x K x d))."""
    return spec(name).augmix


def adapts_at_test_time(name: str) -> bool:
    """Whether `name` adapts to each test set when it predicts (T3A, re-standardisation): such a head is attacked
    also by transfer from, and through, its non-adapting base, and scores OOD inputs mixed with in-distribution
    ones. A name the registry does not know (a "+bn" twin) is not such a head."""
    return name in REGISTRY and REGISTRY[name].adapts


def params_for(name: str, head_params: dict[str, dict]) -> dict:
    """A head's user parameters: those given for its base head (e.g. "vfe" for "vfe-k8"), then its own."""
    base = spec(name).base
    head_params = head_params or {}
    return {**(head_params.get(base, {}) if base is not None else {}), **head_params.get(name, {})}


def make_head(name: str, **params) -> Head:
    """A head by name, e.g. make_head("vfe", latent_dim=64), make_head("vfe-k8"); user params win over a
    preset's. Their names and types are checked first; their ranges by check_params before any work, and by
    the head itself when it fits."""
    _check_names_and_types(name, params)
    return head_class_of(name)(**{**spec(name).params, **params})


def check_params(name: str, params: dict) -> None:
    """Unknown keys, values of the wrong type and values out of range are a SettingsError naming the head.

    Run it before loading data or backbones, so a typo costs nothing. Types follow each parameter's
    annotation (int, float, bool, str, None, list); a float parameter also takes an int. Ranges and
    choices are the head class's `_parameter_constraints` (scikit-learn's form: `vfe.heads.base`).
    """
    _check_names_and_types(name, params)
    from sklearn.utils._param_validation import InvalidParameterError, validate_parameter_constraints

    constraints = getattr(head_class_of(name), "_parameter_constraints", {})
    try:
        validate_parameter_constraints(constraints, params, caller_name=f"head {name!r}")
    except InvalidParameterError as err:
        raise SettingsError(str(err)) from None


def _check_names_and_types(name: str, params: dict) -> None:
    """Unknown keys and values of the wrong type are a SettingsError naming the head and the valid keys."""
    allowed = _parameter_types(spec(name).target)
    valid = ", ".join(sorted(allowed))
    for key, value in params.items():
        if key not in allowed:
            near = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise SettingsError(f"head {name!r} has no parameter {key!r}{hint}; valid parameters: {valid}")
        kinds = allowed[key]
        if kinds is not None and not any(_is_kind(value, kind) for kind in kinds):
            wanted = " or ".join("None" if k is type(None) else k.__name__ for k in kinds)
            raise SettingsError(f"head {name!r}: parameter {key!r} must be {wanted}, got {value!r} "
                                f"({type(value).__name__}); valid parameters: {valid}")


def _is_kind(value, kind: type) -> bool:
    if kind is bool:
        return isinstance(value, (bool, np.bool_))
    if isinstance(value, bool):
        return False  # True is an int to Python, never a count or a rate here
    if kind is int:
        return isinstance(value, numbers.Integral)
    if kind is float:
        return isinstance(value, numbers.Real)
    if kind is list:
        return isinstance(value, (list, tuple))
    return isinstance(value, kind)


_CHECKED = (int, float, bool, str, list, type(None))


@cache
def _parameter_types(target: str) -> dict[str, tuple[type, ...] | None]:
    """{parameter: accepted types} of a head class's __init__; None where the annotation is not checked."""
    init = _import(target).__init__
    hints = typing.get_type_hints(init)
    out = {}
    for p in list(inspect.signature(init).parameters.values())[1:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        unannotated = Any if p.default is p.empty or p.default is None else type(p.default)
        hint = hints.get(p.name, unannotated)
        union = isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
        kinds = tuple(typing.get_origin(k) or k for k in (typing.get_args(hint) if union else (hint,)))
        out[p.name] = kinds if all(k in _CHECKED for k in kinds) else None
    return out


def head_class(class_name: str) -> type:
    """The head class saved under `class_name` (its __name__) in a pipeline's JSON."""
    targets = dict.fromkeys([*(s.target for s in REGISTRY.values()), *_WRAPPERS])
    for target in targets:
        if target.partition(":")[2] == class_name:
            return _import(target)
    raise PipelineFileError(f"unknown head class {class_name!r} in saved pipeline; known: "
                            f"{', '.join(t.partition(':')[2] for t in targets)} (a head of your own: import the "
                            "module that registers it first)")
