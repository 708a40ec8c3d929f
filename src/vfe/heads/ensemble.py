"""An ensemble over seeds: K copies of any feature head, fitted with different seeds, probabilities averaged.

The members differ only in their random state (initialisation, dropout masks, minibatch order; the
early-stopping split too, as it is drawn from the seed). Member k of an ensemble with random_state s
gets random_state s + 1000 * k, so member 0 is exactly the plain head with the same seed (a paired
comparison), and ensembles with seeds 0..999 share no member.
"""
from __future__ import annotations

import numbers
from typing import ClassVar

import numpy as np
import torch
from sklearn.utils._param_validation import StrOptions
from torch import nn

from vfe.heads.base import Head, at_least
from vfe.heads.registry import feature_heads, make_head, spec

SEED_STRIDE = 1000  # member k of an ensemble with random_state s has random_state s + SEED_STRIDE * k


class SeedEnsemble(Head):
    """`n_members` copies of the registered feature head `base`, each with its own seed; predict_proba is
    the mean of the members' probabilities (a deep ensemble, Lakshminarayanan et al. 2017, over seeds only).

    base_params: the base head's hyperparameters (e.g. {"epochs": 10}), the same for every member;
        `random_state` and `device` come from the ensemble's own parameters.
    Fit costs n_members fits of the base head.
    """

    _parameter_constraints: ClassVar[dict] = {"base": [StrOptions(set(feature_heads()))], "n_members": [at_least(1)],
                                              "random_state": [at_least(0)]}

    def __init__(self, base: str = "linear", n_members: int = 5, base_params: dict | None = None,
                 random_state: int = 0, device: str = "cpu"):
        self.base = base
        self.n_members = n_members
        self.base_params = base_params
        self.random_state = random_state
        self.device = device

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        try:  # an ensemble of sampling heads samples too
            tags.non_deterministic = self._member(0).__sklearn_tags__().non_deterministic
        except ValueError:  # an invalid `base` is reported by fit, not by the tags
            pass
        return tags

    def _member(self, k: int) -> Head:
        """Member k, unfitted (the base head's parameters are checked here, before any work)."""
        if spec(self.base).inputs != "features":
            raise ValueError(f"base: an ensemble's members take features; {self.base!r} takes {spec(self.base).inputs}")
        params = {**(self.base_params or {}), "random_state": self.random_state + SEED_STRIDE * k}
        member = make_head(self.base, **params)
        if "device" in member.get_params():
            member.set_params(device=self.device)
        return member

    def _fit(self, X: np.ndarray, y: np.ndarray) -> None:
        if isinstance(self.n_members, bool) or not isinstance(self.n_members, numbers.Integral) or self.n_members < 1:
            raise ValueError(f"n_members must be an integer >= 1, got {self.n_members!r}")
        members = [self._member(k) for k in range(self.n_members)]  # all checked before the first fit
        self.members_ = [member.fit(X, y) for member in members]
        self.history_ = {"members": [getattr(m, "history_", None) for m in self.members_]}
        self.module_ = MeanProbabilities(self.members_)

    def _predict_proba(self, X: np.ndarray) -> np.ndarray:
        return np.mean([member.predict_proba(X) for member in self.members_], axis=0)

    def _get_state(self) -> dict[str, torch.Tensor]:
        return {f"member{k}.{name}": tensor for k, member in enumerate(self.members_)
                for name, tensor in member.export_state()[0].items()}

    def _set_state(self, tensors: dict[str, torch.Tensor], n_features: int) -> None:
        histories = (getattr(self, "history_", None) or {}).get("members") or [None] * self.n_members
        self.members_ = []
        for k in range(self.n_members):
            member = self._member(k)
            own = {name.removeprefix(f"member{k}."): t for name, t in tensors.items()
                   if name.startswith(f"member{k}.")}
            meta = {"params": member.get_params(), "classes": list(range(len(self.classes_))),
                    "n_features_in": n_features, "history": histories[k]}
            self.members_.append(type(member).from_state(own, meta))
        self.module_ = MeanProbabilities(self.members_)

    def probability_module(self) -> nn.Module:
        """Features -> the mean of the members' probabilities, as a torch module (for end-to-end attacks)."""
        return self.module_


class MeanProbabilities(nn.Module):
    """The mean of the members' probability modules (each features -> class probabilities)."""

    def __init__(self, members: list[Head]):
        super().__init__()
        self.members = nn.ModuleList(member.probability_module() for member in members)

    def forward(self, features: torch.Tensor, n_samples: int | None = None) -> torch.Tensor:
        return torch.stack([member(features, n_samples) for member in self.members]).mean(0)
