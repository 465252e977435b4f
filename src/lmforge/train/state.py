"""What the training loop keeps and returns: the counters every checkpoint saves, the clock
of one call of `fit`, and how that call ended."""

from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass
class Counters:
    """The trainer's own progress; saved in every checkpoint."""

    step: int = 0
    tokens: int = 0
    best_val: float = math.inf
    best_step: int = -1
    evals_without_improvement: int = 0
    nonfinite_in_a_row: int = 0  # steps skipped for a NaN/Inf loss or gradient norm, in a row
    skipped_steps: int = 0  # all the steps skipped so far


@dataclasses.dataclass(frozen=True)
class FitResult:
    """How a call of `fit` ended."""

    step: int
    stopped: str  # max_steps, max_minutes, early_stop, signal, or finished (nothing to do)
    signal: int  # the signal that stopped it (SIGTERM, SIGINT), 0 when none did
    best_val_loss: float  # or the objective's own criterion, where it has one (Evaluation)
    elapsed_s: float = 0.0
    tokens_per_s: float = math.nan
    mfu: float = math.nan


@dataclasses.dataclass
class Clock:
    """Time and throughput of one call of `fit`."""

    first_step: int
    first_tokens: int  # Counters.tokens when this call began
    start: float
    deadline: float
    step_time: float = 0.0  # in training steps only: tokens/s leaves out evaluation and saves
    startup: float | None = None
    last_recorded: int = -1  # the last step with a train record
    loss: float = math.nan  # of the last step
    norm: float = math.nan

    def tokens_per_s(self, tokens: int) -> float:
        """`tokens` is Counters.tokens now: the tokens trained, not steps times a nominal
        batch, which a warm-up of the batch or the sequence length makes smaller."""
        return (tokens - self.first_tokens) / max(self.step_time, 1e-9)
