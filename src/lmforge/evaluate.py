"""Loss, perplexity and bits per byte of a model on a prepared split.

Bits per byte divides the loss by the split's bytes per token, so models with different
tokenizers can be compared on the same text.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lmforge.data.loader import fixed_windows
from lmforge.distributed.env import SINGLE, DistInfo, all_sum


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token loss in nats; logits (B, T, V), targets (B, T)."""
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1))


@torch.no_grad()
def mean_loss(model: nn.Module, tokens: np.ndarray, *, block_size: int, batch_size: int,
              max_windows: int = 0, device: torch.device | str = "cpu",
              autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
              split: str = "val", info: DistInfo = SINGLE) -> float:
    """Mean loss per token over fixed windows of `tokens` (all of them when max_windows=0).
    Under data parallelism each rank evaluates its share and the sums are all-reduced."""
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    for x, y, real in fixed_windows(tokens, block_size=block_size, batch_size=batch_size,
                                    max_windows=max_windows, split=split, rank=info.dp_rank,
                                    ranks=info.dp_size):
        x, y = x.to(device), y.to(device)
        with autocast():
            logits, _ = model(x)
        if real:
            total += cross_entropy(logits[:real], y[:real]).double() * y[:real].numel()
            count += y[:real].numel()
    model.train(was_training)
    # summed over all ranks; TP ranks of one data-parallel group count the same windows,
    # which scales both sums alike and leaves the mean as it is
    sums = all_sum(torch.stack([total, torch.tensor(float(count), dtype=torch.float64,
                                                    device=device)]), info)
    return (sums[0] / sums[1]).item()


def summarize(loss: float, *, tokens: int, bytes_: int) -> dict[str, float]:
    """Loss (nats per token), perplexity and bits per byte of a split."""
    bits_per_byte = loss / math.log(2) * tokens / bytes_ if bytes_ else float("nan")
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "bits_per_byte": bits_per_byte}
