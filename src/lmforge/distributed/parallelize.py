"""Parallelism applied to a built model from the outside, in one fixed order:

    tensor parallel → activation checkpointing → compile → FSDP2 or DDP

Tensor parallelism first, because it replaces parameters with DTensors that the later
steps must see; activation checkpointing and compile wrap each block; data parallelism
last, since it shards (FSDP2) or replicates (DDP) whatever the earlier steps produced.

What to split is the model's own declaration (`model.parallel_plan()`, beside each model
family's definition): its repeated blocks and how tensor parallelism splits each block's
linear layers. Nothing here names a module of a model, and the model itself never knows
it is parallel: nothing under models/ imports torch.distributed.

A sharded model (FSDP, TP) is built on the meta device on every rank, so no rank ever
holds a full copy it does not need; each rank then gets storage for its own shards
(`to_empty`), filled from rank 0's full weights (`full_weights`, `load_from_rank0`), so
every strategy starts from exactly the weights a single process would have.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch import nn

from lmforge.config import ParallelConfig
from lmforge.distributed.env import DistInfo
from lmforge.errors import ConfigError
from lmforge.models.parallel_plan import ParallelPlan

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh

SHARDED = ("fsdp", "tp", "fsdp+tp")  # strategies under which a rank holds part of the weights
TENSOR_PARALLEL = ("tp", "fsdp+tp")


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


def check_tensor_parallel(plan: ParallelPlan, *, tp: int, strategy: str) -> None:
    """Refuse, before anything is built, a model tensor parallelism cannot split `tp` ways."""
    if not plan.block_tp:
        raise ConfigError(f"parallel.strategy={strategy}: tensor parallelism splits attention "
                          f"heads and MLPs, and {plan.no_tp_reason or 'this model has neither'}; "
                          "use parallel.strategy=ddp (or fsdp)")
    for key, size in plan.tp_divisible.items():
        if size % tp:
            raise ConfigError(f"{key}={size} does not split over {tp} tensor-parallel ranks; "
                              f"pick a {key.split('.')[-1]} divisible by parallel.tp")


def apply_tp(plan: ParallelPlan, mesh: DeviceMesh) -> None:
    """Megatron-style tensor parallelism of every block, as the model's plan says: column-wise
    layers split their output features (each rank holds whole heads), row-wise ones their
    input features, so each block needs one all-reduce in attention and one in the MLP."""
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        RowwiseParallel,
        parallelize_module,
    )

    styles = {"colwise": ColwiseParallel, "rowwise": RowwiseParallel}
    check_tensor_parallel(plan, tp=mesh.size(), strategy="tp")
    for block in plan.blocks or []:
        parallelize_module(block, mesh, {name: styles[style]()
                                         for name, style in plan.block_tp.items()})


def apply_ac(plan: ParallelPlan, arch: str) -> None:
    """Recompute each block's activations in the backward pass instead of storing them."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    if plan.blocks is None:
        raise ConfigError(f"parallel.activation_checkpointing works block by block; "
                          f"model.arch={arch} has no blocks")
    for i, block in enumerate(plan.blocks):
        plan.blocks[i] = checkpoint_wrapper(block, preserve_rng_state=True)


def apply_compile(model: nn.Module, plan: ParallelPlan) -> None:
    """Compile each block on its own: the blocks are alike, so one compiled graph serves all."""
    if plan.blocks is None:
        model.compile()
        return
    for block in plan.blocks:
        block.compile()


def apply_fsdp(model: nn.Module, plan: ParallelPlan, mesh: DeviceMesh, *,
               reshard_after_forward: bool,
               param_dtype: torch.dtype | None) -> None:
    """FSDP2: each block its own unit (its parameters gathered just in time), then the root
    for what is left (embeddings, final norm, output layer). reshard_after_forward=True
    frees the gathered parameters after each block's forward (ZeRO-3); False keeps them
    until the backward (ZeRO-2: more memory, one all-gather less)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for block in plan.blocks or []:
        fully_shard(block, mesh=mesh, reshard_after_forward=reshard_after_forward,
                    mp_policy=policy)
    fully_shard(model, mesh=mesh, reshard_after_forward=reshard_after_forward, mp_policy=policy)


def apply_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    # gradients live in the communication buckets themselves: no second copy of them. DDP
    # also copies rank 0's weights to every rank as it starts.
    return DistributedDataParallel(model, device_ids=ids, gradient_as_bucket_view=True)


def parallelize(model: nn.Module, plan: ParallelPlan, cfg: ParallelConfig, info: DistInfo, *,
                strategy: str, arch: str, device: torch.device,
                param_dtype: torch.dtype | None) -> nn.Module:
    """The model to train, wrapped as `strategy` says (on `device`, or on the meta device for
    a sharded strategy, to be materialized afterwards)."""
    if strategy in TENSOR_PARALLEL:
        apply_tp(plan, info.mesh["tp"])
    if cfg.activation_checkpointing:
        apply_ac(plan, arch)
    if cfg.compile:
        apply_compile(model, plan)
    if strategy in ("fsdp", "fsdp+tp"):
        apply_fsdp(model, plan, info.mesh["dp"], reshard_after_forward=cfg.reshard_after_forward,
                   param_dtype=param_dtype)
    elif strategy == "ddp":
        return apply_ddp(model, device)
    return model


def full_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """A built (unsharded) model's weights, for `load_from_rank0` on rank 0."""
    return {name: t.detach().clone() for name, t in model.state_dict().items()}


def load_from_rank0(model: nn.Module, weights: dict[str, torch.Tensor] | None) -> None:
    """Fill a sharded model (materialized with `to_empty`) from rank 0's full `weights` (None
    on the other ranks): each rank receives and keeps its own shards."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    set_model_state_dict(model, dict(weights or {}), options=options)


def clip_grad_norm(params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """Clip the global gradient norm to max_norm and return the norm before clipping.

    Plain tensors take torch's own clip_grad_norm_. Sharded gradients (DTensors under FSDP
    or tensor parallelism, possibly beside plain replicated ones) are normed per mesh and
    placement, each group's norm made whole across its ranks, then combined."""
    grads = [p.grad for p in params if p.grad is not None]
    if all(type(g) is torch.Tensor for g in grads):  # before importing DTensor (0.6 s)
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    from torch.distributed.tensor import DTensor

    groups: dict[tuple | None, list[torch.Tensor]] = {}
    for g in grads:
        key = (g.device_mesh, g.placements) if isinstance(g, DTensor) else None
        groups.setdefault(key, []).append(g)
    norms = []
    for members in groups.values():
        norm = torch.nn.utils.get_total_norm(members)
        norms.append(norm.full_tensor() if isinstance(norm, DTensor) else norm)
    total = torch.nn.utils.get_total_norm(norms)
    if math.isfinite(max_norm):
        coef = min(1.0, max_norm / (float(total) + 1e-6))
        if coef < 1.0:
            for g in grads:
                g.mul_(coef)
    return total


def _local_bytes(t: torch.Tensor) -> int:
    if type(t) is torch.Tensor or (type(t) is nn.Parameter and type(t.data) is torch.Tensor):
        return t.numel() * t.element_size()
    from torch.distributed.tensor import DTensor

    local = t.to_local() if isinstance(t, DTensor) else t
    return local.numel() * local.element_size()


def model_state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Bytes of parameters, gradients and optimizer state this rank holds: its shards under
    FSDP and tensor parallelism, everything under DDP. Gradients are counted as large as
    their parameters (they are, during a step); frozen ones (a LoRA base) have none."""
    params = {id(p): p for p in model.parameters()}.values()
    weights = sum(_local_bytes(p) for p in params)
    grads = sum(_local_bytes(p) for p in params if p.requires_grad)
    return weights + grads + optimizer_state_bytes(optimizer)


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the optimizer's state on this rank (AdamW: two moments per trained weight)."""
    return sum(_local_bytes(v) for state in optimizer.state.values() for v in state.values()
               if isinstance(v, torch.Tensor))


def unwrap(model: nn.Module) -> nn.Module:
    """The model under a DDP wrapper (FSDP2 and TP modify the model in place)."""
    inner = getattr(model, "module", model) if hasattr(model, "no_sync") else model
    assert isinstance(inner, nn.Module)
    return inner


@contextlib.contextmanager
def gradient_sync(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Reduce gradients across ranks only when `enabled` (the last micro-batch of an
    accumulated step), so each optimizer step communicates once."""
    if enabled or not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        yield  # nothing to hold back, and no import of FSDP (half a second of a first step)
        return
    from torch.distributed.fsdp import FSDPModule
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(model, DistributedDataParallel):
        with model.no_sync():
            yield
    elif isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield
