"""The model a rank trains: built, given its starting weights, and parallelized.

One process, or data parallelism (DDP): every rank builds the whole model on its device
(DDP starts by copying rank 0's weights to the others). Sharded strategies (FSDP, tensor
parallel): every rank builds the model on the meta device (shapes, no storage), shards it,
then materializes its own shards from rank 0's weights, so no rank but 0 ever holds a full
copy. Either way every strategy starts from exactly the weights one process would have:
those the run's seed draws, or the --init-from weights rank 0 was given.

With LoRA (lora.r > 0) those weights are the frozen base: rank 0 takes their sha256 (the
name a LoRA checkpoint gives its base), then every rank gives its model the adapters
(interop/lora.py) before it is parallelized, so DDP and FSDP see base and adapters alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from lmforge.config import ModelConfig
from lmforge.config_checks import human_bytes, model_params
from lmforge.distributed.env import broadcast_object
from lmforge.distributed.parallelize import SHARDED, full_weights, load_from_rank0, parallelize
from lmforge.errors import ConfigError
from lmforge.generate import available_memory
from lmforge.interop.init_from import PretrainedWeights, load_into
from lmforge.interop.lora import LoraBase, apply_lora, base_origin, keep_base_in, state_digest
from lmforge.models import LanguageModel, TrainedModel, build_model
from lmforge.plan import RunPlan

# float32 weights, their gradients and AdamW's two moments: what training holds per weight
TRAINING_BYTES_PER_PARAM = 16
FROZEN_BYTES_PER_PARAM = 4  # a LoRA base: float32 weights, no gradient, no optimizer state


@dataclass(frozen=True)
class BuiltModel:
    """What a rank trains: the model itself, the model as this rank runs it (wrapped or
    sharded), and for LoRA the frozen base the adapters sit on (the same on every rank)."""

    raw: TrainedModel
    model: nn.Module
    lora_base: LoraBase | None = None


def check_fits(cfg: ModelConfig, device: torch.device, *, shards: int = 1,
               frozen: bool = False) -> None:
    """Refuse, before allocating anything, a model whose weights, gradients and optimizer
    state (split over `shards` ranks; the weights alone when `frozen`, a LoRA base) need
    more memory than `device` has free."""
    free = available_memory(device)
    per_param = FROZEN_BYTES_PER_PARAM if frozen else TRAINING_BYTES_PER_PARAM
    need = per_param * model_params(cfg) // max(1, shards)
    if free is not None and need > free:
        raise ConfigError(f"the model ({model_params(cfg):,} parameters) does not fit in "
                          f"memory on {device}: its weights, gradients and optimizer state "
                          f"need about {human_bytes(need)}, {human_bytes(free)} is free; make "
                          "it smaller (model.n_layer, model.n_embd) or shard it over more "
                          "ranks (parallel.strategy=fsdp)")


def _built(cfg: ModelConfig, device: torch.device) -> LanguageModel:
    """The model with its initial weights on `device`; a model too large is a one-line error
    (when the estimate of check_fits let it through and the allocation fails all the same)."""
    try:
        return build_model(cfg).to(device)
    except (MemoryError, torch.OutOfMemoryError, RuntimeError) as err:
        if not isinstance(err, MemoryError | torch.OutOfMemoryError) and "alloc" not in str(err):
            raise
        raise ConfigError(f"the model ({cfg.n_layer} layers x {cfg.n_embd}, vocabulary "
                          f"{cfg.vocab_size:,}) does not fit in memory on {device}; make it "
                          "smaller (model.n_layer, model.n_embd)") from None


def build_for_rank(plan: RunPlan, *, init_state: PretrainedWeights | None = None,
                   wrap: Callable[[LanguageModel], TrainedModel] | None = None) -> BuiltModel:
    """The model this rank trains. `init_state` (rank 0's --init-from weights) replaces the
    initial weights."""
    cfg = plan.cfg
    sharded, lora = plan.strategy in SHARDED, cfg.lora.r > 0
    check_fits(cfg.model, plan.device, shards=plan.info.world_size if sharded else 1,
               frozen=lora)
    torch.manual_seed(cfg.run.seed)  # the same initial weights on every rank
    weights, digest = None, None
    if not sharded or plan.is_main:
        lm = _built(cfg.model, torch.device("cpu") if sharded else plan.device)
        if init_state is not None:  # --init-from: weights from elsewhere, before any sharding
            load_into(lm, init_state)
        raw: TrainedModel = lm if wrap is None else wrap(lm)  # a task's head on the model
        if lora:  # the base as loaded: what its checkpoints name it by
            digest = state_digest(raw) if plan.is_main else None
            apply_lora(raw, cfg.lora, seed=cfg.run.seed)
            if not sharded and plan.compute_dtype == torch.bfloat16:
                # frozen weights need no fp32 master copy; FSDP wants one dtype per unit
                keep_base_in(raw, torch.bfloat16)
        if sharded:
            weights = full_weights(raw)
            del raw
    if sharded:
        with torch.device("meta"):
            raw = build_model(cfg.model) if wrap is None else wrap(build_model(cfg.model))
            if lora:
                apply_lora(raw, cfg.lora, seed=cfg.run.seed)
    # FSDP gathers parameters in bf16 when the run computes in it (reductions stay fp32)
    param_dtype = torch.bfloat16 if plan.compute_dtype == torch.bfloat16 else None
    model = parallelize(raw, raw.parallel_plan(), cfg.parallel, plan.info, strategy=plan.strategy,
                        arch=cfg.model.arch, device=plan.device, param_dtype=param_dtype)
    if sharded:
        model.to_empty(device=plan.device)  # storage for this rank's shards, no values yet
        raw.tie_weights()  # to_empty gives each module a parameter of its own
        load_from_rank0(model, weights)
        raw.reset_buffers()
    base = (LoraBase(sha256=broadcast_object(digest, plan.info), origin=base_origin(cfg))
            if lora else None)
    return BuiltModel(raw=raw, model=model, lora_base=base)
