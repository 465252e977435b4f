"""A trained run's loss, perplexity and bits per byte on a whole split (`lmforge eval`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from lmforge.config import ModelConfig
from lmforge.config_checks import FLOAT, eval_batch_bytes, human_bytes, model_params
from lmforge.data import shards
from lmforge.data.tokenizer import tokenizer_digest
from lmforge.distributed.device import resolve_device
from lmforge.errors import DataError, LmforgeError
from lmforge.evaluate import split_loss, summarize
from lmforge.generate import available_memory, most_that_fit
from lmforge.rundir import RunDir, read_run_config
from lmforge.runs.load import load_run


@dataclass(frozen=True)
class RunEvaluation:
    run: str
    checkpoint: str
    step: int
    data: str
    split: str
    loss: float
    perplexity: float
    bits_per_byte: float


def evaluate_run(run_dir: Path, *, which: str = "latest", data: Path | None = None,
                 split: str = "val", batches: int = 0, batch_size: int = 16) -> RunEvaluation:
    """Checkpoint `which` of the run on `split` of its own dataset or of `data` (which must
    have the run's tokenizer): the whole split when batches=0. Transformers read windows,
    recurrent models `batch_size` streams carrying their state."""
    device = resolve_device("auto")
    check_memory(read_run_config(RunDir(Path(run_dir))).model, batch_size, device)
    loaded = load_run(run_dir, which=which, device=str(device))
    data_dir = data or Path(loaded.cfg.data.path)
    manifest = shards.verify(data_dir)
    if tokenizer_digest(data_dir / manifest["tokenizer"]["dir"]) != tokenizer_digest(loaded.run.tokenizer):
        raise DataError(f"{data_dir} was tokenized with another tokenizer than {run_dir}; "
                        f"prepare it with the run's (lmforge prepare --tokenizer-from {run_dir} "
                        "…) or evaluate on the run's own data")
    if split not in manifest["splits"]:
        raise DataError(f"{data_dir} has no split '{split}'; it has {', '.join(manifest['splits'])}")
    loss = split_loss(loaded.model, shards.open_split(data_dir, split),
                      block_size=loaded.cfg.model.block_size, batch_size=batch_size,
                      batches=batches, device=device, split=split)
    counts = manifest["splits"][split]
    figures = summarize(loss, tokens=counts["tokens"], bytes_=counts["bytes"])
    return RunEvaluation(run=str(run_dir), checkpoint=loaded.checkpoint.name, step=loaded.step,
                         data=str(data_dir), split=split, loss=figures.loss,
                         perplexity=figures.perplexity, bits_per_byte=figures.bits_per_byte)


def check_memory(model: ModelConfig, batch_size: int, device: torch.device) -> None:
    """One batch of `batch_size` sequences must fit the device's free memory, judged from
    the run's config before its model is built (a forward pass without gradients: the
    weights, one layer's activations and the logits)."""
    free = available_memory(device)
    if free is None:
        return

    def need(batch: int) -> int:
        return FLOAT * model_params(model) + eval_batch_bytes(model, model.vocab_size, batch)

    if need(batch_size) <= free:
        return
    fit = most_that_fit(need, free, batch_size)
    fix = (f"lower --batch-size (about {fit:,} fit)" if fit else
           "even one sequence does not fit")
    raise LmforgeError(f"--batch-size {batch_size} needs about {human_bytes(need(batch_size))} "
                       f"on {device} for the model and one batch of logits, and "
                       f"{human_bytes(free)} is free; {fix}")
