"""Stopping a run on SIGTERM or SIGINT without losing its steps.

Schedulers preempt a job with SIGTERM and a grace period before SIGKILL; a user stops one
with Ctrl-C. While the training loop runs, the first such signal only raises a flag: the
trainer finishes the step it is in, saves a checkpoint and stops. A second signal means
"now": it raises KeyboardInterrupt, which ends the process at once (exit 130) without
saving; the partial checkpoint it may leave is cleaned up by the next `--resume`.

Under torchrun one signal often arrives twice within milliseconds: the terminal sends
SIGINT to every worker and torchrun forwards it as SIGTERM, or a scheduler signals every
process and torchrun forwards that too. So under torchrun a repeat within `repeat_after_s`
of the first counts as the same request.

Every rank must stop at the same step, or the others would wait forever in the next
collective: `stop_signal` all-reduces "a signal arrived here" across the ranks once per
step, so a signal that reached any one rank stops them all.
"""

from __future__ import annotations

import signal
import threading
import time
from types import FrameType, TracebackType
from typing import Any

import torch

from lmforge.distributed import env
from lmforge.distributed.env import DistInfo

SIGNALS = (signal.SIGTERM, signal.SIGINT)


def exit_code(signum: int) -> int:
    """The shell's convention for a process stopped by a signal (143 for SIGTERM, 130 for
    SIGINT): a scheduler or script sees an unfinished run, not a completed one."""
    return 128 + signum


class Preemption:
    """Context manager: catches SIGTERM and SIGINT while it is open and puts the previous
    handlers back when it closes. Outside the main thread (where Python cannot install
    handlers) it does nothing, and signals keep their usual effect."""

    def __init__(self, *, repeat_after_s: float | None = None) -> None:
        if repeat_after_s is None:
            repeat_after_s = 2.0 if env.launched_by_torchrun() else 0.0
        self.repeat_after_s = repeat_after_s
        self.received = 0  # the first signal's number; 0 while none has arrived
        self._first_at = 0.0
        self._previous: dict[int, Any] = {}  # the handlers to put back

    def __enter__(self) -> Preemption:
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        now = time.monotonic()
        if not self.received:
            # Only a flag: printing here could re-enter a write the main thread is in the
            # middle of; the training loop says what happens once the step is done.
            self.received, self._first_at = signum, now
            return
        if now - self._first_at < self.repeat_after_s:
            return  # the same request, delivered twice (see the module's docstring)
        raise KeyboardInterrupt

    def stop_signal(self, info: DistInfo, device: torch.device) -> int:
        """The number of a signal that reached any rank, 0 if none did: the same on every rank
        (a collective under torchrun, so every rank must call it at the same step)."""
        if not info.distributed:
            return self.received
        flag = torch.tensor([self.received], dtype=torch.int64, device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return int(flag.item())
