"""vfe: robust transfer learning with variational feature encoders."""
from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping

__version__ = "0.1.0"

# OpenMP threads that wait at a barrier sleep at once instead of spinning. torch's OpenMP runtime (GNU
# libgomp in the pip wheels; LLVM / Intel libomp elsewhere, where PASSIVE means KMP_BLOCKTIME=0) reads
# these variables once, when torch is imported, so they are set here, before any vfe module imports torch.
# By default libgomp spins 300,000 times first, and a spinning thread holds the core that its partner
# thread, or another process, needs: two-thread training beside busy processes collapsed 5-10x (vfe.hardware,
# benchmarks/bench_busy.py). Set only where the user set none of OPENMP_USER_ENV (to keep libgomp's own
# default, set GOMP_SPINCOUNT=300000), and only when torch was not yet imported (too late to take effect;
# the variable would reach child processes only). Child processes inherit what is set here.
OPENMP_ENV_DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE"}
OPENMP_USER_ENV = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "KMP_LIBRARY")


def set_openmp_defaults(environ: MutableMapping[str, str] = os.environ, torch_loaded: bool | None = None) -> dict:
    """Put OPENMP_ENV_DEFAULTS into `environ` unless the user set any of OPENMP_USER_ENV or torch is already
    loaded; returns what was set ({} when nothing was)."""
    if torch_loaded is None:
        torch_loaded = "torch" in sys.modules
    if torch_loaded or any(name in environ for name in OPENMP_USER_ENV):
        return {}
    environ.update(OPENMP_ENV_DEFAULTS)
    return dict(OPENMP_ENV_DEFAULTS)


OPENMP_ENV_SET = set_openmp_defaults()  # what `import vfe` set in this process
