"""`lmforge bench [RECIPE]`: how fast a config trains here, and how much of the device it uses.

It builds the recipe's model, optimizer and loader exactly as `lmforge train` does (in a
temporary run directory that is removed afterwards: nothing is saved), runs --warmup
training steps untimed (thread pools, allocator, compilation), then times --steps steps
and prints tokens/s, time per step, model FLOPs per token, MFU against the device's peak,
and peak memory. The peak is measured again by a matrix-multiply probe (unless
train.peak_tflops gives it), and the cached figure keeps the best seen, so a probe taken
while the machine was busy is corrected by the next one.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from lmforge.commands import ensure_dataset
from lmforge.config import load_config, recipe_path
from lmforge.errors import LmforgeError
from lmforge.train import mfu
from lmforge.train.metrics import log
from lmforge.train.trainer import Trainer


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(recipe: str | None, *, overrides: dict[str, str], steps: int,
          warmup: int) -> dict[str, Any]:
    if steps < 1:
        raise LmforgeError(f"--steps must be at least 1, got {steps}")
    if warmup < 0:
        raise LmforgeError(f"--warmup must be 0 or more, got {warmup}")
    cfg = load_config(recipe, {**overrides, "train.tensorboard": "false", "train.report": "false",
                               "train.progress": "false"})
    cfg.train.max_steps = max(cfg.train.max_steps, warmup + steps)  # the schedule's horizon
    ensure_dataset(cfg)
    log(f"benchmarking {recipe or 'default'}: {warmup} warm-up steps, then {steps} timed")
    with tempfile.TemporaryDirectory(prefix="lmforge-bench-") as tmp:
        trainer = Trainer(cfg, Path(tmp))
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
        tokens_per_step = trainer.train_data.global_batch * cfg.model.block_size
        params = trainer.raw_model.num_params()
        flops = trainer.flops_per_token
        dtype = trainer.compute_dtype
    peak, source = mfu.peak_flops(device, dtype, configured_tflops=cfg.train.peak_tflops,
                                  remeasure=True)
    tokens_per_s = tokens_per_step * len(times) / sum(times)
    memory = (torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda"
              else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"recipe": recipe_path(recipe or "default").stem, "arch": cfg.model.arch,
            "params": params, "device": mfu.device_name(device), "threads": torch.get_num_threads(),
            "precision": str(dtype).removeprefix("torch."), "tokens_per_step": tokens_per_step,
            "steps": steps, "warmup": warmup,
            "step_ms_median": statistics.median(times) * 1e3,
            "step_ms_min": min(times) * 1e3, "tokens_per_s": tokens_per_s,
            "flops_per_token": flops, "peak_tflops": peak / 1e12, "peak_source": source,
            "mfu": mfu.mfu(tokens_per_s, flops_per_token=flops, peak=peak),
            "memory_mb": memory,
            "memory_kind": "peak CUDA allocated" if device.type == "cuda" else "peak RSS"}


def describe(r: dict[str, Any]) -> str:
    return "\n".join([
        f"{r['recipe']}: {r['arch']}, {r['params']:,} parameters, {r['tokens_per_step']:,} tokens "
        f"per step, {r['precision']} on {r['device']}"
        + (f" ({r['threads']} threads)" if "cuda" not in r["memory_kind"] else ""),
        f"  step time    {r['step_ms_median']:.1f} ms median, {r['step_ms_min']:.1f} ms best "
        f"({r['steps']} steps after {r['warmup']} of warm-up)",
        f"  throughput   {r['tokens_per_s']:,.0f} tokens/s",
        f"  MFU          {r['mfu']:.1%}  ({r['flops_per_token'] / 1e6:,.2f} MFLOPs per token; "
        f"peak {r['peak_tflops']:,.3g} TFLOP/s, {r['peak_source']})",
        f"  memory       {r['memory_mb']:,.0f} MiB {r['memory_kind']}",
    ])


def bench_command(args: argparse.Namespace, *, overrides: dict[str, str]) -> int:
    result = bench(args.recipe, overrides=overrides, steps=args.steps, warmup=args.warmup)
    print(json.dumps(result, indent=2) if args.json else describe(result))
    sys.stdout.flush()
    return 0
