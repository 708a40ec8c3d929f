"""The common corruptions of ImageNet-C and CIFAR-10-C (Hendrycks & Dietterich, ICLR 2019), batched.

`corrupt(images, name, severity, seed, params)` applies one of the 15 benchmark corruptions or
the 4 extra ones at severity 1..5 with the published parameters of either data set (see
`parameters.py`), to uint8 images before any backbone preprocessing. `corruption_grid` draws one
image under all of them.

Sizes: the published code is written for one size (32 or 224 px). Here every corruption takes any
size: loops run over the image's own rows and columns, the fog fractal is the next power of two
of the long side, a motion trail stops at the image edge (as in `imagecorruptions`), and the
two size-tied parameters (elastic displacement, frost texture scale) scale with the long side,
so 28-px Fashion-MNIST gets CIFAR-10-C's corruptions at 28/32 of their pixel extent.
"""
from vfe.robustness.corruptions.apply import corrupt
from vfe.robustness.corruptions.grid import corruption_grid
from vfe.robustness.corruptions.parameters import PARAMETER_SETS, SEVERITIES
from vfe.robustness.corruptions.registry import BENCHMARK_CORRUPTIONS, EXTRA_CORRUPTIONS, REGISTRY

# part of every cached corrupted-feature key: bump it whenever any corruption's output changes
CORRUPTIONS_VERSION = "1"

__all__ = ["BENCHMARK_CORRUPTIONS", "CORRUPTIONS_VERSION", "EXTRA_CORRUPTIONS", "PARAMETER_SETS", "REGISTRY",
           "SEVERITIES", "corrupt", "corruption_grid"]
