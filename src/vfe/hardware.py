"""Facts about the machine that decide how vfe computes (shared by training and extraction)."""
from __future__ import annotations

import torch


def cpu_has_native_bf16() -> bool:
    """oneDNN runs bf16 convolutions natively (AVX512-BF16 or AMX); without it bf16 is emulated and slow."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
