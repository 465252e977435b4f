"""How many CPU threads a decoding step runs on (the serving engine's and generate_tokens')."""

from __future__ import annotations

import torch

SERIAL_WORK = 4  # rows plus prompt tokens of a step that one CPU thread computes best


class StepThreads:
    """All of torch's threads (`most`) for a step with much to compute, one for a few rows.

    A few rows of one token each are bound by reading the weights from memory, which a
    second thread does not speed up, while its start and its spinning afterwards take the
    core that the server's event loop needs (one stream of the default model: ~400 tokens/s
    through the server on one thread, ~260 on two); many rows, or prompt tokens, are
    arithmetic, which threads divide (16 streams: ~1.5x on two). torch's setting is the
    process's, so the engine and generate_tokens put `most` back when they stop.
    """

    def __init__(self, most: int) -> None:
        self.most = most
        self.now = most

    def worth(self, work: int) -> int:
        """The threads a step of `work` (decoding rows plus prompt tokens) is worth."""
        return 1 if work <= SERIAL_WORK else self.most

    def use(self, threads: int) -> None:
        if threads != self.now:  # a change costs ~0.1 ms: only when the regime does
            torch.set_num_threads(threads)
            self.now = threads
