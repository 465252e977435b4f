"""The model a rank trains: built, given its starting weights, and parallelized.

One process, or data parallelism (DDP): every rank builds the whole model on its device
(DDP starts by copying rank 0's weights to the others). Sharded strategies (FSDP, tensor
parallel): every rank builds the model on the meta device (shapes, no storage), shards it,
then materializes its own shards from rank 0's weights, so no rank but 0 ever holds a full
copy. Either way every strategy starts from exactly the weights one process would have:
those the run's seed draws, or the --init-from weights rank 0 was given.
"""

from __future__ import annotations

import torch
from torch import nn

from lmforge.config import ModelConfig
from lmforge.config_checks import human_bytes, model_params
from lmforge.distributed.parallelize import SHARDED, full_weights, load_from_rank0, parallelize
from lmforge.errors import ConfigError
from lmforge.generate import available_memory
from lmforge.interop.init_from import load_into
from lmforge.models import LanguageModel, build_model
from lmforge.plan import RunPlan

# float32 weights, their gradients and AdamW's two moments: what training holds per weight
TRAINING_BYTES_PER_PARAM = 16


def check_fits(cfg: ModelConfig, device: torch.device, *, shards: int = 1) -> None:
    """Refuse, before allocating anything, a model whose weights, gradients and optimizer
    state (split over `shards` ranks) need more memory than `device` has free."""
    free = available_memory(device)
    need = TRAINING_BYTES_PER_PARAM * model_params(cfg) // max(1, shards)
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


def build_for_rank(plan: RunPlan, *,
                   init_state: dict[str, torch.Tensor] | None = None) -> tuple[LanguageModel, nn.Module]:
    """(the model itself, the model as this rank trains it: wrapped or sharded).
    `init_state` (rank 0's --init-from weights) replaces the initial weights."""
    cfg = plan.cfg
    sharded = plan.strategy in SHARDED
    check_fits(cfg.model, plan.device, shards=plan.info.world_size if sharded else 1)
    torch.manual_seed(cfg.run.seed)  # the same initial weights on every rank
    weights = None
    if not sharded or plan.is_main:
        raw = _built(cfg.model, torch.device("cpu") if sharded else plan.device)
        if init_state is not None:  # --init-from: weights from elsewhere, before any sharding
            load_into(raw, init_state)
        if sharded:
            weights = full_weights(raw)
            del raw
    if sharded:
        with torch.device("meta"):
            raw = build_model(cfg.model)
    # FSDP gathers parameters in bf16 when the run computes in it (reductions stay fp32)
    param_dtype = torch.bfloat16 if plan.compute_dtype == torch.bfloat16 else None
    model = parallelize(raw, raw.parallel_plan(), cfg.parallel, plan.info, strategy=plan.strategy,
                        arch=cfg.model.arch, device=plan.device, param_dtype=param_dtype)
    if sharded:
        model.to_empty(device=plan.device)  # storage for this rank's shards, no values yet
        raw.tie_weights()  # to_empty gives each module a parameter of its own
        load_from_rank0(model, weights)
        raw.reset_buffers()
    return raw, model
