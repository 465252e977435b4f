"""A trained run, loaded for evaluation, generation or export."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lmforge import checkpoint
from lmforge.config import Config
from lmforge.data.tokenizer import Tokenizer, load_tokenizer
from lmforge.models import LanguageModel, build_model
from lmforge.rundir import RunDir, read_run_config


@dataclass(frozen=True)
class LoadedRun:
    """A trained model ready for evaluation or generation, in eval mode on its device."""

    run: RunDir
    cfg: Config
    model: LanguageModel
    tokenizer: Tokenizer
    checkpoint: Path
    step: int


def load_run(run_dir: Path | RunDir, *, which: str = "latest", device: str = "cpu") -> LoadedRun:
    """The model of `run_dir` at checkpoint `which` (latest, best or step_N), and its
    tokenizer."""
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(Path(run_dir))
    cfg = read_run_config(run)
    path = checkpoint.find_checkpoint(run, which)
    meta = checkpoint.verify(path)
    model = build_model(cfg.model)
    checkpoint.load_weights(path, model)
    model.to(device).eval()
    return LoadedRun(run=run, cfg=cfg, model=model, tokenizer=load_tokenizer(run.tokenizer),
                     checkpoint=path, step=meta.step)
