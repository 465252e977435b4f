"""Sampling from any model that follows `forward(tokens, state) -> (logits, state)`.

Transformers carry a KV cache as their state (made by `model.new_cache`), recurrent models
a hidden state; either way the state forward returns is fed back in with the next token.
A model whose state comes back None is simply rerun on the whole (cropped) context.

Context limit: a model with `model.cfg.block_size` sees at most the last block_size tokens.
A longer prompt is cropped to its last block_size tokens. Without a cache every step reruns
the model on the last block_size tokens. With one, once the cache is full, the next step
starts a fresh cache prefilled with the last block_size // 2 tokens, leaving room for
block_size // 2 cheap steps before the next refill: a learned-position model cannot shift
its cache by one (every position would change), and refilling a full window at every step
would make each step as costly as no cache at all. So past block_size tokens a cached step
sees between block_size // 2 and block_size tokens of context, where recomputation sees
block_size; up to block_size the two are the same computation (tested).
Recurrent models (`model.recurrent`) are never cropped: their state carries the whole history.
"""

from __future__ import annotations

import math
import re
import resource
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lmforge.config import ModelConfig
from lmforge.config_checks import FLOAT, MIN_TEMPERATURE, model_params, sampling_bytes
from lmforge.errors import LmforgeError
from lmforge.threads import StepThreads


def sampling_problem(*, temperature: float, top_k: int, top_p: float) -> str | None:
    """What is wrong with these sampling settings, or None: temperature 0 (greedy) or a finite
    number of at least MIN_TEMPERATURE, top_k >= 0, top_p in [0, 1] (NaN is none of these)."""
    if not math.isfinite(temperature) or not (temperature == 0 or temperature >= MIN_TEMPERATURE):
        return f"temperature must be 0 (greedy) or a finite number >= {MIN_TEMPERATURE:g}"
    if top_k < 0 or not 0.0 <= top_p <= 1.0:
        return "top_k must be >= 0 and top_p between 0 and 1"
    return None


def _check_sampling(*, temperature: float, top_k: int, top_p: float) -> None:
    problem = sampling_problem(temperature=temperature, top_k=top_k, top_p=top_p)
    if problem:
        raise ValueError(f"{problem}; got temperature={temperature}, top_k={top_k}, "
                         f"top_p={top_p}")


def sample_next(logits: Tensor, *, temperature: float, top_k: int, top_p: float,
                generator: torch.Generator | None) -> Tensor:
    """One token per row of logits (B, V) → (B,) int64.

    temperature 0 is greedy (argmax); top_k 0 and top_p 1.0 switch those filters off.
    top_p keeps the smallest set of most likely tokens whose mass reaches top_p (at least one).
    """
    _check_sampling(temperature=temperature, top_k=top_k, top_p=top_p)
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = sampling_probs(logits, temperature=temperature, top_k=top_k, top_p=top_p)
    if not bool(torch.isfinite(probs).all()):
        raise LmforgeError(NONFINITE)
    return draw(probs, torch.rand(probs.size(0), generator=generator, device=probs.device))


def draw(probs: Tensor, uniforms: Tensor) -> Tensor:
    """One token per row of probabilities (B, V), finite, by inverse transform sampling with
    row b's uniform number uniforms[b] in [0, 1): the first token whose cumulative
    probability exceeds it. (B,) int64.

    Why not torch.multinomial: on a CPU it takes ~250 us for one row of 8,192 tokens, about
    as long as a small model's forward, where this takes a tenth of that; and rows whose
    numbers come from generators of their own (a server's requests) share one search.
    The sums run in float64, and a float32 uniform is below 1 - 2**-24, so the point searched
    for lies strictly below the total: the token found has a probability above 0.
    """
    cdf = probs.double().cumsum(dim=-1)  # (B, V)
    points = uniforms.double()[:, None] * cdf[:, -1:]  # (B, 1)
    found = torch.searchsorted(cdf, points, right=True)[:, 0]  # (B,)
    return found.clamp_(max=probs.size(-1) - 1)


NONFINITE = ("the model's next-token probabilities are NaN or Inf: its weights are not finite "
             "(a learning rate far too high?); lower --optim.lr or enable --optim.grad_clip and "
             "train again")


def sampling_probs(logits: Tensor, *, temperature: float, top_k: int, top_p: float) -> Tensor:
    """The distribution sample_next draws from, (B, V) for logits (B, V), temperature > 0:
    each row on its own, so a row's probabilities are the same in any batch."""
    logits = logits.float() / temperature  # (B, V)
    if 0 < top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V)
        probs = sorted_logits.softmax(dim=-1)
        # drop a token when the more likely ones before it already reach top_p
        drop = probs.cumsum(dim=-1) - probs >= top_p
        drop[:, 0] = False  # the most likely token always stays, even for top_p = 0
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.empty_like(logits).scatter_(-1, order, sorted_logits)
    return logits.softmax(dim=-1)


def generate_tokens(model: nn.Module, prompt: Tensor, *, max_new_tokens: int,
                    temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                    generator: torch.Generator | None = None,
                    use_cache: bool = True) -> Iterator[Tensor]:
    """Yield max_new_tokens steps of one new token per sequence, (B,) each, as they come.

    prompt is (B, T) with T >= 1 (callers pass at least the end-of-text token). The model
    runs in eval mode under torch.inference_mode(); its training mode is restored when the
    iterator finishes or is closed.
    """
    if prompt.dim() != 2 or prompt.size(1) == 0:
        raise ValueError(f"prompt must be (batch, tokens) with at least one token, "
                         f"got shape {tuple(prompt.shape)}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    _check_sampling(temperature=temperature, top_k=top_k, top_p=top_p)  # here, not mid-stream
    sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
    return _stream(model, prompt, max_new_tokens=max_new_tokens, use_cache=use_cache,
                   sampling=sampling)


def _stream(model: nn.Module, prompt: Tensor, *, max_new_tokens: int, use_cache: bool,
            sampling: dict[str, Any]) -> Iterator[Tensor]:
    # a recurrent model's state summarizes all it has seen: no window to crop to
    recurrent = getattr(model, "recurrent", False)
    block_size: int = 0 if recurrent else getattr(getattr(model, "cfg", None), "block_size", 0)
    context = prompt[:, -block_size:] if block_size else prompt  # (B, <= block_size)
    state: Any = None
    in_state = 0  # tokens the state has seen
    was_training = model.training
    model.eval()
    # a step of a few new tokens on one CPU thread, a longer one on all (threads.py)
    threads = StepThreads(torch.get_num_threads()) if prompt.device.type == "cpu" else None
    try:
        for _ in range(max_new_tokens):
            # inference mode per step, not across the yield: the caller's code between
            # steps must not run under it
            with torch.inference_mode():
                full = bool(block_size) and in_state >= block_size
                cached_step = use_cache and state is not None and not full
                if cached_step:
                    step = context[:, -1:]  # (B, 1): the newest token
                else:  # first step, no cache, a model without state, or a full cache
                    new_cache = getattr(model, "new_cache", None) if use_cache else None
                    cached = new_cache is not None
                    step = context[:, -max(1, block_size // 2):] if cached and full else context
                    state = new_cache(step.size(0)) if new_cache is not None else None
                if threads is not None:
                    threads.use(threads.worth(step.numel()))
                logits, state = model(step, state)  # (B, T, V)
                state = state if use_cache else None
                in_state = in_state + 1 if cached_step else step.size(1)
                token = sample_next(logits[:, -1], **sampling)  # (B,)
            context = torch.cat((context, token[:, None]), dim=1)
            if block_size:
                context = context[:, -block_size:]
            yield token
    finally:
        if threads is not None:
            threads.use(threads.most)
        model.train(was_training)


# ---------------------------------------------------------------------------- memory

def generation_bytes(m: ModelConfig, *, samples: int, prompt_tokens: int,
                     new_tokens: int) -> int:
    """About what generating `samples` samples at once needs, computed from the model's
    config before it is built: its float32 weights, the KV cache (or hidden state) and the
    logits of a forward pass, the prompt repeated per sample (a Transformer's cropped to
    block_size) and, for several samples, the tokens collected as Python ints (~40 bytes)."""
    recurrent = m.arch != "gpt"
    prompt = prompt_tokens if recurrent else min(prompt_tokens, m.block_size)
    collected = 40 * samples * new_tokens if samples > 1 else 0
    return (FLOAT * model_params(m) + sampling_bytes(m, m.vocab_size, samples, prompt)
            + 8 * samples * prompt + collected)


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def host_available_memory() -> int | None:
    """Bytes this process can still allocate on the host, or None where that is unknown
    (no /proc): the least of the memory the kernel reports available, the address space
    RLIMIT_AS leaves it and the headroom of its cgroup."""
    limits = []
    found = re.search(r"^MemAvailable:\s+(\d+) kB", _read("/proc/meminfo"), re.M)
    if found:
        limits.append(int(found.group(1)) * 1024)
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        used = re.search(r"^VmSize:\s+(\d+) kB", _read("/proc/self/status"), re.M)
        limits.append(soft - (int(used.group(1)) * 1024 if used else 0))
    cap, now = (_read(f"/sys/fs/cgroup/memory.{n}").strip() for n in ("max", "current"))
    if cap.isdigit() and now.isdigit():
        limits.append(int(cap) - int(now))
    return max(0, min(limits)) if limits else None


def available_memory(device: torch.device) -> int | None:
    """Bytes that can still be allocated on `device` (a GPU's free memory; the host's for
    the CPU and Apple's unified memory), or None where that is unknown."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    return host_available_memory()


def most_that_fit(need: Callable[[int], int], free: int, most: int) -> int:
    """The largest n in 0..most with need(n) <= free, for a `need` that grows with n."""
    low, high = 0, most
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if need(mid) <= free else (low, mid - 1)
    return low
