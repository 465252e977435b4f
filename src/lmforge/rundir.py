"""Run directories: choosing one, recording a run's resolved config, loading a trained model.

    RUN/config.toml      the fully resolved config (every field), so a run can be resumed,
                         evaluated or sampled with nothing but its directory
    RUN/metrics.jsonl    train and eval records
    RUN/loss.png         loss curves
    RUN/samples.txt      samples printed at the end of training
    RUN/tokenizer/       a copy of the dataset's tokenizer, so generation needs only the run
    RUN/checkpoints/     see checkpoint.py
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import tomli_w

from lmforge.config import Config, from_dict, read_toml, set_value, validate
from lmforge.errors import CheckpointError, ConfigError

CONFIG_FILE = "config.toml"


def new_run_dir(cfg: Config, *, recipe_name: str, restarting: bool = False) -> Path:
    """Where a new run goes. An explicit run.dir must not hold a run already (unless this is
    an elastic restart of the run that made it, before its first checkpoint); the default
    runs/<recipe> is numbered (-2, -3, …) instead, so no earlier run is ever overwritten."""
    if cfg.run.dir:
        path = Path(cfg.run.dir)
        if restarting and not (path / "checkpoints" / "latest").exists():
            return path
        if (path / CONFIG_FILE).exists() or (path / "checkpoints").exists():
            raise ConfigError(f"run.dir {path} already holds a run; continue it with "
                              f"`lmforge train --resume {path}` or choose another --run.dir")
        return path
    base = Path("runs") / recipe_name
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def write_config(cfg: Config, run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / f".{CONFIG_FILE}.tmp"
    tmp.write_text(tomli_w.dumps(asdict(cfg)))
    tmp.replace(run_dir / CONFIG_FILE)


def read_run_config(run_dir: Path, overrides: dict[str, str] | None = None) -> Config:
    path = Path(run_dir) / CONFIG_FILE
    if not Path(run_dir).is_dir():
        raise CheckpointError(f"run directory not found: {run_dir}; give the run.dir of a training run")
    if not path.is_file():
        raise CheckpointError(f"{run_dir} is not an lmforge run ({CONFIG_FILE} missing); "
                              "give the directory a training run wrote")
    cfg = from_dict(read_toml(path), origin=str(path))
    for key, value in (overrides or {}).items():
        set_value(cfg, key, value)
    validate(cfg)
    return cfg


@dataclass
class LoadedRun:
    """A trained model ready for evaluation or generation."""

    cfg: Config
    model: Any  # torch.nn.Module
    tokenizer: Any
    checkpoint: Path
    step: int


def load_run(run_dir: Path, *, which: str = "latest", device: str = "cpu") -> LoadedRun:
    """The model of `run_dir` at checkpoint `which`, and its tokenizer."""
    from lmforge import checkpoint
    from lmforge.data.tokenizer import load_tokenizer
    from lmforge.models import build_model

    cfg = read_run_config(run_dir)
    path = checkpoint.find_checkpoint(Path(run_dir), which)
    meta = checkpoint.verify(path)
    model = build_model(cfg.model)
    checkpoint.load_weights(path, model)
    model.to(device).eval()
    tokenizer = load_tokenizer(Path(run_dir) / "tokenizer")
    return LoadedRun(cfg=cfg, model=model, tokenizer=tokenizer, checkpoint=path,
                     step=int(meta["step"]))
