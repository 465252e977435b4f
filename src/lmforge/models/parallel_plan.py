"""How a model may be split across processes, declared by the model itself.

distributed/parallelize.py applies parallelism from outside the model, and must know which
modules repeat (the units FSDP shards, activation checkpointing recomputes and compile
compiles) and how tensor parallelism splits each linear layer. Each model family says so
next to its own definition, by the names it gives its own modules, so renaming a layer
changes the plan in the same place (as torchtitan keeps a plan beside each model). Nothing
here imports torch.distributed: the plan is data, and parallelize.py turns it into
torch's parallel styles.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from torch import nn

# colwise: split the output features (each rank computes whole heads / hidden units);
# rowwise: split the input features and sum the partial outputs (one all-reduce)
TPStyle = Literal["colwise", "rowwise"]


@dataclass(frozen=True)
class ParallelPlan:
    blocks: nn.ModuleList | None = None  # the repeated blocks, or None for a model without
    block_tp: dict[str, TPStyle] = field(default_factory=dict)  # submodule of a block → style
    tp_divisible: dict[str, int] = field(default_factory=dict)  # config key → size to split
    no_tp_reason: str = ""  # why tensor parallelism cannot split this model, when it cannot
