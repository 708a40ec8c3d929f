"""Replicates: the unit of every interval and verdict of `vfe run` (Bouthillier et al. 2021, MLSys).

Replicate r of a run redraws every random factor that the run's numbers depend on, from its own seed:

    the training subset, the fine-tuning of the top (reference protocol: Dense initialisation, batch order),
    the heads' initialisation and batch order, the corrupted and AugMix views of the training images, the
    attacked test images and the attacks' random starts, and the OOD validation/test halves.

What stays fixed across replicates, drawn from the run's base seed (`--data-seed`): the test subset (its
sampling error is what the bootstrap over images covers) and, unless `--noise-per-replicate`, the corruption
noise of the test set. One noise draw lets every cached corrupted test set serve every replicate;
benchmarks/bench_noise_draw.py measured that it widens paired intervals by about 11 % if it were redrawn, but
shifts a single head's absolute corruption accuracy by an sd of about 0.08 points (docs/replicates.md).

Replicate r's seed is derived from (base seed, r) with NumPy's SeedSequence, so replicates of different base
seeds never share a seed, and replicate r is the same whatever the number of replicates.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# what results.json's "setting" says each replicate redraws, and what it keeps (kept in step with the docstring)
REDRAWN = ("training subset", "fine-tuning of the top (reference protocol)", "head initialisation and batch order",
           "corrupted and AugMix views of the training images", "attacked images and attack random starts",
           "OOD validation/test halves")
NOISE = ("corruption noise of the test images",)  # fixed unless --noise-per-replicate
FIXED = ("test subset", *NOISE, "out-of-distribution images")


@dataclass(frozen=True)
class Replicate:
    index: int  # 0, 1, ...: the key of its results in results.json ("0", "1", ...)
    seed: int  # seeds every random factor of the replicate

    @property
    def label(self) -> str:
        return f"replicate {self.index + 1}"


def replicate_seed(base: int, index: int) -> int:
    """Replicate `index`'s seed, a 31-bit integer derived from (base, index)."""
    if index < 0:
        raise ValueError(f"replicate index must be >= 0, got {index}")
    return int(np.random.SeedSequence([int(base), int(index)]).generate_state(1)[0] >> 1)


def noise_seed(replicate_seed: int, base: int, per_replicate: bool) -> int:
    """The seed of a replicate's corruption noise: the run's base seed (one draw for all replicates), or with
    `--noise-per-replicate` the replicate's own."""
    return replicate_seed if per_replicate else base


def replicates(base: int, n: int) -> list[Replicate]:
    """The first `n` replicates of a run with base seed `base`."""
    return [Replicate(i, replicate_seed(base, i)) for i in range(n)]
