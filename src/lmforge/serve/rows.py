"""What the engine (engine.py) keeps of each request, and what it does with a step's rows as
a whole: samples one token for each, and drops a row from a recurrent model's state."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lmforge.errors import LmforgeError
from lmforge.generate import NONFINITE, draw, sample_next, sampling_probs
from lmforge.serve.requests import RequestHandle, SamplingParams

# where a request is
QUEUED, PREFILL, RUNNING, DONE = range(4)


class EngineRequest:
    """The engine's side of a request (touched by the stepping thread only)."""

    __slots__ = ("handle", "prompt", "max_tokens", "greedy", "key", "sampling", "logprobs",
                 "ends", "generator", "where", "done", "state", "row", "last", "produced")

    def __init__(self, handle: RequestHandle, prompt: list[int], params: SamplingParams,
                 generator: torch.Generator) -> None:
        self.handle = handle
        self.prompt = prompt
        self.max_tokens = params.max_tokens
        self.greedy = params.temperature == 0
        # what decides a sampled row's distribution: rows alike are filtered together
        self.key = None if self.greedy else (params.temperature, params.top_k, params.top_p)
        self.sampling: dict[str, Any] = dict(temperature=params.temperature, top_k=params.top_k,
                             top_p=params.top_p, generator=generator)
        self.logprobs = params.logprobs
        self.ends = not params.ignore_eos  # the end-of-text token ends it
        self.generator = generator
        self.where = QUEUED
        self.done = 0  # prompt tokens prefilled
        self.state: Any = None  # while prefilling: its one-row KVCache or recurrent state
        self.row = -1  # while running: its row of the batch
        self.last = 0  # the newest token, the next step's input
        self.produced = 0


def sample_first(request: EngineRequest, logits: Tensor) -> tuple[int, float | None]:
    """The first token, from the prompt's last logits (V,)."""
    row = logits[None]  # (1, V)
    token = int(row.argmax(dim=-1)[0]) if request.greedy else int(
        sample_next(row, **request.sampling)[0])
    logprob = (float(logits.float().log_softmax(dim=-1)[token]) if request.logprobs
               else None)
    return token, logprob


def sample_rows(logits: Tensor, rows: list[EngineRequest]
                ) -> tuple[list[int], dict[int, Exception], list[float] | None]:
    """One token for each row of logits (n, V): greedy rows by one argmax for all; sampled
    rows with the same temperature, top-k and top-p filtered together (every step of the
    filter works row by row, as generate.sample_next does for one row), then each drawn
    with a uniform number of its row's own generator. The tokens, the rows whose
    probabilities were not finite (and why), and each token's log-probability where a
    row asked for them."""
    n = len(rows)
    chosen: list[int] = logits.argmax(dim=-1).tolist()  # greedy rows: one argmax for all
    failed: dict[int, Exception] = {}
    groups: dict[tuple[float, int, float], list[int]] = {}  # rows sampled alike
    for i, request in enumerate(rows):
        if request.key is not None:
            groups.setdefault(request.key, []).append(i)
    for (temperature, top_k, top_p), index in groups.items():
        # each row's probabilities as sample_next computes them for that row alone, then
        # a draw with the row's own generator
        probs = sampling_probs(logits if len(index) == n else logits[index],
                               temperature=temperature, top_k=top_k, top_p=top_p)
        finite = torch.isfinite(probs).all(dim=-1)  # (k,)
        uniforms = torch.cat([torch.rand(1, generator=rows[i].generator, device=logits.device)
                              for i in index])  # (k,): one number of each row's own
        drawn = draw(probs.nan_to_num(), uniforms).tolist()
        for j, (i, ok) in enumerate(zip(index, finite.tolist(), strict=True)):
            if ok:
                chosen[i] = drawn[j]
            else:  # this row only
                failed[i] = LmforgeError(NONFINITE)
    logprobs: list[float] | None = None
    if any(r.logprobs for r in rows):
        picked = torch.tensor(chosen, device=logits.device)[:, None]
        logprobs = logits.float().log_softmax(dim=-1).gather(1, picked)[:, 0].tolist()
    return chosen, failed, logprobs


def add_row(state: Any, row: Any) -> Any:
    """A recurrent state (L, B, C), or an LSTM's pair of them, with a one-row state (L, 1, C)
    appended as row B; None (no rows yet) becomes that row."""
    if state is None:
        return row
    if isinstance(row, tuple):
        return tuple(torch.cat((a, b), dim=1) for a, b in zip(state, row, strict=True))
    return torch.cat((state, row), dim=1)


def drop_row(state: Any, i: int, last: int) -> Any:
    """A recurrent state (L, B, C), or an LSTM's pair of them, without row i: the last row
    moves into its place."""
    parts = state if isinstance(state, tuple) else (state,)
    kept = []
    for part in parts:
        if i != last:
            part[:, i] = part[:, last]
        kept.append(part[:, :last].contiguous())
    return tuple(kept) if isinstance(state, tuple) else kept[0]
