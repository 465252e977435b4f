"""`lmforge bench [RECIPE]`: how fast a config trains here, and how much of the device it uses.

It builds the recipe's model, optimizer and loader exactly as `lmforge train` does (in a
temporary run directory that is removed afterwards: nothing is saved), runs --warmup
training steps untimed (thread pools, allocator, compilation), then times --steps steps
and prints tokens/s, time per step, model FLOPs per token, MFU against the device's peak,
the trained parameters and their optimizer state (a LoRA config trains its adapters alone),
and peak memory. The peak is measured again by a matrix-multiply probe (unless
train.peak_tflops gives it or the device is a GPU with a datasheet figure), before the
steps, while this process has done little: the median of 5 matmuls, cached where the
machine was quiet (train/mfu.py), so `lmforge bench` is how a peak probed low is probed
again. An MFU above 100% is no figure but a wrong peak: it is printed as "n/a" with the
reason (null in --json, with `mfu_note`).
"""

from __future__ import annotations

import math
import resource
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from lmforge.config import load_config
from lmforge.console import log
from lmforge.data.prepare import ensure_dataset
from lmforge.distributed.device import precision_name
from lmforge.distributed.parallelize import optimizer_state_bytes
from lmforge.errors import LmforgeError
from lmforge.plan import local_plan
from lmforge.recipes import recipe_path
from lmforge.train import mfu
from lmforge.train.trainer import Trainer


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class BenchResult:
    recipe: str
    arch: str
    params: int
    device: str
    threads: int
    precision: str
    tokens_per_step: int
    steps: int
    warmup: int
    step_ms_median: float
    step_ms_min: float
    tokens_per_s: float
    flops_per_token: int
    peak_tflops: float
    peak_source: str
    mfu: float | None  # None where there is no figure: see mfu_note
    memory_mb: float
    memory_kind: str
    trainable_params: int = 0  # what the optimizer updates: all, or a LoRA run's adapters
    optimizer_bytes: int = 0  # its state (AdamW's moments) after the timed steps
    mfu_note: str = ""  # why mfu is None: the run beat the peak, so the peak is wrong


def bench(recipe: str | None, *, overrides: dict[str, str], steps: int,
          warmup: int) -> BenchResult:
    if steps < 1:
        raise LmforgeError(f"--steps must be at least 1, got {steps}")
    if warmup < 0:
        raise LmforgeError(f"--warmup must be 0 or more, got {warmup}")
    # the steady state: a batch or sequence-length warm-up would time shorter steps
    cfg = load_config(recipe, {**overrides, "train.batch_warmup_steps": "0",
                               "train.seq_warmup_steps": "0", "log.to": "none",
                               "train.report": "false", "train.progress": "false"})
    cfg.train.max_steps = max(cfg.train.max_steps, warmup + steps)  # the schedule's horizon
    ensure_dataset(cfg, log=log)
    log(f"benchmarking {recipe or 'default'}: {warmup} warm-up steps, then {steps} timed")
    with tempfile.TemporaryDirectory(prefix="lmforge-bench-") as tmp:
        trainer = Trainer(local_plan(cfg, Path(tmp)))
        device, dtype = trainer.device, trainer.compute_dtype
        # Probed before the steps: after them the load average would count this process's
        # own training threads as other work, and a GPU's peak memory would count the probe.
        peak, source = mfu.peak_flops(device, dtype, configured_tflops=cfg.train.peak_tflops,
                                      remeasure=True)
        times = _timed_steps(trainer, steps=steps, warmup=warmup)
    tokens_per_step = trainer.objective.tokens_per_step
    tokens_per_s = tokens_per_step * len(times) / sum(times)
    flops = trainer.flops_per_token
    share, note = mfu.utilization(tokens_per_s, flops_per_token=flops, peak=peak, source=source)
    cuda = device.type == "cuda"
    memory = (torch.cuda.max_memory_allocated(device) / 2**20 if cuda
              else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return BenchResult(
        recipe=recipe_path(recipe or "default").stem, arch=cfg.model.arch,
        params=trainer.raw_model.num_params(), device=mfu.device_name(device),
        threads=torch.get_num_threads(), precision=precision_name(dtype),
        tokens_per_step=tokens_per_step, steps=steps, warmup=warmup,
        step_ms_median=statistics.median(times) * 1e3, step_ms_min=min(times) * 1e3,
        tokens_per_s=tokens_per_s, flops_per_token=flops, peak_tflops=peak / 1e12,
        peak_source=source, mfu=share if math.isfinite(share) else None, mfu_note=note,
        memory_mb=memory, memory_kind="peak CUDA allocated" if cuda else "peak RSS",
        trainable_params=sum(p.numel() for p in trainer.raw_model.parameters() if p.requires_grad),
        optimizer_bytes=optimizer_state_bytes(trainer.optimizer))


def _timed_steps(trainer: Trainer, *, steps: int, warmup: int) -> list[float]:
    """Seconds of each of `steps` training steps, after `warmup` untimed ones."""
    device = trainer.device
    trainer.model.train()
    for _ in range(warmup):
        trainer.train_step()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        trainer.train_step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def describe(r: BenchResult) -> str:
    return "\n".join([
        f"{r.recipe}: {r.arch}, {r.params:,} parameters, {r.tokens_per_step:,} tokens "
        f"per step, {r.precision} on {r.device}"
        + (f" ({r.threads} threads)" if "cuda" not in r.memory_kind else ""),
        f"  step time    {r.step_ms_median:.1f} ms median, {r.step_ms_min:.1f} ms best "
        f"({r.steps} steps after {r.warmup} of warm-up)",
        f"  throughput   {r.tokens_per_s:,.0f} tokens/s",
        f"  MFU          {_utilization(r)}  ({r.flops_per_token / 1e6:,.2f} MFLOPs per "
        f"token; peak {r.peak_tflops:,.3g} TFLOP/s, {r.peak_source})",
        f"  trained      {r.trainable_params:,} parameters, optimizer state "
        f"{r.optimizer_bytes / 2**20:,.1f} MiB",
        f"  memory       {r.memory_mb:,.0f} MiB {r.memory_kind}",
    ])


def _utilization(r: BenchResult) -> str:
    if r.mfu is not None:
        return f"{r.mfu:.1%}"
    return r.mfu_note.removeprefix("mfu ") or "n/a"
