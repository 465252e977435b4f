"""Weights laid out for decoding on a CPU.

Decoding multiplies one token's activations (1, C) by every weight matrix in turn: the
weights, not the arithmetic, are the cost, and a model bigger than the CPU's cache reads
them from memory once a token. How they lie in memory decides how fast that read goes.
nn.Linear stores its weight (out, in) row by row and computes x @ weight.T. For one row of
activations, the product streams fastest through memory along long contiguous runs: on a
2-core AMD EPYC (MKL, one thread, weights out of cache) the default model's 8,192 x 256
output layer is read in ~420 us stored column by column (its transpose contiguous,
weight.T.contiguous().T: runs of 8,192) against ~1,070 us row by row (runs of 256), and an
MLP's 1,024 x 256 input layer in ~90 us against ~145, while its 256 x 1,024 output layer
is fastest as it is (~90 us, against ~150 transposed). So a weight with more outputs than
inputs is stored column by column, and the others stay as they are (benchmarks/generate.py
measures the whole). Batched rows and long prompts run at the same speed either way.

The values do not change, only their order in memory: the same module, the same parameter
objects (a tied output layer stays tied), a matrix product that adds in another order
(float32 rounding). So it is for a model that only infers from now on (a server's, a
`generate` command's), never one that trains: the optimizer's state and the gradients
would take that layout too.
"""

from __future__ import annotations

import torch
from torch import nn

from lmforge.models.layers import CausalSelfAttention


@torch.no_grad()
def use_decode_layout(model: nn.Module) -> nn.Module:
    """Store every nn.Linear weight of `model` (on a CPU) with more outputs than inputs
    column by column, and fuse each attention's q, k and v projections into one product
    (CausalSelfAttention.fuse_qkv), in place; the model is returned. Weights on another device, and tensor
    subclasses (a sharded DTensor), are left as they are."""
    for module in model.modules():
        if isinstance(module, CausalSelfAttention):
            module.fuse_qkv()  # its three projections as one (stored column by column)
        if not isinstance(module, nn.Linear):
            continue
        weight = module.weight
        if (weight.device.type == "cpu" and type(weight.data) is torch.Tensor
                and weight.dim() == 2 and weight.size(0) > weight.size(1)
                and weight.is_contiguous()):
            weight.data = weight.data.t().contiguous().t()
    return model
