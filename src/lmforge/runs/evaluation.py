"""A trained run's loss, perplexity and bits per byte on a whole split (`lmforge eval`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lmforge.data import shards
from lmforge.data.tokenizer import tokenizer_digest
from lmforge.distributed.device import resolve_device
from lmforge.errors import DataError
from lmforge.evaluate import split_loss, summarize
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
