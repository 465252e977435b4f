"""The run directory: every file a run keeps, named here and nowhere else.

    RUN/config.toml        the fully resolved config (every field), so a run can be resumed,
                           evaluated or sampled with nothing but its directory
    RUN/metrics.jsonl      train, eval and state records
    RUN/loss.png           loss curves
    RUN/report.html        the run on one page, its figures in RUN/figures/
    RUN/tb/                TensorBoard event files
    RUN/samples.txt        samples printed at the end of training
    RUN/samples.jsonl      samples drawn at each evaluation
    RUN/samples-rankN.jsonl  the windows rank N trained on (train.record_samples)
    RUN/profile/           torch.profiler traces (train.profile)
    RUN/tokenizer/         a copy of the dataset's tokenizer, so generation needs only the run
    RUN/checkpoints/       step_NNNNNNNN/ directories (see checkpoint.py), and the pointers
                           `latest` and `best`, each a file holding a checkpoint's name

Pointers are replaced atomically, and a checkpoint being written lives under a temporary
name (`.tmp-step_NNNNNNNN`) until it is complete.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import tomli_w

from lmforge.config import Config, from_dict, set_value, validate
from lmforge.errors import CheckpointError, ConfigError
from lmforge.recipes import read_toml

CONFIG_FILE = "config.toml"
WEIGHTS_FILE = "model.safetensors"  # in each checkpoint: the full weights, for anyone to load
REPORT_FILE = "report.html"
FIGURES_DIR = "figures"
_CHECKPOINT_PREFIX = "step_"
_PARTIAL_PREFIX = ".tmp-"

Pointer = Literal["latest", "best"]


@dataclass(frozen=True)
class RunDir:
    """The paths of one run directory (nothing is created by naming them)."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    def __str__(self) -> str:
        return str(self.path)

    @property
    def config(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def loss_plot(self) -> Path:
        return self.path / "loss.png"

    @property
    def report(self) -> Path:
        return self.path / REPORT_FILE

    @property
    def figures(self) -> Path:
        return self.path / FIGURES_DIR

    @property
    def tensorboard(self) -> Path:
        return self.path / "tb"

    @property
    def samples(self) -> Path:
        return self.path / "samples.txt"

    @property
    def eval_samples(self) -> Path:
        return self.path / "samples.jsonl"

    def rank_samples(self, rank: int) -> Path:
        return self.path / f"samples-rank{rank}.jsonl"

    def all_rank_samples(self) -> list[Path]:
        return sorted(self.path.glob("samples-rank*.jsonl"))

    @property
    def profile(self) -> Path:
        return self.path / "profile"

    @property
    def tokenizer(self) -> Path:
        return self.path / "tokenizer"

    # --- checkpoints -----------------------------------------------------------------

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / checkpoint_name(step)

    def partial(self, name: str) -> Path:
        """Where a checkpoint or pointer is written before it is renamed into place."""
        return self.checkpoints / f"{_PARTIAL_PREFIX}{name}"

    def partials(self) -> list[Path]:
        """What interrupted writes left behind."""
        return sorted(self.checkpoints.glob(f"{_PARTIAL_PREFIX}*"))

    def checkpoint_names(self) -> list[str]:
        """The names of the checkpoint directories, oldest first (complete or not)."""
        return sorted(p.name for p in self.checkpoints.glob(f"{_CHECKPOINT_PREFIX}*")
                      if p.is_dir())

    def pointer(self, name: Pointer) -> str | None:
        """The checkpoint name `latest` or `best` points at; None when it does not exist."""
        path = self.checkpoints / name
        return path.read_text().strip() if path.is_file() else None

    def point(self, name: Pointer, target: str) -> None:
        """Point `latest` or `best` at checkpoint `target`, atomically."""
        tmp = self.partial(name)
        tmp.write_text(target + "\n")
        os.replace(tmp, self.checkpoints / name)

    def has_checkpoint(self) -> bool:
        """Whether a complete checkpoint exists (`latest` names one only once it is)."""
        return (self.checkpoints / "latest").is_file()

    def holds_run(self) -> bool:
        return self.config.exists() or self.checkpoints.exists()


def checkpoint_name(step: int) -> str:
    return f"{_CHECKPOINT_PREFIX}{step:08d}"


def new_run_dir(cfg: Config, *, recipe_name: str, restarting: bool = False) -> RunDir:
    """Where a new run goes. An explicit run.dir must not hold a run already (unless this is
    an elastic restart of the run that made it, before its first checkpoint); the default
    runs/<recipe> is numbered (-2, -3, …) instead, so no earlier run is ever overwritten."""
    if cfg.run.dir:
        run = RunDir(Path(cfg.run.dir))
        if restarting and not run.has_checkpoint():
            return run
        if run.holds_run():
            raise ConfigError(f"run.dir {run} already holds a run; continue it with "
                              f"`lmforge train --resume {run}` or choose another --run.dir")
        return run
    base = Path("runs") / recipe_name
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return RunDir(path)


def write_config(cfg: Config, run: RunDir) -> None:
    run.path.mkdir(parents=True, exist_ok=True)
    tmp = run.path / f".{CONFIG_FILE}.tmp"
    tmp.write_text(tomli_w.dumps(asdict(cfg)))
    tmp.replace(run.config)


def read_run_config(run: RunDir, overrides: dict[str, str] | None = None) -> Config:
    """The resolved config a run directory holds, with `overrides` applied on top."""
    if not run.path.is_dir():
        raise CheckpointError(f"run directory not found: {run}; give the run.dir of a "
                              "training run")
    if not run.config.is_file():
        raise CheckpointError(f"{run} is not an lmforge run ({CONFIG_FILE} missing); "
                              "give the directory a training run wrote")
    cfg = from_dict(read_toml(run.config), origin=str(run.config))
    for key, value in (overrides or {}).items():
        set_value(cfg, key, value)
    validate(cfg)
    return cfg
