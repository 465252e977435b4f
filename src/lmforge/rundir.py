"""The run directory: every file a run keeps, named here and nowhere else.

    RUN/config.toml        the fully resolved config (every field), so a run can be resumed,
                           evaluated or sampled with nothing but its directory
    RUN/metrics.jsonl      train, eval and state records
    RUN/loss.png           loss curves
    RUN/report.html        the run on one page, its figures in RUN/figures/
    RUN/tb/                TensorBoard event files (log.to=tensorboard)
    RUN/wandb/, RUN/mlruns/  W&B's offline runs and MLflow's local store (log.to=wandb,mlflow)
    RUN/samples.txt        samples printed at the end of training
    RUN/samples.jsonl      samples drawn at each evaluation
    RUN/samples-rankN.jsonl  the windows rank N trained on (train.record_samples)
    RUN/profile/           torch.profiler traces (train.profile)
    RUN/tokenizer/         a copy of the dataset's tokenizer, so generation needs only the run
    RUN/checkpoints/       step_NNNNNNNN/ directories (see checkpoint.py), and the pointers
                           `latest` and `best`, each a file holding a checkpoint's name

Pointers are replaced atomically, a checkpoint being written lives under a temporary name
(`.tmp-step_NNNNNNNN`) until it is complete, and a damaged one found on resume is moved
aside to `corrupt-step_NNNNNNNN`, kept. Beside the run directory, `.NAME.lock` marks the
process that trains it (lmforge.locks).

The lenient readers at the end are for what shows a run that may still be writing, or whose
files were damaged (the report): they never raise for what a file holds, and say what they
left out in a list of notes.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

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
_DAMAGED_PREFIX = "corrupt-"

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
    def mlruns(self) -> Path:
        """MLflow's local store, when log.to has mlflow and no MLFLOW_TRACKING_URI is set."""
        return self.path / "mlruns"

    @property
    def wandb(self) -> Path:
        """Where W&B writes its runs (offline ones until `wandb sync`), with log.to=wandb."""
        return self.path / "wandb"

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

    def set_aside(self, name: str) -> Path:
        """A free place for damaged checkpoint `name`, kept for inspection: corrupt-NAME
        (-2, -3, … when taken), not a step_ name, so never loaded or pruned."""
        path, n = self.checkpoints / f"{_DAMAGED_PREFIX}{name}", 1
        while path.exists():
            n += 1
            path = self.checkpoints / f"{_DAMAGED_PREFIX}{name}-{n}"
        return path

    def checkpoint_names(self) -> list[str]:
        """The names of the checkpoint directories, oldest first (complete or not)."""
        return sorted(p.name for p in self.checkpoints.glob(f"{_CHECKPOINT_PREFIX}*")
                      if p.is_dir())

    def pointer(self, name: Pointer) -> str | None:
        """The checkpoint name `latest` or `best` points at; None when it does not exist."""
        path = self.checkpoints / name
        if not path.is_file():
            return None
        # a damaged pointer (stray bytes) names no checkpoint, and is treated as such
        return path.read_bytes().decode("utf-8", errors="replace").strip()

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
        blocking = next((p for p in (run.path, *run.path.parents)
                         if p.exists() and not p.is_dir()), None)
        if blocking is not None:
            where = "is a file" if blocking == run.path else f"lies under the file {blocking}"
            raise ConfigError(f"run.dir {run} {where}; choose a directory for the run")
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
    try:
        text = tomli_w.dumps(asdict(cfg))
    except UnicodeEncodeError:  # a path of undecodable bytes, kept by surrogateescape
        raise ConfigError(f"{run} (or a path in the config) is not valid UTF-8, which a "
                          "config.toml cannot hold; choose a name of valid characters") from None
    run.path.mkdir(parents=True, exist_ok=True)
    tmp = run.path / f".{CONFIG_FILE}.tmp"
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(run.config)


def read_run_config(run: RunDir, overrides: dict[str, str] | None = None) -> Config:
    """The resolved config a run directory holds, with `overrides` applied on top."""
    try:
        is_dir, has_config = run.path.is_dir(), run.config.is_file()
    except OSError as err:  # a name too long, a directory that cannot be entered
        raise CheckpointError(f"cannot open the run directory {run} ({err.strerror or err}); "
                              "give the run.dir of a training run") from None
    if not is_dir:
        raise CheckpointError(f"run directory not found: {run}; give the run.dir of a "
                              "training run")
    if not has_config:
        raise CheckpointError(f"{run} is not an lmforge run ({CONFIG_FILE} missing); "
                              "give the directory a training run wrote")
    tree = read_toml(run.config, fix="the run's config is damaged; restore it from a copy "
                     "(every field is listed in it) or start a new run")
    cfg = from_dict(tree, origin=str(run.config))
    for key, value in (overrides or {}).items():
        set_value(cfg, key, value)
    validate(cfg)
    return cfg


# ---------------------------------------------------------------- lenient readers

MAX_STEP = 2**53  # beyond, a step cannot be a float exactly: a damaged record
_MAX_HEADER = 100_000_000  # bytes of a safetensors header; safetensors itself refuses more


def finite(value: Any) -> float | None:
    """A finite int or float as it is, else None: a string, null, bool, NaN or an integer
    beyond float's range is no number to show."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return value if math.isfinite(value) else None
    except OverflowError:  # an int too large for a float
        return None


def step_or_none(value: Any) -> int | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value < MAX_STEP
    return value if ok else None


def read_text_or_none(path: Path, notes: list[str]) -> str | None:
    """A text file; None when it is missing or unreadable (noted). Bytes that are not UTF-8
    become U+FFFD (noted)."""
    if not path.is_file():
        return None
    try:
        data = path.read_bytes()
    except OSError as err:
        notes.append(f"{path.name} could not be read ({err.strerror or err})")
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        notes.append(f"{path.name} is not valid UTF-8: its undecodable bytes show as \ufffd")
        return data.decode("utf-8", errors="replace")


def read_json_object(path: Path, notes: list[str]) -> dict[str, Any] | None:
    """The JSON object in `path`; None when it is missing, or damaged (noted)."""
    text = read_text_or_none(path, notes)
    if text is None:
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):  # ValueError: also an int of 4,300+ digits
        value = None
    if not isinstance(value, dict):
        notes.append(f"{path} is damaged (not a JSON object) and was left out")
        return None
    return value


def read_records(path: Path, notes: list[str], *,
                 numbers: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL file (metrics.jsonl, samples.jsonl) that have an integer
    `step`; a line cut short by a killed run, or damaged, is skipped and counted (noted).
    A field in `numbers` that holds no finite number (a string, null, 10**400) is dropped."""
    out, skipped = [], 0
    for line in (read_text_or_none(path, notes) or "").splitlines():
        if not line.strip():
            continue
        try:  # an int too long for Python (4,300+ digits) becomes inf: a number to drop
            record = json.loads(line, parse_int=lambda s: int(s) if len(s) < 4000 else float(s))
        except (ValueError, RecursionError):
            record = None
        if isinstance(record, dict) and step_or_none(record.get("step")) is not None:
            out.append({k: v for k, v in record.items()
                        if k not in numbers or finite(v) is not None})
        else:
            skipped += 1
    if skipped:
        notes.append(f"{path.name}: {skipped:,} line(s) skipped (cut short by a killed run, "
                     "or damaged)")
    return out


def weights_count(path: Path) -> int | None:
    """How many weights a safetensors file holds, from its JSON header alone; None for a
    file that is missing or damaged."""
    try:
        with open(path, "rb") as fh:
            size = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(size)) if 2 <= size <= _MAX_HEADER else None
    except (OSError, ValueError, RecursionError):
        return None
    tensors = [v for k, v in header.items() if k != "__metadata__"] \
        if isinstance(header, dict) else []
    total = 0
    for shape in (v.get("shape") if isinstance(v, dict) else None for v in tensors):
        if not isinstance(shape, list) or any(step_or_none(d) is None for d in shape):
            return None
        total += math.prod(shape)
    return total if tensors else None
