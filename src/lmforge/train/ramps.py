"""Warm-ups of the batch and of the sequence length: the first steps train on fewer, shorter
windows (the speedrun literature's batch-size and sequence-length warm-up). Early on a model
learns as much from short contexts and small batches as from long ones, at a fraction of
the cost per step; the ramp reaches the configured size after `steps` steps.

The loader still reads full windows in the same order; a step of the warm-up trains on the
first rows and the first positions of them. So the data order, and an exact resume, do not
depend on the warm-up, and every data-parallel rank shrinks its share alike."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lmforge.config import Config

LENGTH_MULTIPLE = 8  # sequence lengths are rounded up to a multiple of this (kernels like it)


@dataclass(frozen=True)
class Ramp:
    """Linear from `start` at step 0 to `full` at step `steps` (0: `full` from the start),
    rounded up to a multiple of `multiple`."""

    start: int
    full: int
    steps: int
    multiple: int = 1

    def at(self, step: int) -> int:
        if self.steps <= 0 or step >= self.steps:
            return self.full
        size = self.start + (self.full - self.start) * step / self.steps
        return min(self.full, max(1, math.ceil(size / self.multiple) * self.multiple))


@dataclass(frozen=True)
class Warmup:
    """The batch's and the sequence length's ramps, applied to one micro-batch."""

    batch: Ramp
    length: Ramp

    @classmethod
    def of(cls, *, batch_size: int, block_size: int, batch_steps: int, batch_start: int,
           length_steps: int, length_start: int) -> Warmup:
        """From the config: a start of 0 is a quarter of the full size."""
        return cls(Ramp(batch_start or max(1, batch_size // 4), batch_size, batch_steps),
                   Ramp(length_start or max(1, block_size // 4), block_size, length_steps,
                        multiple=LENGTH_MULTIPLE))

    @classmethod
    def from_config(cls, cfg: Config) -> Warmup:
        t = cfg.train
        return cls.of(batch_size=t.batch_size, block_size=cfg.model.block_size,
                      batch_steps=t.batch_warmup_steps, batch_start=t.batch_warmup_start,
                      length_steps=t.seq_warmup_steps, length_start=t.seq_warmup_start)

    @property
    def active(self) -> bool:
        return self.batch.steps > 0 or self.length.steps > 0

    def cut(self, x: torch.Tensor, y: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The rows and positions of (inputs, targets) that step `step` trains on."""
        rows, length = self.batch.at(step), self.length.at(step)
        if rows == x.shape[0] and length == x.shape[1]:
            return x, y
        return x[:rows, :length].contiguous(), y[:rows, :length].contiguous()


def steps_for_tokens(warmup: Warmup, tokens: int, *, grad_accum: int = 1) -> int:
    """The fewest steps that train at least `tokens` tokens (one rank's, `grad_accum`
    micro-batches a step): `lmforge compare --tokens` gives every recipe the same budget,
    warm-up or not."""
    step = seen = 0
    ramping = max(warmup.batch.steps, warmup.length.steps)
    while seen < tokens and step < ramping:
        seen += warmup.batch.at(step) * warmup.length.at(step) * grad_accum
        step += 1
    full = warmup.batch.full * warmup.length.full * grad_accum
    return max(1, step + max(0, math.ceil((tokens - seen) / full)))
