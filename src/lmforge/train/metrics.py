"""What a run tells the world: its progress, metrics.jsonl and a loss plot."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import IO, Any

from lmforge.console import Progress, log


class MetricsLog:
    """Append-only JSON lines, one record per logged step or evaluation; each record also
    goes to `trackers` (a train.trackers.Trackers) when one is given."""

    def __init__(self, path: Path, *, trackers: Any = None) -> None:
        self.path = Path(path)
        self.trackers = trackers

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.trackers is not None:
            self.trackers.write(record)

    def read(self) -> list[dict[str, Any]]:
        """The records; a line that is not one (cut short by a crash or a full disk, or
        damaged) is left out, and said so."""
        if not self.path.is_file():
            return []
        records, damaged = [], []
        lines = self.path.read_text(encoding="utf-8", errors="replace").splitlines()
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except (ValueError, RecursionError):
                record = None
            if isinstance(record, dict) and isinstance(record.get("step"), int):
                records.append(record)
            else:
                damaged.append(number)
        if damaged:
            cut = damaged == [len(lines)]
            log(f"note: {self.path}: " + ("the last line was cut short (a crash or a full "
                                           "disk?) and is left out" if cut else
                                           f"{len(damaged)} damaged line(s) left out (line "
                                           f"{damaged[0]} first)"))
        return records

    def truncate_after(self, step: int) -> None:
        """Forget records past `step`: a resumed run redoes those steps."""
        kept = [r for r in self.read() if r["step"] <= step]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        tmp.replace(self.path)


class TrainProgress:
    """A bar on a terminal that moves every step, whose end (and so its ETA) is where
    train.max_minutes will stop the run when that comes before train.max_steps; without a
    terminal, or with train.progress=false, a line every train.log_every steps instead."""

    def __init__(self, *, max_steps: int, first_step: int, max_minutes: float, log_every: int,
                 enabled: bool, stream: IO[str] | None = None) -> None:
        self.max_steps, self.first_step, self.log_every = max_steps, first_step, log_every
        self.max_s = max_minutes * 60 if max_minutes > 0 else math.inf
        bar = Progress("train", total=max_steps, initial=first_step, unit="step",
                       enabled=enabled, every_s=math.inf, stream=stream)
        self.bar = bar if bar.bar is not None else None

    def expected_last_step(self, step: int, elapsed: float) -> int:
        """Where the run will stop: max_steps, or earlier where the time limit comes first
        at the pace so far (evaluations and saves included)."""
        if not math.isfinite(self.max_s) or step <= self.first_step:
            return self.max_steps
        per_step = elapsed / (step - self.first_step)
        left = max(0.0, self.max_s - elapsed)
        return min(self.max_steps, step + math.ceil(left / per_step))

    def update(self, step: int, *, loss: float, elapsed: float, tokens_per_s: float,
               lr: float, mfu: float = math.nan) -> None:
        util = f"{mfu:.1%}" if math.isfinite(mfu) else "–"
        if self.bar is not None:
            self.bar.set_total(self.expected_last_step(step, elapsed))
            self.bar.update(step, f"loss {loss:.4f}, {tokens_per_s:,.0f} tok/s, mfu {util}, "
                                  f"lr {lr:.2e}")
        elif step % self.log_every == 0 or step == self.max_steps:
            log(f"step {step}/{self.max_steps}  loss {loss:.4f}  {tokens_per_s:,.0f} tok/s  "
                f"mfu {util}  lr {lr:.2e}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def plot_losses(records: list[dict[str, Any]], out: Path, *, title: str) -> None:
    """Train and validation loss against step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["step"], r["loss"]) for r in records if r.get("kind") == "train"]
    val = [(r["step"], r["val_loss"]) for r in records if r.get("kind") == "eval"]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    if train:
        ax.plot(*zip(*train, strict=True), label="train", linewidth=1.0, alpha=0.8)
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="validation", linewidth=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per token)")
    ax.set_title(title.replace("$", r"\$"))  # a path is literal text, never mathtext
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
