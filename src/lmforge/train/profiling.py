"""`--train.profile=N`: a torch.profiler trace of N training steps, and the operators that
cost the most.

The first WARMUP steps are left out (allocator, thread pools, compilation), then N steps
are recorded. Each rank writes trace-rankR.json into the run's profile directory
(RUN/profile/), which opens in Perfetto (ui.perfetto.dev) or chrome://tracing; rank 0
writes top_ops.txt there, the top operators by their own time, and prints it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

WARMUP = 5
TOP_OPS = 25


class StepProfiler:
    """Call step() after every training step; a no-op unless steps > 0."""

    def __init__(self, directory: Path, *, steps: int, rank: int, device: torch.device,
                 log: Callable[[str], None]) -> None:
        self.steps, self.rank, self.log = steps, rank, log
        self.dir = Path(directory)
        self.done = steps <= 0
        self._prof: Any = None
        if self.done:
            return
        activities = [torch.profiler.ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self.sort_by = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        self._prof = torch.profiler.profile(
            activities=activities, record_shapes=True,
            schedule=torch.profiler.schedule(wait=WARMUP - 1, warmup=1, active=steps, repeat=1),
            on_trace_ready=self._write)
        self._prof.start()

    def _write(self, prof: Any) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        trace = self.dir / f"trace-rank{self.rank}.json"
        prof.export_chrome_trace(str(trace))
        self.done = True
        if self.rank == 0:
            table = prof.key_averages().table(sort_by=self.sort_by, row_limit=TOP_OPS)
            (self.dir / "top_ops.txt").write_text(table + "\n")
            self.log(f"profile of {self.steps} steps: {trace} (open in ui.perfetto.dev or "
                     f"chrome://tracing); top operators in {self.dir / 'top_ops.txt'}:\n{table}")

    def step(self) -> None:
        if self._prof is not None and not self.done:
            self._prof.step()
            if self.done:
                self._prof.stop()
                self._prof = None

    def close(self) -> None:
        """At the end of training: say so if the run was too short to profile."""
        if self._prof is None:
            return
        self._prof.stop()
        self._prof = None
        if not self.done and self.rank == 0:
            self.log(f"no profile written: the run ended before {WARMUP} warm-up and "
                     f"{self.steps} profiled steps; raise train.max_steps")
