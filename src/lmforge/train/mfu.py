"""Model FLOPs utilization: the share of a device's peak arithmetic a run turns into training.

MFU = tokens/s x training FLOPs per token (model.flops_per_token(): 6 N plus attention)
      / (peak FLOP/s of one device x devices).

The peak of one device comes from, in order:
1. train.peak_tflops, when the user gives it;
2. the datasheet's dense figure for GPUs we know (as nanoGPT, nanochat and torchtitan
   report MFU), in the run's compute precision;
3. a matrix-multiply probe in the run's precision and thread count, measured once and
   cached in $LMFORGE_CACHE/peak_flops.json (CPUs, and GPUs not in the table). On a CPU
   this is what the cores reach on a large matmul, not a vendor number nobody attains, so
   a CPU's MFU says how far the run is from the best its matmuls can do.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from pathlib import Path

import torch

from lmforge.files import default_cache_dir

CACHE_FILE = "peak_flops.json"
# Dense (no sparsity) peak FLOP/s per GPU from the vendors' datasheets: bf16, and for fp32
# the TF32 tensor-core figure (what fp32 matmuls reach with TF32 allowed).
GPU_PEAKS = {  # substring of torch.cuda.get_device_name() → (bf16, fp32/tf32)
    "H200": (989e12, 494e12),
    "H100": (989e12, 494e12),
    "A100": (312e12, 156e12),
    "L40S": (362e12, 183e12),
    "A10G": (70e12, 35e12),
    "4090": (165e12, 83e12),
}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return platform.processor() or platform.machine()
    return device.type


def datasheet_peak(device: torch.device, dtype: torch.dtype) -> float | None:
    if device.type != "cuda":
        return None
    name = device_name(device)
    for key, (bf16, fp32) in GPU_PEAKS.items():
        if key in name:
            return bf16 if dtype == torch.bfloat16 else fp32
    return None


def probe_matmul(device: torch.device, dtype: torch.dtype, *, size: int = 0,
                 seconds: float = 0.5) -> float:
    """FLOP/s of the best timed square matmul over about `seconds`."""
    n = size or (8192 if device.type == "cuda" else 2048)
    # a generator of its own: a run must draw the same random numbers whether the peak was
    # probed now or read from the cache
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=gen)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    a @ b  # warm-up: allocation, kernel choice, thread pool start
    sync()
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        a @ b
        sync()
        best = max(best, 2 * n**3 / (time.perf_counter() - t0))
    return best


def _cache_key(device: torch.device, dtype: torch.dtype) -> str:
    threads = torch.get_num_threads() if device.type == "cpu" else 0
    return (f"{device_name(device)}|{str(dtype).removeprefix('torch.')}|threads={threads}|"
            f"torch={torch.__version__}")


def _cache_path(cache_dir: Path | None) -> Path:
    return Path(cache_dir or default_cache_dir()) / CACHE_FILE


def _load(path: Path) -> dict[str, float]:
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}


def _store(path: Path, cache: dict[str, float]) -> None:
    try:  # a read-only home costs a probe per run, nothing more
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{CACHE_FILE}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache, indent=1, sort_keys=True))
        tmp.replace(path)
    except OSError:
        pass


def cached_probe(device: torch.device, dtype: torch.dtype, *, remeasure: bool = False,
                 cache_dir: Path | None = None) -> float:
    """probe_matmul, measured once per device, precision, thread count and torch version and
    cached; remeasure=True probes again and caches the best figure seen, so a probe taken
    while the machine was busy does not stay the peak for ever."""
    path, key = _cache_path(cache_dir), _cache_key(device, dtype)
    cache = _load(path)
    known = cache.get(key)
    known = float(known) if isinstance(known, (int, float)) and known > 0 else 0.0
    if known and not remeasure:
        return known
    cache[key] = max(known, probe_matmul(device, dtype))
    _store(path, cache)
    return cache[key]


def raise_cached_peak(device: torch.device, dtype: torch.dtype, flops: float, *,
                      cache_dir: Path | None = None) -> None:
    """A run that reached `flops` per device proves the peak is at least that: a cached probe
    below it was taken while the machine was busy."""
    path, key = _cache_path(cache_dir), _cache_key(device, dtype)
    cache = _load(path)
    known = cache.get(key)
    if not isinstance(known, (int, float)) or known < flops:
        cache[key] = flops
        _store(path, cache)


def peak_flops(device: torch.device, dtype: torch.dtype, *, configured_tflops: float = 0.0,
               remeasure: bool = False, cache_dir: Path | None = None) -> tuple[float, str]:
    """(peak FLOP/s of one device, where the figure comes from)."""
    if configured_tflops > 0:
        return configured_tflops * 1e12, "train.peak_tflops"
    sheet = datasheet_peak(device, dtype)
    if sheet is not None:
        return sheet, f"datasheet, {device_name(device)}"
    flops = cached_probe(device, dtype, remeasure=remeasure, cache_dir=cache_dir)
    return flops, "matmul probe, best seen"


def mfu(tokens_per_s: float, *, flops_per_token: float, peak: float, devices: int = 1) -> float:
    return tokens_per_s * flops_per_token / (peak * devices) if peak > 0 else float("nan")


class Utilization:
    """A run's MFU: the device's peak, found once at the start (rank 0 reports it; the other
    ranks compute nothing), and the share of it a throughput is."""

    def __init__(self, *, device: torch.device, dtype: torch.dtype, flops_per_token: int,
                 devices: int, configured_tflops: float, report: bool) -> None:
        self.device, self.dtype, self.devices = device, dtype, devices
        self.flops_per_token, self.configured_tflops = flops_per_token, configured_tflops
        self.report = report
        self.peak, self.source = math.nan, ""

    def find_peak(self) -> str:
        """Measure or look up the peak; the line that says what it is and where it comes from."""
        if not self.report:
            return ""
        self.peak, self.source = peak_flops(self.device, self.dtype,
                                            configured_tflops=self.configured_tflops)
        return (f"{self.flops_per_token / 1e6:,.1f} MFLOPs per token; device peak "
                f"{self.peak / 1e12:,.3g} TFLOP/s ({self.source})")

    def of(self, tokens_per_s: float) -> float:
        return mfu(tokens_per_s, flops_per_token=self.flops_per_token, peak=self.peak,
                   devices=self.devices)

    def check(self, tokens_per_s: float) -> str:
        """A run faster than the probed peak shows the probe was taken on a busy machine:
        raise the cached figure to what this run reached; the line that says so, or ""."""
        achieved = tokens_per_s * self.flops_per_token / self.devices
        if not (self.report and self.source.startswith("matmul probe") and achieved > self.peak):
            return ""
        raise_cached_peak(self.device, self.dtype, achieved)
        return (f"this run reached {achieved / 1e12:.3g} TFLOP/s per device, above the probed "
                f"peak ({self.peak / 1e12:.3g}; measured while the machine was busy?), so MFU "
                "above read high; the cached peak is raised, and `lmforge bench` measures it again")
