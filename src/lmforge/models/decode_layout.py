"""Weights laid out for decoding on a CPU.

Decoding multiplies one token's activations (1, C) by every weight matrix in turn: the
weights, not the arithmetic, are the cost, and a model bigger than the CPU's cache reads
them from memory once a token. How they lie in memory decides how fast that read goes.
nn.Linear stores its weight (out, in) row by row and computes x @ weight.T; on this CPU
(oneDNN/MKL, one thread) that product for one row reads a 1 MiB weight in ~150 us, while
the same weight stored column by column (its transpose contiguous, weight.T.contiguous().T)
is read in ~55 us, and the 8,192 x 256 output layer of the default model in ~350 us instead
of ~1,300 (measured in benchmarks/generate.py). Batched rows and long prompts run at the
same speed either way.

The values do not change, only their order in memory: the same module, the same parameter
objects (a tied output layer stays tied), a matrix product that adds in another order
(float32 rounding). So it is for a model that only infers from now on (a server's, a
`generate` command's), never one that trains: the optimizer's state and the gradients
would take that layout too.
"""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def use_decode_layout(model: nn.Module) -> nn.Module:
    """Store every nn.Linear weight of `model` (on a CPU) column by column, in place; the
    model is returned. Weights on another device, and tensor subclasses (a sharded DTensor),
    are left as they are."""
    for module in model.modules():
        if not isinstance(module, nn.Linear):
            continue
        weight = module.weight
        if (weight.device.type == "cpu" and type(weight.data) is torch.Tensor
                and weight.dim() == 2 and weight.is_contiguous()):
            weight.data = weight.data.t().contiguous().t()
    return model
