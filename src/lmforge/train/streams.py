"""The hidden state a recurrent model carries from one training step to the next.

Recurrent models train by truncated backpropagation through time: the loader reads
contiguous streams (data/loader.py: Streams), and each batch row's hidden state at the end
of a step is where the same row starts the next one, detached so that the gradient stops
at the chunk boundary, and zeroed where a stream starts again. A rank keeps one state per
micro-batch it reads in a step. Every stream's state is saved with the checkpoint, in the
loader's lane order rather than rank order, so a run resumed on another number of ranks
hands each stream its own state.
"""

from __future__ import annotations

import numpy as np
import torch

from lmforge.data.loader import Streams
from lmforge.distributed import env
from lmforge.distributed.env import DistInfo
from lmforge.models.rnn import RecurrentLM, State


def _parts(state: State) -> tuple[torch.Tensor, ...]:
    return state if isinstance(state, tuple) else (state,)


class StreamStates:
    """This rank's streams' hidden states, one per micro-batch of a step."""

    def __init__(self, model: RecurrentLM, loader: Streams, *, device: torch.device,
                 info: DistInfo) -> None:
        self.model, self.loader, self.device, self.info = model, loader, device, info
        self.states: list[State | None] = [None] * loader.grad_accum

    def _zero(self) -> State:
        return self.model.new_state(self.loader.batch_size, device=self.device)

    def incoming(self, micro: int, starts: np.ndarray) -> State:
        """The state to feed micro-batch `micro`: the one its streams ended the previous
        step with, zero in the rows that start their stream again."""
        state = self.states[micro]
        if state is None:
            return self._zero()
        restart = self.loader.restarts(starts)
        if restart.any():
            reset = self.model.reset_state(state, torch.from_numpy(restart).to(self.device))
            assert reset is not None
            state = reset
        return state

    def keep(self, micro: int, state: State) -> None:
        """Where micro-batch `micro`'s streams continue next step, cut from this step's graph."""
        self.states[micro] = RecurrentLM.detach_state(state)

    def drop_nonfinite(self) -> None:
        """A non-finite hidden state would poison every later step of its streams: those
        streams start again from zero."""
        self.states = [s if s is None or all(bool(torch.isfinite(p).all()) for p in _parts(s))
                       else None for s in self.states]

    def gather(self) -> list[torch.Tensor]:
        """Every stream's hidden state, all ranks together in the loader's lane order
        ((a*dp_size + r)*batch_size + row), on the CPU: [h] or [h, c], (L, global_batch, C)
        each."""
        mine = [[p.detach().cpu() for p in _parts(self._zero() if s is None else s)]
                for s in self.states]
        every = env.gather_objects((self.info.dp_rank, mine), self.info)
        by_dp = dict(every)  # ranks of one tensor-parallel group hold the same state
        order = [by_dp[r][a] for a in range(len(self.states)) for r in range(self.info.dp_size)]
        return [torch.cat(parts, dim=1) for parts in zip(*order, strict=True)]

    def scatter(self, saved: list[torch.Tensor]) -> None:
        """This rank's streams' hidden states, from every stream's (see gather)."""
        batch, dp = self.loader.batch_size, self.info.dp_size
        for a in range(len(self.states)):
            row = (a * dp + self.info.dp_rank) * batch
            # as saved, dtype included (bf16 autocast may have made it bf16)
            parts = [p[:, row:row + batch].to(self.device) for p in saved]
            self.states[a] = (parts[0], parts[1]) if len(parts) == 2 else parts[0]
