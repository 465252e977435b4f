"""Model FLOPs utilization: the share of a device's peak arithmetic a run turns into training.

MFU = tokens/s x training FLOPs per token (model.flops_per_token(): 6 N plus attention)
      / (peak FLOP/s of one device x devices).

The peak of one device comes from, in order:
1. train.peak_tflops, when the user gives it;
2. the datasheet's dense figure for GPUs we know (as nanoGPT, nanochat and torchtitan
   report MFU), in the run's compute precision;
3. a matrix-multiply probe in the run's precision and thread count: the median of 5 timed
   square matmuls after a warm-up, cached in $LMFORGE_CACHE/peak_flops.json (CPUs, and GPUs
   not in the table). On a CPU this is what the cores reach on a large matmul, not a vendor
   number nobody attains, so a CPU's MFU says how far the run is from the best its matmuls
   can do. A CPU probe taken on a busy machine (1-minute load average above the cores this
   process may use) serves its own run and is never cached; the cache keeps the best quiet
   probe. `lmforge bench` probes again each time, as any run does with LMFORGE_REPROBE=1;
   deleting peak_flops.json forgets every figure.

An MFU above 100% is no measurement but a wrong peak (a probe that read low, a
train.peak_tflops below the device's): it is never shown as a figure. The log says "mfu n/a"
with the reason and the fix, metrics.jsonl and the trackers get NaN, `lmforge bench --json`
null.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lmforge.console import log as console_log
from lmforge.files import default_cache_dir

CACHE_FILE = "peak_flops.json"
PROBE_RUNS = 5  # timed matmuls per probe; their median is the figure
REPROBE_ENV = "LMFORGE_REPROBE"  # set (not "0"): probe again even where a figure is cached
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


# --- the machine's load ---------------------------------------------------------------------


@dataclass(frozen=True)
class Load:
    """The 1-minute load average against the cores this process may run on."""

    average: float  # NaN where the system does not say
    cores: int

    @property
    def busy(self) -> bool:
        # More runnable threads than cores: the probe's threads shared their cores with other
        # work and read low. (Our own process counts too, but the probe is taken before the
        # run's steps, while it has done little.)
        return self.average > self.cores

    def __str__(self) -> str:
        return f"load {self.average:.2f} on {self.cores} core{'s' if self.cores != 1 else ''}"


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask, where the system has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def current_load() -> Load:
    try:
        average = os.getloadavg()[0]
    except (AttributeError, OSError):  # Windows: unknown, so never called busy
        average = math.nan
    return Load(average, usable_cores())


# --- the probe ------------------------------------------------------------------------------


def _matmul_timer(device: torch.device, dtype: torch.dtype, n: int) -> Callable[[], float]:
    """A function that runs one n x n matmul and returns its seconds."""
    # a generator of its own: a run must draw the same random numbers whether the peak was
    # probed now or read from the cache
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=gen)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def timed() -> float:
        sync()
        t0 = time.perf_counter()
        a @ b
        sync()
        return time.perf_counter() - t0

    return timed


def probe_matmul(device: torch.device, dtype: torch.dtype, *, size: int = 0,
                 runs: int = PROBE_RUNS, timed_run: Callable[[], float] | None = None) -> float:
    """FLOP/s of the median of `runs` timed square matmuls of `size`, after one untimed.

    The median, not the best: one run that slipped between other processes' time slices
    must not set the peak, and one that was preempted must not lower it. `timed_run` (one
    matmul, its seconds) replaces the real matmul in tests."""
    if runs < 1:
        raise ValueError(f"a probe needs at least 1 timed run, got {runs}")
    n = size or (8192 if device.type == "cuda" else 2048)
    run = timed_run or _matmul_timer(device, dtype, n)
    run()  # warm-up: allocation, kernel choice, thread pool start
    flops = [2 * n**3 / max(run(), 1e-12) for _ in range(runs)]
    return statistics.median(flops)


# --- the cache --------------------------------------------------------------------------------


@dataclass(frozen=True)
class QuietProbe:
    """A cached probe, taken while the machine was not busy."""

    flops: float
    load: float
    cores: int
    date: str

    def __str__(self) -> str:
        return (f"median of {PROBE_RUNS} matmuls, {Load(self.load, self.cores)}, "
                f"{self.date}, cached")


def _cache_key(device: torch.device, dtype: torch.dtype) -> str:
    threads = torch.get_num_threads() if device.type == "cpu" else 0
    return (f"{device_name(device)}|{str(dtype).removeprefix('torch.')}|threads={threads}|"
            f"torch={torch.__version__}")


def _cache_path(cache_dir: Path | None) -> Path:
    return Path(cache_dir or default_cache_dir()) / CACHE_FILE


def _load(path: Path) -> dict[str, Any]:
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}


def _store(path: Path, cache: dict[str, Any]) -> None:
    try:  # a read-only home costs a probe per run, nothing more
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{CACHE_FILE}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache, indent=1, sort_keys=True))
        tmp.replace(path)
    except OSError:
        pass


def _quiet_entry(value: object) -> QuietProbe | None:
    """A cache entry as a QuietProbe; None for anything else. A bare number is an entry of
    the former cache, which kept the best figure ever seen, busy probes and runs' own
    throughput included: it is probed again rather than trusted."""
    if not isinstance(value, dict):
        return None
    try:
        entry = QuietProbe(flops=float(value["flops"]), load=float(value["load"]),
                           cores=int(value["cores"]), date=str(value["date"]))
    except (KeyError, TypeError, ValueError):
        return None
    return entry if math.isfinite(entry.flops) and entry.flops > 0 else None


def _reprobe_asked() -> bool:
    return os.environ.get(REPROBE_ENV, "") not in ("", "0")


def cached_probe(device: torch.device, dtype: torch.dtype, *, remeasure: bool = False,
                 cache_dir: Path | None = None,
                 probe: Callable[[torch.device, torch.dtype], float] = probe_matmul,
                 machine_load: Callable[[], Load] = current_load) -> tuple[float, str]:
    """(peak FLOP/s by probe_matmul, where the figure comes from), probed once per device,
    precision, thread count and torch version and cached; remeasure=True (or
    $LMFORGE_REPROBE) probes again. `probe` and `machine_load` are replaced in tests."""
    path, key = _cache_path(cache_dir), _cache_key(device, dtype)
    cache = _load(path)
    quiet = _quiet_entry(cache.get(key))
    if quiet is not None and not (remeasure or _reprobe_asked()):
        return quiet.flops, f"matmul probe, {quiet}"
    load = machine_load()  # before the probe: its own threads are not other work
    flops = probe(device, dtype)
    # Only a CPU probe shares its cores with the load average's threads; a GPU's matmul
    # does not, and the host's load says nothing about other users of the GPU.
    if device.type == "cpu" and load.busy:
        if quiet is not None:  # a busy probe never replaces a quiet one
            return quiet.flops, (f"matmul probe, {quiet}; a new probe on a busy machine "
                                 f"({load}) was left out")
        return flops, (f"matmul probe on a busy machine ({load}), median of {PROBE_RUNS} "
                       "matmuls, not cached")
    # Best of the quiet probes rather than the latest: interference only ever slows a
    # matmul, and a load average under the core count does not prove that nothing else ran
    # (it lags by a minute, and a load of 1.9 on 2 cores still takes most of a core), so a
    # higher quiet figure is the truer one. Whatever changes the real peak (threads, torch
    # version, the CPU) is in the key; to forget a figure, delete the cache file.
    if quiet is None or flops > quiet.flops:
        quiet = QuietProbe(flops=flops, load=load.average, cores=load.cores,
                           date=datetime.date.today().isoformat())
        cache[key] = dataclasses.asdict(quiet)
        _store(path, cache)
    return quiet.flops, f"matmul probe, {quiet}"


def peak_flops(device: torch.device, dtype: torch.dtype, *, configured_tflops: float = 0.0,
               remeasure: bool = False, cache_dir: Path | None = None) -> tuple[float, str]:
    """(peak FLOP/s of one device, where the figure comes from)."""
    if configured_tflops > 0:
        return configured_tflops * 1e12, "train.peak_tflops"
    sheet = datasheet_peak(device, dtype)
    if sheet is not None:
        return sheet, f"datasheet, {device_name(device)}"
    return cached_probe(device, dtype, remeasure=remeasure, cache_dir=cache_dir)


# --- the figure ------------------------------------------------------------------------------


def mfu(tokens_per_s: float, *, flops_per_token: float, peak: float, devices: int = 1) -> float:
    return tokens_per_s * flops_per_token / (peak * devices) if peak > 0 else float("nan")


def above_peak_note(achieved: float, *, peak: float, source: str) -> str:
    """What to say instead of an MFU above 100%: the run reached `achieved` FLOP/s per device,
    above `peak`, so the peak is wrong; why, and how to give the right one."""
    head = (f"mfu n/a (this run reached {achieved / 1e12:.3g} TFLOP/s per device, above 100% "
            f"of {'a probed' if source.startswith('matmul probe') else 'the'} peak of "
            f"{peak / 1e12:.3g} TFLOP/s")
    if source == "train.peak_tflops":
        return (f"{head} that train.peak_tflops gives: give the device's real peak in "
                "--train.peak_tflops)")
    if source.startswith("datasheet"):
        return (f"{head} ({source}): the model's FLOPs per token overcount, or the device is "
                "not the one the table names; give --train.peak_tflops)")
    why = ("the probe ran on a busy machine" if "busy machine" in source else
           "the probe read low: the machine was busier than its load average showed, or this "
           "model's matmuls run faster than the probe's square ones")
    return (f"{head}: {why}; give --train.peak_tflops, or re-probe on a quiet machine with "
            f"{REPROBE_ENV}=1 or `lmforge bench`)")


def utilization(tokens_per_s: float, *, flops_per_token: float, peak: float, source: str,
                devices: int = 1) -> tuple[float, str]:
    """(MFU, ""), or (NaN, why there is no figure) where it would be above 100%."""
    share = mfu(tokens_per_s, flops_per_token=flops_per_token, peak=peak, devices=devices)
    if not share > 1:
        return share, ""
    achieved = tokens_per_s * flops_per_token / devices
    return math.nan, above_peak_note(achieved, peak=peak, source=source)


class Utilization:
    """A run's MFU: the device's peak, found once at the start (rank 0 reports it; the other
    ranks compute nothing), and the share of it a throughput is."""

    def __init__(self, *, device: torch.device, dtype: torch.dtype, flops_per_token: int,
                 devices: int, configured_tflops: float, report: bool,
                 log: Callable[[str], None] = console_log) -> None:
        self.device, self.dtype, self.devices = device, dtype, devices
        self.flops_per_token, self.configured_tflops = flops_per_token, configured_tflops
        self.report, self.log = report, log
        self.peak, self.source = math.nan, ""
        self._said_above = False

    def find_peak(self) -> str:
        """Measure or look up the peak; the line that says what it is and where it comes from."""
        if not self.report:
            return ""
        self.peak, self.source = peak_flops(self.device, self.dtype,
                                            configured_tflops=self.configured_tflops)
        return (f"{self.flops_per_token / 1e6:,.1f} MFLOPs per token; device peak "
                f"{self.peak / 1e12:,.3g} TFLOP/s ({self.source})")

    def _figure(self, tokens_per_s: float) -> tuple[float, str]:
        return utilization(tokens_per_s, flops_per_token=self.flops_per_token, peak=self.peak,
                           source=self.source, devices=self.devices)

    def of(self, tokens_per_s: float) -> float:
        """The share of the peak; NaN on the ranks that do not report, and where it would be
        above 100% (the log line then shows "mfu –", and the first time says why)."""
        share, note = self._figure(tokens_per_s)
        if note and not self._said_above:
            self._said_above = True
            self.log(note)
        return share

    def record(self, tokens_per_s: float) -> float | None:
        """of() for a metrics.jsonl record: None where there is no figure, so the JSON says
        null rather than NaN (which is no JSON)."""
        share = self.of(tokens_per_s)
        return share if math.isfinite(share) else None

    def check(self, tokens_per_s: float) -> str:
        """At the end of a run: why its MFU is n/a (above 100% of the peak), or ""."""
        note = self._figure(tokens_per_s)[1]
        self._said_above = self._said_above or bool(note)  # of() need not say it again
        return note
