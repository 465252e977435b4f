"""Loss, perplexity and bits per byte of a model on a prepared split.

Bits per byte divides the loss by the split's bytes per token, so models with different
tokenizers can be compared on the same text.

Transformers are measured on independent windows of block_size tokens (nanoGPT's
estimate), recurrent models as streams that carry their hidden state from one chunk to the
next (`stream_loss`), as they train and generate: a window from a zero state would charge
a recurrent model for forgetting at every window start what it never had to forget.
`split_loss` picks the right one for a model.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.data.loader import fixed_windows, stream_chunks
from lmforge.data.shards import Tokens
from lmforge.distributed.env import SINGLE, DistInfo, all_sum


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token loss in nats; logits (B, T, V), targets (B, T)."""
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1))


@torch.no_grad()
def mean_loss(model: nn.Module, tokens: Tokens, *, block_size: int, batch_size: int,
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


@torch.no_grad()
def stream_loss(model: nn.Module, tokens: Tokens, *, block_size: int, lanes: int,
                max_chunks: int = 0, device: torch.device | str = "cpu",
                autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                split: str = "val", info: DistInfo = SINGLE) -> float:
    """Mean loss per token of a recurrent model reading `tokens` as `lanes` contiguous
    streams (all ranks together), block_size tokens per call, its state carried from zero at
    each lane's start; the whole split when max_chunks=0, otherwise the first max_chunks
    chunks of each lane. Each data-parallel rank reads its share of the lanes."""
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    state = None
    for x, y in stream_chunks(tokens, lanes=lanes, block_size=block_size, max_chunks=max_chunks,
                              rank=info.dp_rank, ranks=info.dp_size, split=split):
        x, y = x.to(device), y.to(device)
        with autocast():
            logits, state = model(x, state)
        total += cross_entropy(logits, y).double() * y.numel()
        count += y.numel()
    model.train(was_training)
    sums = all_sum(torch.stack([total, torch.tensor(float(count), dtype=torch.float64,
                                                    device=device)]), info)
    return (sums[0] / sums[1]).item()


def split_loss(model: nn.Module, tokens: Tokens, *, block_size: int, batch_size: int,
               batches: int = 0, recurrent: bool | None = None, **kwargs: Any) -> float:
    """Mean loss of any model on a split: `batches` global batches of batch_size x
    data-parallel ranks windows (Transformers) or streams of `batches` chunks (recurrent
    models); the whole split when batches=0. recurrent defaults to the model's own flag
    (pass it for a model under a wrapper that hides it)."""
    if recurrent is None:
        recurrent = getattr(model, "recurrent", False)
    ranks = kwargs["info"].dp_size if "info" in kwargs else 1
    if recurrent:
        return stream_loss(model, tokens, block_size=block_size, lanes=batch_size * ranks,
                           max_chunks=batches, **kwargs)
    return mean_loss(model, tokens, block_size=block_size, batch_size=batch_size,
                     max_windows=batches * batch_size * ranks, **kwargs)


@dataclass(frozen=True)
class Figures:
    """A split's loss (nats per token), perplexity and bits per byte."""

    loss: float
    perplexity: float
    bits_per_byte: float


def summarize(loss: float, *, tokens: int, bytes_: int) -> Figures:
    """The figures of a mean loss on a split of `tokens` tokens that encode `bytes_` bytes."""
    bits_per_byte = loss / math.log(2) * tokens / bytes_ if bytes_ else float("nan")
    return Figures(loss=loss, perplexity=math.exp(min(loss, 700.0)), bits_per_byte=bits_per_byte)
