"""What a run trains its model to do: the data each micro-batch reads, the loss on it, and
how the model is evaluated. The loop (train/trainer.py) is the same for every objective:
steps, gradient accumulation and clipping, checkpoints, resume, early stopping, logging
and DDP do not know which one they run.

`LanguageModeling` is next-token prediction on a prepared dataset's shards: random windows
for Transformers, contiguous streams with their hidden state carried from step to step for
recurrent models (truncated BPTT). A task (lmforge.tasks: classification, tagging,
instruction tuning) is another Objective: its own examples, head or loss mask, and metrics,
plugged into the same loop; never a second loop.

An objective's data position and any state it carries between steps are part of every
checkpoint (`state_dict`, `extra_state`), so a resumed run reads exactly the batches the
uninterrupted one would have.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmforge.data import shards
from lmforge.data.loader import RandomWindows, Streams
from lmforge.distributed.env import DistInfo
from lmforge.evaluate import cross_entropy, split_loss, summarize
from lmforge.models import LanguageModel
from lmforge.models.rnn import RecurrentLM
from lmforge.train.metrics import MetricsLog
from lmforge.train.ramps import Warmup
from lmforge.train.streams import StreamStates


@dataclass(frozen=True)
class Evaluation:
    """One evaluation: the validation loss (what early stopping and the best checkpoint
    follow: lower is better), the figures the eval record carries besides it, and how the
    log line shows them."""

    loss: float
    figures: dict[str, float] = field(default_factory=dict)
    shown: str = ""
    # What the best checkpoint and early stopping follow instead of the loss, lower is
    # better, and its name in the log; None: the loss. A classifier whose decision
    # thresholds are tuned afterwards is better judged by how it ranks than by its loss.
    criterion: float | None = None
    criterion_name: str = "val loss"

    @property
    def rank(self) -> float:
        return self.loss if self.criterion is None else self.criterion


class Objective(ABC):
    """The interface the loop trains through."""

    global_batch: int  # sequences (or examples) per optimizer step, all ranks together
    tokens_per_step: int  # what tokens/s counts per optimizer step

    @abstractmethod
    def micro_loss(self, model: nn.Module, micro: int) -> tuple[torch.Tensor, int]:
        """Forward one micro-batch (of this rank's share of the step) through `model`, under
        the caller's autocast and gradient-sync contexts: its loss and its token count."""

    @abstractmethod
    def evaluate(self, model: nn.Module) -> Evaluation:
        """The model on the validation data, the same examples whatever the number of ranks."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """The data position, for the checkpoint."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def extra_state(self) -> dict[str, Any]:
        """State carried from step to step besides the data position (all ranks call it)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        del state

    def after_nonfinite(self) -> None:  # noqa: B027 (a hook: most objectives carry nothing)
        """A step's update was skipped for a NaN or Inf: drop what would carry it on."""

    def announce(self) -> list[str]:
        """Lines that say how the data is read, for the start of a run."""
        return []


class LanguageModeling(Objective):
    """Next-token prediction on the prepared dataset at `data_dir`."""

    def __init__(self, data_dir: Path, manifest: dict[str, Any], *, model: LanguageModel,
                 batch_size: int, block_size: int, seed: int, grad_accum: int,
                 eval_batch_size: int, eval_batches: int, info: DistInfo,
                 device: torch.device, autocast: Callable[[], Any],
                 samples_log: MetricsLog | None = None, warmup: Warmup | None = None) -> None:
        self.recurrent = isinstance(model, RecurrentLM)
        loader = Streams if self.recurrent else RandomWindows
        self.train_data = loader(shards.open_split(data_dir, "train"), batch_size=batch_size,
                                 block_size=block_size, seed=seed, grad_accum=grad_accum,
                                 dp_rank=info.dp_rank, dp_size=info.dp_size)
        self.streams = (StreamStates(model, self.train_data, device=device, info=info)
                        if isinstance(model, RecurrentLM) and isinstance(self.train_data, Streams)
                        else None)
        self.val_tokens = shards.open_split(data_dir, "val")
        self.val_split = manifest["splits"]["val"]
        self.block_size, self.device, self.info = block_size, device, info
        self.eval_batch_size, self.eval_batches = eval_batch_size, eval_batches
        self.autocast = autocast
        self.samples_log = samples_log  # the windows each step reads (train.record_samples)
        self.global_batch = self.train_data.global_batch
        self.tokens_per_step = self.global_batch * block_size
        # a recurrent model's streams go on from step to step: config checks refuse a warm-up
        self.warmup = warmup if warmup is not None and warmup.active else None

    def micro_loss(self, model: nn.Module, micro: int) -> tuple[torch.Tensor, int]:
        step = self.train_data.step
        starts = self.train_data.next_starts()
        if self.samples_log is not None:
            self.samples_log.write({"step": step, "micro": micro, "starts": starts.tolist()})
        x, y = self.train_data.windows(starts)
        if self.warmup is not None:
            x, y = self.warmup.cut(x, y, step)
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        if self.streams is not None:
            logits, state = model(x, self.streams.incoming(micro, starts))
            # truncated BPTT: the next step starts from here, without a graph
            self.streams.keep(micro, state)
        else:
            logits, _ = model(x)
        return cross_entropy(logits, y), x.numel()

    def evaluate(self, model: nn.Module) -> Evaluation:
        """Mean loss on the fixed validation subset: eval.batches global batches (windows, or
        chunks of as many streams), the same ones whatever the number of ranks sharing them."""
        loss = split_loss(model, self.val_tokens, block_size=self.block_size,
                          batch_size=self.eval_batch_size, batches=self.eval_batches,
                          recurrent=self.recurrent, device=self.device, autocast=self.autocast,
                          info=self.info)
        split = self.val_split
        figures = summarize(loss, tokens=split["tokens"], bytes_=split["bytes"])
        return Evaluation(loss, {"val_bpb": figures.bits_per_byte, "val_ppl": figures.perplexity},
                          f"{figures.bits_per_byte:.4f} bits/byte")

    def state_dict(self) -> dict[str, Any]:
        return self.train_data.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.train_data.load_state_dict(state)

    def extra_state(self) -> dict[str, Any]:
        return {"streams": self.streams.gather()} if self.streams is not None else {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if self.streams is not None:
            self.streams.scatter(state["streams"])

    def after_nonfinite(self) -> None:
        if self.streams is not None:
            self.streams.drop_nonfinite()

    def announce(self) -> list[str]:
        d = self.train_data
        if not isinstance(d, Streams):
            return []
        return [f"truncated BPTT: {d.global_batch} streams of {d.chunks} chunks x "
                f"{d.block_size} tokens; one pass over the train split every {d.chunks} steps"]


def bits_per_byte_factor(manifest: dict[str, Any]) -> float:
    """Train loss (nats per token) times this is bits per byte: tokens / (bytes x ln 2) of
    the train split; NaN where the split has no byte count."""
    split = manifest["splits"]["train"]
    return split["tokens"] / (split["bytes"] * math.log(2)) if split["bytes"] else math.nan
