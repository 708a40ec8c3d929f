"""Heads: estimators fitted on backbone features. Addressable by name from the CLI."""
from __future__ import annotations

from vfe.heads.base import Head
from vfe.heads.linear import LinearHead
from vfe.heads.vfe import VFEHead

HEADS: dict[str, type[Head]] = {"linear": LinearHead, "vfe": VFEHead}


def make_head(name: str, **params) -> Head:
    """A head by its registry name, e.g. make_head("vfe", latent_dim=64)."""
    try:
        cls = HEADS[name]
    except KeyError:
        raise ValueError(f"unknown head {name!r}; available: {', '.join(sorted(HEADS))}") from None
    return cls(**params)


def head_class(class_name: str) -> type[Head]:
    """The head class saved under `class_name` in a pipeline's JSON."""
    for cls in HEADS.values():
        if cls.__name__ == class_name:
            return cls
    raise ValueError(f"unknown head class {class_name!r} in saved pipeline")


__all__ = ["HEADS", "Head", "LinearHead", "VFEHead", "head_class", "make_head"]
