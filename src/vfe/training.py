"""The one training loop every model in vfe uses: heads, the feature VAE, the image autoencoders.

Data is held as whole tensors and batched by index (no DataLoader: the feature matrices fit in
memory and per-batch Python overhead dominates small models). The loop keeps a per-epoch
history, stops early on a validation metric, restores the best weights, and can keep best-only
checkpoints on disk so an interrupted run resumes.
"""
from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from vfe.checkpoint import Checkpointer
from vfe.hardware import cpu_has_native_bf16, fit_threads

# loss_fn(module, batch) -> (scalar loss to minimise, {metric name: float})
LossFn = Callable[[nn.Module, Sequence[torch.Tensor]], tuple[torch.Tensor, dict[str, float]]]


@dataclass
class TrainConfig:
    """Optimisation settings. `patience=None` trains for exactly `epochs` (the reference's way)."""

    epochs: int = 50
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    patience: int | None = 10
    min_delta: float = 0.0
    monitor: str = "val_loss"  # a key of the epoch record; lower is better
    schedule: str | None = None  # None | "cosine" | "plateau"
    # "bf16": training steps run under bf16 autocast (weights, optimiser and evaluation stay fp32),
    # 1.45x faster for the feature VAE on this CPU (benchmarks/bench_vfe_training.py); "auto": bf16
    # where the device computes it natively (AVX-512 BF16 / AMX CPUs, bf16-capable GPUs), else fp32
    precision: str = "fp32"
    seed: int = 0
    device: str = "cpu"
    # intra-op threads while training; None: one per usable core, torch's count at most, whatever the load
    # (vfe.hardware.fit_threads; torch's count as it is when OMP_NUM_THREADS is set). The weights depend on
    # this number (float sums split across threads), so it must not follow the load: docs/reproducibility.md
    threads: int | None = None
    progress: bool = False
    desc: str = "train"


@dataclass
class History:
    """Per-epoch records (`{"epoch": 1, "loss": .., "val_loss": .., ...}`) and the best epoch."""

    records: list[dict] = field(default_factory=list)
    best_epoch: int | None = None
    stopped_early: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> History:
        return cls(**d)

    def series(self, key: str) -> list[float]:
        return [r[key] for r in self.records if key in r]


def _run_epoch(module: nn.Module, loss_fn: LossFn, tensors: Sequence[torch.Tensor], batch_size: int,
               optimizer: torch.optim.Optimizer | None, generator: torch.Generator,
               precision: str = "fp32") -> dict[str, float]:
    """One pass; trains when an optimizer is given, else evaluates (always in fp32). Returns
    sample-weighted means."""
    n = len(tensors[0])
    autocast = torch.autocast(tensors[0].device.type, dtype=torch.bfloat16,
                              enabled=precision == "bf16" and optimizer is not None)
    order = torch.randperm(n, generator=generator) if optimizer is not None else torch.arange(n)
    totals: dict[str, float] = {}
    module.train(optimizer is not None)
    with torch.set_grad_enabled(optimizer is not None):
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            if optimizer is not None and len(idx) == 1 and n > 1:
                continue  # BatchNorm cannot train on a batch of one
            batch = [t[idx] for t in tensors]
            with autocast:
                loss, metrics = loss_fn(module, batch)
            if optimizer is not None:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            metrics = {"loss": float(loss.detach()), **metrics}
            for k, v in metrics.items():
                totals[k] = totals.get(k, 0.0) + v * len(idx)
    return {k: v / n for k, v in totals.items()}


def train(module: nn.Module, loss_fn: LossFn, train_tensors: Sequence[torch.Tensor],
          val_tensors: Sequence[torch.Tensor] | None, config: TrainConfig,
          checkpointer: Checkpointer | None = None, parameters=None) -> History:
    """Fit `module` by minimising `loss_fn`; early-stop on `config.monitor`, restore the best weights.

    `parameters` restricts what is optimised (a frozen encoder stays frozen). With a
    `checkpointer`, the best weights are saved as they improve and a previous run in the same
    directory is resumed from its last checkpoint.
    """
    device = torch.device(config.device)
    module.to(device)
    train_tensors = [t.to(device) for t in train_tensors]
    val_tensors = [t.to(device) for t in val_tensors] if val_tensors is not None else None
    params = [p for p in (parameters if parameters is not None else module.parameters()) if p.requires_grad]
    precision = training_precision(config.precision, device)
    # the fused kernel does Adam's update in one pass over the weights: 1.6-3.2x faster than the default
    # multi-tensor one on this CPU, whose update was 21-29 % of the feature VAE's step at batch 128
    optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay,
                                 fused=device.type in ("cpu", "cuda") or None)
    scheduler = _make_scheduler(optimizer, config)
    generator = torch.Generator()
    history = History()
    best_value, best_state, bad_epochs, start_epoch = math.inf, None, 0, 0

    if checkpointer is not None:
        resumed = checkpointer.resume(module, optimizer)
        if resumed is not None:
            history = History.from_dict(resumed["history"])
            start_epoch = len(history.records)
            best_value = resumed.get("best_value", math.inf)
            bad_epochs = resumed.get("bad_epochs", 0)
            best_state = checkpointer.load_best_state()
            if scheduler is not None and "scheduler" in resumed:
                scheduler.load_state_dict(resumed["scheduler"])

    started = time.perf_counter()
    monitor = config.monitor if val_tensors is not None else config.monitor.removeprefix("val_")
    bar = tqdm(range(start_epoch, config.epochs), desc=config.desc, disable=not config.progress,
               leave=False, unit="epoch")
    with fit_threads(config.threads), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for epoch in bar:
            # every epoch's randomness (batch order, dropout, sampled codes, added noise) comes from a seed
            # of its own, so a run resumed from a checkpoint repeats exactly what the uninterrupted run did
            epoch_seed = config.seed * 1_000_003 + epoch
            generator.manual_seed(epoch_seed)
            torch.manual_seed(epoch_seed)
            record = {"epoch": epoch + 1, **_run_epoch(module, loss_fn, train_tensors, config.batch_size,
                                                       optimizer, generator, precision)}
            if val_tensors is not None:
                val = _run_epoch(module, loss_fn, val_tensors, max(config.batch_size, 1024), None, generator)
                record.update({f"val_{k}": v for k, v in val.items()})
            record["lr"] = optimizer.param_groups[0]["lr"]
            record["seconds"] = round(time.perf_counter() - started, 4)  # wall time since this call started
            history.records.append(record)
            value = record[monitor]
            if not np.isfinite(value):
                raise FloatingPointError(f"{config.desc}: {monitor} became {value} at epoch {epoch + 1}; "
                                         "lower the learning rate")
            improved = value < best_value - config.min_delta
            if improved:
                best_value, bad_epochs, history.best_epoch = value, 0, epoch + 1
                best_state = copy.deepcopy(module.state_dict())
            else:
                bad_epochs += 1
            if scheduler is not None:
                scheduler.step(value) if config.schedule == "plateau" else scheduler.step()
            bar.set_postfix({k: f"{v:.4g}" for k, v in record.items() if k in ("loss", monitor)})
            if checkpointer is not None:
                checkpointer.save(module, optimizer, epoch + 1, improved, {
                    "history": history.to_dict(), "best_value": best_value, "bad_epochs": bad_epochs,
                    **({"scheduler": scheduler.state_dict()} if scheduler is not None else {})})
            if config.patience is not None and bad_epochs >= config.patience:
                history.stopped_early = True
                break
    if best_state is not None:
        module.load_state_dict(best_state)
    module.eval()
    return history


def training_precision(precision: str, device: torch.device) -> str:
    """'fp32' or 'bf16': `precision` itself, or for 'auto' bf16 where the device runs it natively (emulated
    bf16 on an older CPU is slower than fp32)."""
    if precision in ("fp32", "bf16"):
        return precision
    if precision != "auto":
        raise ValueError(f"unknown precision {precision!r}; use 'fp32', 'bf16' or 'auto'")
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"


def _make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig):
    if config.schedule is None:
        return None
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(config.epochs, 1))
    if config.schedule == "plateau":
        patience = max(1, (config.patience or 10) // 3)
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.3, patience=patience)
    raise ValueError(f"unknown schedule {config.schedule!r}; use None, 'cosine' or 'plateau'")
