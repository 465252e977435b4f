"""A trained run, loaded for evaluation, generation or export. A LoRA run's checkpoints hold
its adapters only: its base is rebuilt as training built it, checked against the sha256
the checkpoint names, and given the adapters."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge import checkpoint
from lmforge.config import Config
from lmforge.data.tokenizer import Tokenizer, load_tokenizer
from lmforge.errors import ConfigError
from lmforge.interop import lora
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
    if cfg.task.kind in ("classify", "tag"):  # a head, not a language model's output layer
        how = ("`lmforge eval` measures it on its test examples, `lmforge predict` uses it and "
               "`lmforge export` writes it"
               if cfg.task.kind == "classify" else
               "its figures are the evaluations in its metrics.jsonl (`lmforge report`)")
        raise ConfigError(f"{run} is a {cfg.task.kind} run: its model ends in a task head, "
                          f"not a language model's output layer; {how}")
    path = checkpoint.find_checkpoint(run, which)
    meta = checkpoint.verify(path)
    if meta.lora is not None:
        model = _lora_model(cfg, meta.lora, path)
    else:
        model = build_model(cfg.model)
        checkpoint.load_weights(path, model)
    model.to(device).eval()
    return LoadedRun(run=run, cfg=cfg, model=model, tokenizer=load_tokenizer(run.tokenizer),
                     checkpoint=path, step=meta.step)


def _lora_model(cfg: Config, saved: dict[str, Any], path: Path) -> LanguageModel:
    """The base of a LoRA run, checked to be the one its adapters were trained on, with the
    adapters of checkpoint `path` (`saved`: its LoRA record)."""
    lora.check_resume(saved, cfg, path=path)  # the run's config and the checkpoint agree
    model = lora.build_base(cfg)
    lora.check_base(saved, lora.LoraBase(lora.state_digest(model), lora.base_origin(cfg)),
                    path=path)
    lora.apply_lora(model, cfg.lora, seed=cfg.run.seed)
    checkpoint.load_weights(path, model, adapters_only=True)
    return model
