"""Heads: estimators fitted on backbone features (or, for `finetune`, on images). Addressable by name.

`HEADS` maps a name to a head class; `PRESETS` names a class with settings that define a variant
(e.g. `vfe-mean`). Presets marked `augmented` are meant to be fitted with `fit(X, y, X_aug=...)`
on features of corrupted training images (see vfe.stages.augment).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from vfe.heads.autoencoder import AutoencoderHead
from vfe.heads.base import Head
from vfe.heads.finetune import FinetuneHead
from vfe.heads.linear import LinearHead
from vfe.heads.pca import PCAHead
from vfe.heads.priors import PriorCorrected, adjust_priors
from vfe.heads.svm import SVMHead
from vfe.heads.vfe import VFEHead
from vfe.heads.vib import VIBHead

HEADS: dict[str, type[Head]] = {"linear": LinearHead, "vfe": VFEHead, "pca": PCAHead, "ae": AutoencoderHead,
                                "vib": VIBHead, "svm": SVMHead, "finetune": FinetuneHead}


@dataclass(frozen=True)
class Preset:
    """A registered head class with settings; user parameters override them."""

    head: str
    params: dict = field(default_factory=dict)
    augmented: bool = False  # trained on clean + corrupted-image features (X_aug)
    about: str = ""


PRESETS: dict[str, Preset] = {
    "dae": Preset("ae", {"noise_std": 0.3}, about="denoising autoencoder: Gaussian noise on the features"),
    "dae-aug": Preset("ae", augmented=True,
                      about="denoising autoencoder: features of corrupted images -> their clean features"),
    "vfe-mean": Preset("vfe", {"classifier_input": "mean", "predict_mode": "mean"},
                       about="VFE, classifier trained and run on z_mean (deterministic)"),
    "vfe-k8": Preset("vfe", {"predict_mode": "average", "n_samples": 8},
                     about="VFE, probabilities averaged over 8 sampled z"),
    "vfe-aug": Preset("vfe", augmented=True, about="VFE trained on clean + corrupted-image features"),
}


def head_names() -> list[str]:
    """Every name make_head accepts."""
    return sorted([*HEADS, *PRESETS])


def registered_class(name: str) -> type[Head]:
    """The class behind a registry or preset name."""
    cls = HEADS.get(PRESETS[name].head if name in PRESETS else name)
    if cls is None:
        raise ValueError(f"unknown head {name!r}; available: {', '.join(head_names())}")
    return cls


def make_head(name: str, **params) -> Head:
    """A head by its registry or preset name, e.g. make_head("vfe", latent_dim=64), make_head("vfe-k8")."""
    cls = registered_class(name)
    return cls(**{**PRESETS[name].params, **params}) if name in PRESETS else cls(**params)


def is_augmented(name: str) -> bool:
    """Whether the head `name` is meant to be fitted with features of corrupted training images."""
    registered_class(name)
    return name in PRESETS and PRESETS[name].augmented


def head_class(class_name: str) -> type:
    """The head class saved under `class_name` in a pipeline's JSON."""
    for cls in (*HEADS.values(), PriorCorrected):
        if cls.__name__ == class_name:
            return cls
    raise ValueError(f"unknown head class {class_name!r} in saved pipeline")


__all__ = ["HEADS", "PRESETS", "AutoencoderHead", "FinetuneHead", "Head", "LinearHead", "PCAHead", "Preset",
           "PriorCorrected", "SVMHead", "VFEHead", "VIBHead", "adjust_priors", "head_class", "head_names",
           "is_augmented", "make_head", "registered_class"]
