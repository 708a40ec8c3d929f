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
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vfe.backbones.exported import INPUT_NAME, exported_model, exported_part
from vfe.backbones.precision import FAITHFUL_COSINE, min_cosine
from vfe.backbones.registry import RUNTIME_CHOICES
from vfe.errors import SettingsError

# what each runtime needs installed (onnxscript exports the network), and the extra that installs it
PACKAGES = {"onnxruntime": ("onnxruntime", "onnxscript"), "openvino": ("openvino", "onnxscript")}
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
    """normalised input tensor -> pooled features tensor: the exported network at `path` run by `runtime`,
    compiled once per thread count and calling thread.

    The thread count is torch's intra-op setting at the call, which the engine sets for the network
    (engine.compute_threads), so the thread choice measured for torch applies here unchanged. Each calling
    thread gets its own compiled network: an OpenVINO network compiled once runs one inference at a time, so
    the corruption stage's two worker threads (each at one thread) shared one core with a shared network
    (measured: 103 % CPU for the whole stage). Pickled (a Ray task receives the reference protocol's parts)
    as its runtime, precision and file, and compiled again where it lands.
    """

    def __init__(self, runtime: str, precision: str, path: Path):
        self.runtime, self.precision, self.path = runtime, precision, path
        self._local = threading.local()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        threads = torch.get_num_threads()
        compiled = self._local.__dict__.setdefault("compiled", {})
        if threads not in compiled:
            compiled[threads] = _COMPILERS[self.runtime](self.path, self.precision, threads)
        return torch.from_numpy(compiled[threads](x.contiguous().numpy()))

    def __reduce__(self):
        return RuntimeFeatures, (self.runtime, self.precision, self.path)


def _onnxruntime_run(path: Path, precision: str, threads: int) -> RunFn:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # its warnings about unused initialisers are not the user's business
    # idle threads sleep instead of spinning, as vfe sets OMP_WAIT_POLICY=PASSIVE for torch (hardware.py)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {INPUT_NAME: x})[0]


def _openvino_run(path: Path, precision: str, threads: int) -> RunFn:
    core = _openvino_core()
    # the precision is always set: OpenVINO's CPU default is bf16 wherever the CPU has it. No pinning: pinned,
    # two networks compiled in one process ran on one core (measured on 2 cores), and on a shared machine the
    # OS places threads better than a fixed core.
    compiled = core.compile_model(core.read_model(str(path)), "CPU", {
        "INFERENCE_PRECISION_HINT": _OPENVINO_TYPES[precision], "INFERENCE_NUM_THREADS": threads,
        "PERFORMANCE_HINT": "LATENCY", "ENABLE_CPU_PINNING": False})
    request = compiled.create_infer_request()
    return lambda x: request.infer({0: x}, share_inputs=True)[0]


_COMPILERS = {"onnxruntime": _onnxruntime_run, "openvino": _openvino_run}


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


def part_on_runtime(backbone: Any, runtime: str, precision: str, net: torch.nn.Module, input_shape: tuple[int, ...],
                    part: str, judge: Callable[[Callable[[torch.Tensor], torch.Tensor]], float],
                    model_dir: str | os.PathLike | None = None) -> tuple[RuntimeFeatures | None, dict | None]:
    """`net`, the part of `backbone`'s network named `part`, on `runtime` in `precision` (those the base
    backbone extracts with), when `judge` (the runtime's function -> min cosine of the pooled features
    computed through it to torch fp32 on the check photos) keeps FAITHFUL_COSINE; else None and the reason,
    and the part stays on torch. The reference protocol's frozen bottom and fine-tuned top run this way."""
    if runtime == "torch":
        return None, None
    try:
        path = exported_part(backbone, net, input_shape, part, model_dir)
        features = RuntimeFeatures(runtime, precision, path)
        cosine = judge(features)
    except Exception as e:  # noqa: BLE001 - an export or compile failure means: stay on torch
        return None, {"runtime": runtime, "used": False,
                      "reason": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
    check = {"runtime": runtime, "precision": precision, "min_cosine": round(cosine, 6),
             "threshold": FAITHFUL_COSINE, "model": str(path)}
    if cosine >= FAITHFUL_COSINE:
        return features, {**check, "used": True}
    return None, {**check, "used": False, "reason": "features not faithful to torch fp32 on the check photos"}


def check_available(runtime: str, device: torch.device) -> None:
    """Raise RuntimeUnavailableError, in one line naming the fix, if `runtime` cannot run here."""
    if device.type != "cpu":
        raise RuntimeUnavailableError(f"--runtime {runtime} runs on the CPU only; use --device cpu, or "
                                      f"--runtime torch on {device.type}")
    package = missing_package(runtime)
    if package is not None:
        raise RuntimeUnavailableError(f"--runtime {runtime} needs the Python package {package}, which is not "
                                      f"installed: pip install {package}, or --runtime torch")


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
            x = backbone.check_batch()
            reference = backbone.pooled(x)
        for precision in candidates:
            features = RuntimeFeatures(runtime, precision, path)
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
