"""Batches of token windows from a prepared split.

Transformers train on random windows, as nanoGPT's `get_batch` draws them, but from a
generator seeded by (seed, step) instead of a global one: the loader's whole state is the
number of steps it has served, so a resumed run sees exactly the batches the interrupted
one would have seen, on any number of ranks. Validation uses fixed windows, so every
evaluation of a run measures the same tokens.

Recurrent models train on contiguous streams instead (`Streams`, truncated backpropagation
through time): each batch row reads its own stretch of the split chunk after chunk, so the
hidden state the model carries from one step to the next belongs to the text that follows.
Their evaluation streams too (`stream_chunks`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from lmforge.data.shards import Tokens
from lmforge.errors import DataError


def _check_length(tokens: Tokens, block_size: int, split: str) -> None:
    if len(tokens) < block_size + 1:
        raise DataError(f"the {split} split has {len(tokens)} tokens, fewer than model.block_size+1 "
                        f"= {block_size + 1}; lower --model.block_size or prepare more data")


def _windows(tokens: Tokens, starts: np.ndarray, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    idx = starts[:, None] + np.arange(block_size + 1)  # (B, T+1)
    chunk = torch.from_numpy(tokens[idx].astype(np.int64))
    return chunk[:, :-1], chunk[:, 1:]  # inputs and next-token targets, (B, T) each


class RandomWindows:
    """Random (inputs, targets) windows from one split; resumable through state_dict().

    Each optimizer step draws its whole global batch (batch_size x grad_accum x dp_size
    windows) from a generator seeded by (seed, step); data-parallel rank r takes rows
    [(a*dp_size + r)*batch_size, +batch_size) for its micro-batch a. So the windows of a
    step do not depend on how many ranks share them: a run resumed on another number of
    processes, with the same global batch, neither skips nor repeats a window.
    """

    def __init__(self, tokens: Tokens, *, batch_size: int, block_size: int, seed: int,
                 grad_accum: int = 1, dp_rank: int = 0, dp_size: int = 1,
                 split: str = "train") -> None:
        _check_length(tokens, block_size, split)
        self.tokens = tokens
        self.batch_size = batch_size
        self.block_size = block_size
        self.seed = seed
        self.grad_accum = grad_accum
        self.dp_rank = dp_rank
        self.dp_size = dp_size
        self.step = 0  # optimizer steps whose batches were handed out in full
        self.micro = 0  # micro-batches handed out of the current step
        self._starts: np.ndarray | None = None

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.grad_accum * self.dp_size

    def step_starts(self, step: int) -> np.ndarray:
        """Start offsets of every window of optimizer step `step`, all ranks together."""
        rng = np.random.default_rng([self.seed, step])
        return rng.integers(0, len(self.tokens) - self.block_size, size=self.global_batch)

    def next_starts(self) -> np.ndarray:
        """This rank's next micro-batch of window starts."""
        if self.micro == 0 or self._starts is None:
            self._starts = self.step_starts(self.step)
        row = (self.micro * self.dp_size + self.dp_rank) * self.batch_size
        starts = self._starts[row:row + self.batch_size]
        self.micro += 1
        if self.micro == self.grad_accum:
            self.step, self.micro = self.step + 1, 0
        return starts

    def windows(self, starts: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return _windows(self.tokens, starts, self.block_size)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.windows(self.next_starts())

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "micro": self.micro, "seed": self.seed,
                "global_batch": self.global_batch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "step" not in state:
            raise DataError("the checkpoint's data-loader state is from an older lmforge that "
                            "drew batches differently; start a new run")
        if int(state["global_batch"]) != self.global_batch:
            raise DataError(
                f"the checkpoint was trained with a global batch of {state['global_batch']} "
                f"windows, this run has {self.global_batch} (train.batch_size x "
                "train.grad_accum x data-parallel ranks); change batch_size or grad_accum so "
                "they match, or the data order cannot continue")
        self.step, self.micro = int(state["step"]), int(state["micro"])
        self.seed = int(state["seed"])
        self._starts = None


class Streams:
    """Contiguous streams through one split for truncated BPTT; resumable through state_dict().

    The split is cut into global_batch (batch_size x grad_accum x dp_size) equal contiguous
    lanes of `chunks` x block_size tokens each (the tail that does not fill a chunk in every
    lane, fewer than global_batch x block_size tokens, is not trained on). Optimizer step s
    reads chunk s mod chunks of every lane: lane i's window starts at
    i x lane_tokens + (s mod chunks) x block_size. Rows are laid out as RandomWindows lays
    them out: data-parallel rank r takes lanes [(a*dp_size + r)*batch_size, +batch_size)
    for its micro-batch a, so the lanes and their order do not depend on how many ranks
    share them, and a run resumed on another number of processes with the same global batch
    continues every lane exactly.

    All lanes move in step, so they reach their ends together; each then wraps to its own
    start and the caller must reset the hidden state of the rows where `restarts(starts)`
    is True (the first step of every pass, step 0 included). Documents separated by an
    end-of-text token inside a lane need no reset: the model learns what the token means.
    The position is the step counter alone, so state_dict() is the whole loader state (the
    hidden state the caller carries is its own to save).
    """

    def __init__(self, tokens: Tokens, *, batch_size: int, block_size: int, seed: int = 0,
                 grad_accum: int = 1, dp_rank: int = 0, dp_size: int = 1,
                 split: str = "train") -> None:
        self.tokens = tokens
        self.batch_size = batch_size
        self.block_size = block_size
        self.seed = seed  # no randomness here; kept so that both loaders are built alike
        self.grad_accum = grad_accum
        self.dp_rank = dp_rank
        self.dp_size = dp_size
        # the +1: the last chunk of the last lane needs one more token for its targets
        self.chunks = (len(tokens) - 1) // (self.global_batch * block_size)
        if self.chunks < 1:
            raise DataError(
                f"the {split} split has {len(tokens)} tokens, fewer than the "
                f"{self.global_batch} streams x model.block_size={block_size} (+1) that one step "
                "reads; lower train.batch_size or model.block_size, or prepare more data")
        self.lane_tokens = self.chunks * block_size
        self.step = 0
        self.micro = 0

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.grad_accum * self.dp_size

    def step_starts(self, step: int) -> np.ndarray:
        """Start offsets of every lane's window at optimizer step `step`, all ranks together."""
        lanes = np.arange(self.global_batch, dtype=np.int64) * self.lane_tokens
        return lanes + (step % self.chunks) * self.block_size

    def next_starts(self) -> np.ndarray:
        """This rank's next micro-batch of window starts, one per lane it reads."""
        row = (self.micro * self.dp_size + self.dp_rank) * self.batch_size
        starts = self.step_starts(self.step)[row:row + self.batch_size]
        self.micro += 1
        if self.micro == self.grad_accum:
            self.step, self.micro = self.step + 1, 0
        return starts

    def restarts(self, starts: np.ndarray) -> np.ndarray:
        """Which rows of a batch (by their window starts) begin their lane again: their
        hidden state must be reset to zero before the batch."""
        return starts % self.lane_tokens == 0

    def windows(self, starts: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return _windows(self.tokens, starts, self.block_size)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.windows(self.next_starts())

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "streams", "step": self.step, "micro": self.micro,
                "global_batch": self.global_batch, "block_size": self.block_size,
                "chunks": self.chunks}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != "streams":
            raise DataError("the checkpoint's data-loader state is not from contiguous streams "
                            "(a Transformer run, or an older lmforge); start a new run")
        if int(state["global_batch"]) != self.global_batch:
            raise DataError(
                f"the checkpoint streamed {state['global_batch']} lanes in parallel, this run "
                f"has {self.global_batch} (train.batch_size x train.grad_accum x data-parallel "
                "ranks); change batch_size or grad_accum so they match, or the streams cannot "
                "continue")
        if (int(state["chunks"]), int(state["block_size"])) != (self.chunks, self.block_size):
            raise DataError("the checkpoint streamed a train split of another length or another "
                            "model.block_size; resume on the data it was trained on")
        self.step, self.micro = int(state["step"]), int(state["micro"])


def stream_chunks(tokens: Tokens, *, lanes: int, block_size: int, max_chunks: int = 0,
                  rank: int = 0, ranks: int = 1, split: str = "val",
                  ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Evaluation as streams: the split cut into `lanes` equal contiguous lanes (fewer than
    `lanes` tokens at the end are left out), read block_size tokens at a time, (inputs,
    targets) of (lanes / ranks, <= block_size) each; the caller carries the hidden state
    from one chunk to the next, from zero at the start of each lane. The whole lanes when
    max_chunks=0, otherwise their first max_chunks chunks: lanes spread over the split, the
    same tokens every time. Rank r of `ranks` reads lanes [r*lanes/ranks, +lanes/ranks);
    every rank yields the same number of chunks."""
    if lanes % ranks:
        raise ValueError(f"{lanes} lanes do not split over {ranks} ranks")
    lane_tokens = (len(tokens) - 1) // lanes
    if lane_tokens < 1:
        raise DataError(f"the {split} split has {len(tokens)} tokens, too few for {lanes} "
                        "evaluation streams; lower the evaluation batch size")
    if max_chunks > 0:
        lane_tokens = min(lane_tokens, max_chunks * block_size)
    per = lanes // ranks
    begins = (np.arange(rank * per, (rank + 1) * per, dtype=np.int64)
              * ((len(tokens) - 1) // lanes))
    for offset in range(0, lane_tokens, block_size):
        t = min(block_size, lane_tokens - offset)
        idx = begins[:, None] + offset + np.arange(t + 1)  # (lanes/ranks, t+1)
        chunk = torch.from_numpy(tokens[idx].astype(np.int64))
        yield chunk[:, :-1], chunk[:, 1:]


def eval_starts(tokens: Tokens, *, block_size: int, max_windows: int = 0,
                split: str = "val") -> np.ndarray:
    """Start offsets of the evaluation windows: back to back over the whole split when
    max_windows=0, otherwise that many spread evenly across it, the same ones every time."""
    _check_length(tokens, block_size, split)
    last_start = len(tokens) - block_size - 1
    if max_windows <= 0:
        return np.arange(0, last_start + 1, block_size)
    return np.linspace(0, last_start, num=max_windows).astype(np.int64)


def fixed_windows(tokens: Tokens, *, block_size: int, batch_size: int, max_windows: int = 0,
                  split: str = "val", rank: int = 0, ranks: int = 1,
                  ) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
    """Batches of evaluation windows: (inputs, targets, how many rows count).

    With several ranks, rank r takes every ranks-th window from r on; every rank yields the
    same number of batches (a sharded model's forward is a collective), so a rank short of
    windows pads its last batch with repeats that do not count.
    """
    starts = eval_starts(tokens, block_size=block_size, max_windows=max_windows, split=split)
    mine = starts[rank::ranks]
    per_rank = -(-len(starts) // ranks)  # ceil
    batches = -(-per_rank // batch_size)
    for i in range(batches):
        chunk = mine[i * batch_size:(i + 1) * batch_size]
        want = min(batch_size, per_rank - i * batch_size)
        real = len(chunk)
        if real < want:
            pad = mine[-1:] if len(mine) else starts[:1]
            chunk = np.concatenate([chunk, np.repeat(pad, want - real)])
        yield (*_windows(tokens, chunk, block_size), real)


def count_windows(tokens: Tokens, *, block_size: int, max_windows: int = 0) -> int:
    if max_windows > 0:
        return max_windows
    return (len(tokens) - block_size - 1) // block_size + 1
