"""Parallelism applied to a built model from the outside, in one fixed order:

    tensor parallel → activation checkpointing → compile → FSDP2 or DDP

Tensor parallelism first, because it replaces parameters with DTensors that the later
steps must see; activation checkpointing and compile wrap each block; data parallelism
last, since it shards (FSDP2) or replicates (DDP) whatever the earlier steps produced. The
model itself never knows: nothing under models/ imports torch.distributed.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import nn

from lmforge.config import ParallelConfig
from lmforge.distributed.env import DistInfo
from lmforge.errors import ConfigError

STRATEGIES = ("auto", "single", "ddp", "fsdp", "tp", "fsdp+tp")


def resolve_strategy(strategy: str, info: DistInfo) -> str:
    """'auto' is DDP on several ranks and a plain model on one."""
    if strategy == "auto":
        return "ddp" if info.distributed else "single"
    if strategy != "single" and not info.distributed:
        return "single"  # a recipe written for many ranks runs as it is on one
    if strategy == "single" and info.distributed:
        raise ConfigError(f"parallel.strategy=single, but {info.world_size} processes were started; "
                          "use ddp, fsdp, tp or fsdp+tp, or start one process")
    return strategy


def _blocks(model: nn.Module) -> nn.ModuleList | None:
    return getattr(model, "blocks", None)


def apply_tp(model: nn.Module, mesh) -> None:
    """Megatron-style tensor parallelism of every Transformer block: q/k/v and the MLP's
    input projections split by output features (each rank holds whole heads), the output
    projections by input features, so each block needs one all-reduce in attention and one
    in the MLP. Embeddings, norms and the output layer stay replicated."""
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        RowwiseParallel,
        parallelize_module,
    )

    blocks = _blocks(model)
    if blocks is None:
        raise ConfigError("tensor parallelism splits attention heads and MLPs; model.arch="
                          f"{model.cfg.arch} has neither. Use parallel.strategy=ddp")
    cfg = model.cfg
    tp = mesh.size()
    if cfg.n_head % tp:
        raise ConfigError(f"model.n_head={cfg.n_head} does not split over {tp} tensor-parallel "
                          "ranks; pick a number of heads divisible by parallel.tp")
    for block in blocks:
        plan = {"attn.q_proj": ColwiseParallel(), "attn.k_proj": ColwiseParallel(),
                "attn.v_proj": ColwiseParallel(), "attn.c_proj": RowwiseParallel()}
        if cfg.mlp == "swiglu":
            plan.update({"mlp.w1": ColwiseParallel(), "mlp.w3": ColwiseParallel(),
                         "mlp.c_proj": RowwiseParallel()})
        else:
            plan.update({"mlp.c_fc": ColwiseParallel(), "mlp.c_proj": RowwiseParallel()})
        parallelize_module(block, mesh, plan)


def apply_ac(model: nn.Module) -> None:
    """Recompute each block's activations in the backward pass instead of storing them."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    blocks = _blocks(model)
    if blocks is None:
        raise ConfigError(f"parallel.activation_checkpointing works block by block; "
                          f"model.arch={model.cfg.arch} has no blocks")
    for i, block in enumerate(blocks):
        blocks[i] = checkpoint_wrapper(block, preserve_rng_state=True)


def apply_compile(model: nn.Module) -> None:
    """Compile each block on its own: the blocks are alike, so one compiled graph serves all."""
    blocks = _blocks(model)
    if blocks is None:
        model.compile()
        return
    for block in blocks:
        block.compile()


def apply_fsdp(model: nn.Module, mesh, *, reshard_after_forward: bool,
               param_dtype: torch.dtype | None) -> None:
    """FSDP2: each block its own unit (its parameters gathered just in time), then the root
    for what is left (embeddings, final norm, output layer). reshard_after_forward=True
    frees the gathered parameters after each block's forward (ZeRO-3); False keeps them
    until the backward (ZeRO-2: more memory, one all-gather less)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for block in _blocks(model) or []:
        fully_shard(block, mesh=mesh, reshard_after_forward=reshard_after_forward,
                    mp_policy=policy)
    fully_shard(model, mesh=mesh, reshard_after_forward=reshard_after_forward, mp_policy=policy)


def apply_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    # gradients live in the communication buckets themselves: no second copy of them
    return DistributedDataParallel(model, device_ids=ids, gradient_as_bucket_view=True)


def parallelize(model: nn.Module, cfg: ParallelConfig, info: DistInfo, *, strategy: str,
                device: torch.device, param_dtype: torch.dtype | None) -> nn.Module:
    """The model to train, wrapped as `strategy` says (it is already on `device`)."""
    if strategy in ("tp", "fsdp+tp"):
        apply_tp(model, info.mesh["tp"])
    if cfg.activation_checkpointing:
        apply_ac(model)
    if cfg.compile:
        apply_compile(model)
    if strategy in ("fsdp", "fsdp+tp"):
        apply_fsdp(model, info.mesh["dp"], reshard_after_forward=cfg.reshard_after_forward,
                   param_dtype=param_dtype)
    elif strategy == "ddp":
        return apply_ddp(model, device)
    return model


def clip_grad_norm(params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """Clip the global gradient norm to max_norm and return the norm before clipping.

    Plain tensors take torch's own clip_grad_norm_. Sharded gradients (DTensors under FSDP
    or tensor parallelism, possibly beside plain replicated ones) are normed per mesh and
    placement, each group's norm made whole across its ranks, then combined."""
    grads = [p.grad for p in params if p.grad is not None]
    from torch.distributed.tensor import DTensor

    if not any(isinstance(g, DTensor) for g in grads):
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    groups: dict[tuple, list[torch.Tensor]] = {}
    for g in grads:
        key = (g.device_mesh, g.placements) if isinstance(g, DTensor) else None
        groups.setdefault(key, []).append(g)
    norms = []
    for key, members in groups.items():
        norm = torch.nn.utils.get_total_norm(members)
        norms.append(norm.full_tensor() if key is not None else norm)
    total = torch.nn.utils.get_total_norm(norms)
    if math.isfinite(max_norm):
        coef = min(1.0, max_norm / (float(total) + 1e-6))
        if coef < 1.0:
            for g in grads:
                g.mul_(coef)
    return total


def _local_bytes(t: torch.Tensor) -> int:
    from torch.distributed.tensor import DTensor

    local = t.to_local() if isinstance(t, DTensor) else t
    return local.numel() * local.element_size()


def model_state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Bytes of parameters, gradients and optimizer state this rank holds: its shards under
    FSDP and tensor parallelism, everything under DDP. Gradients are counted as large as
    their parameters (they are, during a step)."""
    params = {id(p): p for p in model.parameters()}.values()
    weights = sum(_local_bytes(p) for p in params)
    optim = sum(_local_bytes(v) for state in optimizer.state.values() for v in state.values()
                if isinstance(v, torch.Tensor))
    return 2 * weights + optim


def unwrap(model: nn.Module) -> nn.Module:
    """The model under a DDP wrapper (FSDP2 and TP modify the model in place)."""
    return getattr(model, "module", model) if hasattr(model, "no_sync") else model


@contextlib.contextmanager
def gradient_sync(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Reduce gradients across ranks only when `enabled` (the last micro-batch of an
    accumulated step), so each optimizer step communicates once."""
    if enabled:
        yield
    elif hasattr(model, "no_sync"):  # DDP
        with model.no_sync():
            yield
    elif hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield
