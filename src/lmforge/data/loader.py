"""Batches of token windows from a prepared split.

Training draws random windows, as nanoGPT's `get_batch` does, but from a generator
seeded by (seed, rank, batch number) instead of a global one: the loader's whole state is
the number of batches it has handed out, so a resumed run sees exactly the batches the
interrupted one would have seen. Validation uses fixed windows, so every evaluation of a
run measures the same tokens.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from lmforge.errors import DataError


def _check_length(tokens: np.ndarray, block_size: int, split: str) -> None:
    if len(tokens) < block_size + 1:
        raise DataError(f"the {split} split has {len(tokens)} tokens, fewer than model.block_size+1 "
                        f"= {block_size + 1}; lower --model.block_size or prepare more data")


def _windows(tokens: np.ndarray, starts: np.ndarray, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    idx = starts[:, None] + np.arange(block_size + 1)  # (B, T+1)
    chunk = torch.from_numpy(tokens[idx].astype(np.int64))
    return chunk[:, :-1], chunk[:, 1:]  # inputs and next-token targets, (B, T) each


class RandomWindows:
    """Random (inputs, targets) windows from one split; resumable through state_dict()."""

    def __init__(self, tokens: np.ndarray, *, batch_size: int, block_size: int, seed: int,
                 rank: int = 0, split: str = "train") -> None:
        _check_length(tokens, block_size, split)
        self.tokens = tokens
        self.batch_size = batch_size
        self.block_size = block_size
        self.seed = seed
        self.rank = rank
        self.batches = 0

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.rank, self.batches])
        starts = rng.integers(0, len(self.tokens) - self.block_size, size=self.batch_size)
        self.batches += 1
        return _windows(self.tokens, starts, self.block_size)

    def state_dict(self) -> dict[str, Any]:
        return {"batches": self.batches, "seed": self.seed, "rank": self.rank}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.batches = int(state["batches"])
        self.seed = int(state["seed"])
        self.rank = int(state["rank"])


def fixed_windows(tokens: np.ndarray, *, block_size: int, batch_size: int, max_windows: int = 0,
                  split: str = "val") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of evaluation windows.

    `max_windows=0` covers the whole split with back-to-back windows; otherwise that many
    windows spread evenly across it, the same ones every time.
    """
    _check_length(tokens, block_size, split)
    last_start = len(tokens) - block_size - 1
    if max_windows <= 0:
        starts = np.arange(0, last_start + 1, block_size)
    else:
        starts = np.linspace(0, last_start, num=max_windows).astype(np.int64)
    for i in range(0, len(starts), batch_size):
        yield _windows(tokens, starts[i:i + batch_size], block_size)


def count_windows(tokens: np.ndarray, *, block_size: int, max_windows: int = 0) -> int:
    if max_windows > 0:
        return max_windows
    return (len(tokens) - block_size - 1) // block_size + 1
