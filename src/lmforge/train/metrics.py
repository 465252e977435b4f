"""What a run tells the world: console lines, a progress bar, metrics.jsonl and a loss plot."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm


def log(message: str) -> None:
    """One line for the user, on stderr so that stdout stays clean for samples and --json."""
    tqdm.write(message, file=sys.stderr)


class MetricsLog:
    """Append-only JSON lines, one record per logged step or evaluation; each record also
    goes to `tensorboard` (a train.tensorboard.TensorBoard) when one is given."""

    def __init__(self, path: Path, *, tensorboard: Any = None) -> None:
        self.path = Path(path)
        self.tensorboard = tensorboard

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.tensorboard is not None:
            self.tensorboard.write(record)

    def read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def truncate_after(self, step: int) -> None:
        """Forget records past `step`: a resumed run redoes those steps."""
        kept = [r for r in self.read() if r["step"] <= step]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        tmp.replace(self.path)


class Progress:
    """A tqdm bar on a terminal; plain periodic lines elsewhere (CI logs, pipes)."""

    def __init__(self, *, total: int, initial: int, enabled: bool, every: int,
                 quiet: bool = False) -> None:
        self.bar = None
        self.every = every
        self.quiet = quiet  # ranks other than 0 say nothing
        if enabled and sys.stderr.isatty():
            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True,
                            file=sys.stderr)
        self.total = total

    def update(self, step: int, *, loss: float, tokens_per_s: float, lr: float,
               mfu: float = math.nan) -> None:
        util = f"{mfu:.1%}" if math.isfinite(mfu) else "–"
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens_per_s:,.0f}", mfu=util,
                                 lr=f"{lr:.2e}", refresh=False)
        elif not self.quiet and (step % self.every == 0 or step == self.total):
            log(f"step {step}/{self.total}  loss {loss:.4f}  {tokens_per_s:,.0f} tok/s  "
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
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
