"""Feature extraction on ONNX Runtime or OpenVINO instead of PyTorch, only where the features stay faithful.

The backbone's network is exported to ONNX once (exported.py) and run on the CPU by the runtime, inside
vfe's own pipeline: the same preprocessing, batches, prefetch thread and thread choice as torch (the
runtime is compiled for the thread count the engine gives the network, once per count). Before a
runtime is used, its features of the check photos (scikit-image's, as for precision) must keep a
cosine >= FAITHFUL_COSINE to torch's fp32 eager features with the weights loaded; otherwise the
backbone stays on torch. The runtime used enters the features' fingerprint.

    runtime="onnxruntime" | "openvino"   that runtime, or one clear error if its package is missing;
                                         torch (with a warning) if its features are not faithful
    runtime="auto"                       registry.RUNTIME_CHOICES' measured choice for the architecture,
                                         size and the precision torch chose, when installed and
                                         faithful; else torch (silently: auto never fails where torch works)
"""
from __future__ import annotations

import functools
import importlib.util
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vfe.backbones.exported import INPUT_NAME, exported_model
from vfe.backbones.precision import FAITHFUL_COSINE, check_photos, min_cosine
from vfe.backbones.registry import RUNTIME_CHOICES
from vfe.errors import SettingsError

# what each runtime needs installed (onnxscript exports the network), and the extra that installs it
PACKAGES = {"onnxruntime": ("onnxruntime", "onnxscript"), "openvino": ("openvino", "onnxscript")}
EXTRAS = {"onnxruntime": "export", "openvino": "openvino"}
_OPENVINO_TYPES = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}

RunFn = Callable[[np.ndarray], np.ndarray]


class RuntimeUnavailableError(SettingsError):
    """An inference runtime was asked for that cannot run here (package missing, or not a CPU)."""


def missing_package(runtime: str) -> str | None:
    """The first package `runtime` needs that is not installed, or None."""
    return next((p for p in PACKAGES[runtime] if importlib.util.find_spec(p) is None), None)


def precisions(runtime: str) -> tuple[str, ...]:
    """The precisions `runtime` computes natively on this CPU (ONNX Runtime's CPU provider: fp32 only)."""
    if runtime == "onnxruntime":
        return ("fp32",)
    caps = _openvino_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return ("fp32", *(p for p in ("bf16", "fp16") if p.upper() in caps))


class RuntimeFeatures:
    """normalised input tensor -> pooled features tensor, run by a runtime compiled once per thread count.

    The thread count is torch's intra-op setting at the call, which the engine sets for the network
    (engine.compute_threads), so the thread choice measured for torch applies here unchanged.
    """

    def __init__(self, runtime: str, precision: str, compile_for: Callable[[int], RunFn]):
        self.runtime, self.precision, self.compile_for = runtime, precision, compile_for
        self.compiled: dict[int, RunFn] = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        threads = torch.get_num_threads()
        if threads not in self.compiled:
            self.compiled[threads] = self.compile_for(threads)
        return torch.from_numpy(self.compiled[threads](x.contiguous().numpy()))


def onnxruntime_features(path: Path, precision: str) -> RuntimeFeatures:
    import onnxruntime as ort

    def compile_for(threads: int) -> RunFn:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # its warnings about unused initialisers are not the user's business
        # idle threads sleep instead of spinning, as vfe sets OMP_WAIT_POLICY=PASSIVE for torch (hardware.py)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return lambda x: session.run(None, {INPUT_NAME: x})[0]

    return RuntimeFeatures("onnxruntime", precision, compile_for)


def openvino_features(path: Path, precision: str) -> RuntimeFeatures:
    core = _openvino_core()
    model = core.read_model(str(path))

    def compile_for(threads: int) -> RunFn:
        # the precision is always set: OpenVINO's CPU default is bf16 wherever the CPU has it
        compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": _OPENVINO_TYPES[precision],
                                                     "INFERENCE_NUM_THREADS": threads,
                                                     "PERFORMANCE_HINT": "LATENCY"})
        request = compiled.create_infer_request()
        return lambda x: request.infer({0: x}, share_inputs=True)[0]

    return RuntimeFeatures("openvino", precision, compile_for)


_BUILDERS = {"onnxruntime": onnxruntime_features, "openvino": openvino_features}


@functools.cache
def _openvino_core():
    import openvino as ov

    return ov.Core()


# ---------------------------------------------------------------------------------------------- choice

def choose_runtime(backbone: Any, model_dir: str | os.PathLike | None = None) -> None:
    """Switch a torch Backbone's extraction to the runtime its settings ask for, where faithful."""
    asked = backbone.settings.runtime
    if asked == "torch":
        return
    if asked == "auto":
        runtime = auto_choice(backbone)
        if runtime is not None:
            _try(backbone, runtime, [backbone.precision], model_dir, warn=False)
        return
    check_available(asked, backbone.device)
    _try(backbone, asked, _candidates(backbone, asked), model_dir, warn=True)


def check_available(runtime: str, device: torch.device) -> None:
    """Raise RuntimeUnavailableError, in one line naming the fix, if `runtime` cannot run here."""
    if device.type != "cpu":
        raise RuntimeUnavailableError(f"--runtime {runtime} runs on the CPU only; use --device cpu, or "
                                      f"--runtime torch on {device.type}")
    package = missing_package(runtime)
    if package is not None:
        raise RuntimeUnavailableError(f"--runtime {runtime} needs the Python package {package}, which is not "
                                      f"installed: pip install 'vfe[{EXTRAS[runtime]}]'")


def auto_choice(backbone: Any) -> str | None:
    """The runtime registry.RUNTIME_CHOICES measured fastest and faithful for this architecture and size in
    the precision torch extracts it in (already checked faithful by Backbone), when it can run that
    precision here; None means torch."""
    runtime = RUNTIME_CHOICES.get((backbone.arch, backbone.image_size, backbone.precision), "torch")
    if runtime == "torch" or backbone.device.type != "cpu" or missing_package(runtime) is not None:
        return None
    return runtime if backbone.precision in precisions(runtime) else None


def _candidates(backbone: Any, runtime: str) -> list[str]:
    """Precisions to try in order: the one asked for, or under 'auto' torch's faithful choice, then fp32."""
    supported = precisions(runtime)
    if backbone.settings.precision != "auto":
        if backbone.settings.precision not in supported:
            raise RuntimeUnavailableError(f"--runtime {runtime} cannot run precision {backbone.settings.precision} "
                                          f"on this CPU (it runs {', '.join(supported)})")
        return [backbone.settings.precision]
    first = backbone.precision if backbone.precision in supported else "fp32"
    return list(dict.fromkeys([first, "fp32"]))


def _try(backbone: Any, runtime: str, candidates: list[str], model_dir, warn: bool) -> None:
    """Use the first faithful (runtime, precision) of `candidates`; leave the backbone on torch otherwise."""
    tried = []
    try:
        path = exported_model(backbone, model_dir)
        with torch.inference_mode():
            x = torch.cat([backbone.normalise(photo) for photo in check_photos()])
            reference = backbone.pooled(x)
        for precision in candidates:
            features = _BUILDERS[runtime](path, precision)
            with torch.inference_mode():
                cosine = min_cosine(features(x), reference.cpu())
            check = {"runtime": runtime, "used": True, "precision": precision, "min_cosine": round(cosine, 6),
                     "threshold": FAITHFUL_COSINE, "photos": len(x), "model": str(path)}
            if cosine >= FAITHFUL_COSINE:
                backbone.use_runtime(features, check)
                return
            tried.append(f"{precision}: min cosine {cosine:.4f}")
        reason = f"features not faithful to torch fp32 on the check photos ({'; '.join(tried)})"
    except Exception as e:  # noqa: BLE001 - an export or compile failure means: stay on torch
        reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    backbone.runtime_check = {"runtime": runtime, "used": False, "reason": reason}
    if warn:
        warnings.warn(f"vfe: {backbone.name} extracts with torch, not {runtime} ({reason})", RuntimeWarning,
                      stacklevel=4)
