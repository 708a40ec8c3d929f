"""Heads: estimators fitted on backbone features (or, for `finetune`, on images), addressable by name.

Which heads exist, and what each is, is said once, in `vfe.heads.registry`; this package re-exports
its functions, among them `register_head`, the decorator that adds a head of your own. The head classes load on first access (PEP 562), so listing heads does not load torch.
"""
from __future__ import annotations

import importlib

from vfe.heads.registry import (
    REGISTRY,
    HeadSpec,
    benchmark_heads,
    check_params,
    expand_heads,
    feature_heads,
    head_class,
    head_class_of,
    head_names,
    is_augmented,
    make_head,
    params_for,
    register_head,
    resolve_head,
    spec,
)

_LAZY = {"Head": "base", "AutoencoderHead": "autoencoder", "FinetuneHead": "finetune", "LinearHead": "linear",
         "PCAHead": "pca", "PriorCorrected": "priors", "adjust_priors": "priors", "SVMHead": "svm",
         "VFEHead": "vfe", "VIBHead": "vib", "T3AHead": "t3a", "RestandardisedHead": "restandardise",
         "SeedEnsemble": "ensemble"}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = ["REGISTRY", "AutoencoderHead", "FinetuneHead", "Head", "HeadSpec", "LinearHead", "PCAHead",
           "PriorCorrected", "RestandardisedHead", "SVMHead", "SeedEnsemble", "T3AHead", "VFEHead", "VIBHead",
           "adjust_priors", "benchmark_heads", "check_params", "expand_heads", "feature_heads", "head_class",
           "head_class_of", "head_names", "is_augmented", "make_head", "params_for", "register_head", "resolve_head",
           "spec"]
