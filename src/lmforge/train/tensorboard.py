"""TensorBoard event files for a run: its scalars and its sample texts.

Written into RUN/tb/ by rank 0 alone, so `tensorboard --logdir runs/` shows every run
under its directory name. The writer is `torch.utils.tensorboard.SummaryWriter`, created
on the first record (importing it takes about a second), and a run with
train.tensorboard=false, or a rank other than 0, writes nothing at all.

    train/loss  train/bpb  train/grad_norm  train/lr  train/tokens_per_s  train/mfu
    val/loss    val/bpb    val/perplexity
    samples     (text: the samples at the end of training)
    samples/eval  (text: the samples drawn at each evaluation)

The records are the ones metrics.jsonl holds, so TensorBoard and the run report show the
same numbers.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

# metrics.jsonl field → TensorBoard tag, per kind of record
TAGS = {
    "train": {"loss": "train/loss", "bpb": "train/bpb", "grad_norm": "train/grad_norm",
              "lr": "train/lr", "tokens_per_s": "train/tokens_per_s", "mfu": "train/mfu"},
    "eval": {"val_loss": "val/loss", "val_bpb": "val/bpb", "val_ppl": "val/perplexity"},
}


class TensorBoard:
    """Scalars and texts for one run; a no-op when disabled."""

    def __init__(self, log_dir: Path, *, enabled: bool, bpb_factor: float = math.nan) -> None:
        """log_dir: the run's RUN/tb/. bpb_factor: train loss (nats per token) times this is
        bits per byte, that is tokens / (bytes x ln 2) of the train split; NaN leaves
        train/bpb out."""
        self.log_dir = Path(log_dir)
        self.enabled = enabled
        self.bpb_factor = bpb_factor
        self.purge_step: int | None = None
        self._writer: Any = None

    def _get(self) -> Any:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: a resumed run redoes the steps after its checkpoint; TensorBoard
            # hides the first attempt's events from there on instead of showing both
            self._writer = SummaryWriter(str(self.log_dir), purge_step=self.purge_step,
                                         flush_secs=10)
        return self._writer

    def purge_after(self, step: int) -> None:
        """Forget (in TensorBoard's view) what an earlier attempt logged past `step`."""
        self.purge_step = step + 1

    def write(self, record: dict[str, Any]) -> None:
        """One metrics.jsonl record ({"kind": "train" | "eval", "step": ..., ...})."""
        tags = TAGS.get(record.get("kind", ""))
        if not self.enabled or tags is None:
            return
        values = dict(record)
        if record["kind"] == "train" and not math.isnan(self.bpb_factor):
            values["bpb"] = record["loss"] * self.bpb_factor
        writer = self._get()
        for key, tag in tags.items():
            if key in values:
                writer.add_scalar(tag, float(values[key]), record["step"])
        if record["kind"] == "eval":
            writer.flush()

    def samples(self, texts: list[str], *, step: int, tag: str = "samples") -> None:
        """Sample texts, one markdown block each (TensorBoard renders text as markdown)."""
        if not self.enabled or not texts:
            return
        shown = "\n\n".join(f"**sample {i + 1}**\n\n```\n{t}\n```" for i, t in enumerate(texts))
        self._get().add_text(tag, shown, step)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
