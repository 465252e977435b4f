"""The device a process computes on and the precision it computes in, decided once per run.

Nothing here runs at import time: a device or a dtype is chosen when a run is planned
(lmforge.plan), and every part of the run (autocast, FSDP's gathered weights, the MFU peak,
the log) follows that one decision.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

from lmforge.errors import ConfigError


def resolve_device(name: str, *, local_rank: int = 0) -> torch.device:
    """`auto` (a GPU when there is one, this process's under torchrun), or the named device
    after checking that this machine has it."""
    if name != "auto":
        try:
            device = torch.device(name)
        except RuntimeError:  # torch's message lists every backend it knows; keep it to one line
            raise ConfigError(f"train.device: {name!r} is not a device; use auto, cpu, cuda, "
                              "cuda:N or mps") from None
        available: dict[str, Callable[[], bool]] = {
            "cpu": lambda: True, "cuda": torch.cuda.is_available,
            "mps": torch.backends.mps.is_available}
        if device.type not in available or not available[device.type]():
            raise ConfigError(f"train.device={name!r}: no such device on this machine; use auto "
                              "or cpu")
        if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
            raise ConfigError(f"train.device={name!r}: this machine has "
                              f"{torch.cuda.device_count()} CUDA device(s); use auto or cuda:0")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AVX512-BF16 or AMX).

    There bf16 matrix products run 3.5-4x faster than fp32 (benchmarks/results/), so
    autocast pays even for small models; without it bf16 is emulated and slower than fp32.
    The checks are private in torch, so their absence reads as "no".
    """
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def uses_bf16(precision: str, device: torch.device) -> bool:
    """bf16 autocast where asked for, or by default ('auto') where the hardware computes in
    bf16 natively: GPUs that support it and CPUs with AVX512-BF16 or AMX."""
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_native_bf16()


def compute_dtype(precision: str, device: torch.device) -> torch.dtype:
    """train.precision on `device`: bfloat16 (under autocast) or float32."""
    return torch.bfloat16 if uses_bf16(precision, device) else torch.float32


Autocast = Callable[[], contextlib.AbstractContextManager]


def autocast_for(dtype: torch.dtype, device: torch.device) -> Autocast:
    """A factory of the context that computes a forward pass in `dtype`."""
    if dtype == torch.bfloat16:
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def precision_name(dtype: torch.dtype) -> str:
    """'bfloat16' or 'float32', as records and the log name it."""
    return str(dtype).removeprefix("torch.")
