"""Checkpoints: atomic, checksummed directories that train, eval and generate all read.

    RUN/checkpoints/step_00000500/    (the run directory's layout is rundir.py's)
        model.safetensors   the full weights, for eval, generate, export and anyone else
        state/              model and AdamW state in torch.distributed.checkpoint (DCP)
                            format: each rank writes its own shards, and a run saved on N
                            ranks loads on M, under any parallel strategy
        trainer.pt          step, loader position, every rank's RNG, best-validation record
        meta.json           step, model config, sha256 of each file above
    RUN/checkpoints/latest  name of the newest complete checkpoint
    RUN/checkpoints/best    name of the checkpoint with the best validation loss

A checkpoint is written under a temporary name and renamed into place (by rank 0, once
every rank has written its part) only when every file is on disk, so a crash during a
save leaves the previous checkpoints as they were.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_model, save_file
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from lmforge.distributed.env import SINGLE, DistInfo, barrier, broadcast_object
from lmforge.errors import CheckpointError
from lmforge.files import sha256_file
from lmforge.rundir import WEIGHTS_FILE, RunDir, checkpoint_name

STATE_DIR = "state"
TRAINER_FILE = "trainer.pt"
META_FILE = "meta.json"


@dataclass(frozen=True)
class CheckpointMeta:
    """meta.json: the step, the model config the weights fit, and every file's sha256."""

    step: int
    model: dict[str, Any]
    sha256: dict[str, str]


def _full_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every weight, gathered whole onto rank 0's CPU (collective: all ranks call it); tied
    weights once, under their first name, as safetensors wants."""
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True,
                                                                cpu_offload=True))
    seen: set[int] = set()
    weights = {}
    for name, t in full.items():
        assert isinstance(t, torch.Tensor)  # a model's state dict holds tensors only
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            weights[name] = t.contiguous()
    return weights


def _nonfinite(weights: dict[str, torch.Tensor]) -> str | None:
    """The name of the first weight holding a NaN or Inf, None when all are finite."""
    for name, t in weights.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return name
    return None


def _in_group() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


@contextlib.contextmanager
def _quiet_single_process() -> Iterator[None]:
    # DCP warns that it assumes one process when there is no group: that is the intent here.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _training_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Model and optimizer state as DCP saves and loads it: sharded as the model is, keyed by
    parameter names that are the same under every strategy."""
    return {"model": get_model_state_dict(model),
            "optim": get_optimizer_state_dict(model, optimizer)}


def save_checkpoint(run: RunDir, *, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                    trainer_state: dict[str, Any], model_config: dict[str, Any],
                    keep_last: int, is_best: bool = False, info: DistInfo = SINGLE) -> Path:
    """Write checkpoint `step` atomically, point `latest` (and `best`) at it, prune old ones.
    Every rank calls it; rank 0 writes all but the DCP shards."""
    name = checkpoint_name(step)
    final, tmp = run.checkpoints / name, run.partial(name)
    exists = final.is_dir() if info.is_main else False
    if broadcast_object(exists, info):
        if info.is_main:
            _point(run, name, is_best=is_best, keep_last=keep_last)
        return final
    weights = _full_weights(model)
    # Checked before anything is written, so a NaN or Inf never reaches a checkpoint, and
    # `latest` keeps pointing at the last good one. Rank 0 holds the full weights.
    bad = broadcast_object(_nonfinite(weights) if info.is_main else None, info)
    if bad:
        last = run.pointer("latest")
        raise CheckpointError(f"refusing to save step {step}: weight '{bad}' holds NaN or Inf "
                              "values; the last checkpoint "
                              + (f"({last}) is kept" if last else "is none yet")
                              + "; lower --optim.lr or enable --optim.grad_clip and resume or "
                              "start again")
    try:
        _write(tmp, model=model, optimizer=optimizer, weights=weights,
               trainer_state=trainer_state, info=info)
        if info.is_main:
            files = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
            meta = CheckpointMeta(step=step, model=model_config,
                                  sha256={f: sha256_file(tmp / f) for f in files})
            (tmp / META_FILE).write_text(json.dumps(dataclasses.asdict(meta), indent=2))
            os.replace(tmp, final)
            _point(run, name, is_best=is_best, keep_last=keep_last)
    except (OSError, dcp.api.CheckpointException) as err:
        # dcp.save reports a failed write as a CheckpointException (a BaseException) that
        # wraps each rank's OSError; either way the half-written directory goes, `latest`
        # still names the previous checkpoint, and the user learns what to do in one line.
        if info.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(_save_failed(run, step, tmp, _os_error(err))) from None
    barrier(info)
    return final


def _write(tmp: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer,
           weights: dict[str, torch.Tensor], trainer_state: dict[str, Any], info: DistInfo) -> None:
    """Every file of a checkpoint but meta.json, into `tmp` (each rank its DCP shards)."""
    if info.is_main:
        tmp.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    barrier(info)
    with _quiet_single_process():
        dcp.save(_training_state(model, optimizer), checkpoint_id=str(tmp / STATE_DIR),
                 no_dist=not _in_group())
    if info.is_main:
        save_file(weights, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        torch.save(trainer_state, tmp / TRAINER_FILE)
    barrier(info)  # every rank's shards are on disk


_DISK_FULL = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


def _os_error(err: BaseException) -> OSError | None:
    """The OSError behind a failed save: `err` itself, or the first one DCP wrapped."""
    if isinstance(err, OSError):
        return err
    for failure in getattr(err, "failures", {}).values():
        exc = failure[0] if isinstance(failure, tuple) else failure
        if isinstance(exc, OSError):
            return exc
    return None


def _save_failed(run: RunDir, step: int, tmp: Path, err: OSError | None) -> str:
    last = run.pointer("latest")
    kept = (f"the last checkpoint ({run.checkpoints / last}) is kept" if last
            else "no checkpoint is saved yet")
    what = err.strerror if err is not None and err.strerror else str(err or "write failed")
    if err is not None and err.errno in _DISK_FULL:
        return (f"step {step}: checkpoint not saved, {tmp} ran out of disk space or hit the "
                f"file size limit ({what}); {kept}; free space (or raise the limit) or lower "
                f"--checkpoint.keep_last, then `lmforge train --resume {run}`")
    return (f"step {step}: checkpoint not saved to {tmp} ({what}); {kept}; fix the cause, "
            f"then `lmforge train --resume {run}`")


def _point(run: RunDir, name: str, *, is_best: bool, keep_last: int) -> None:
    run.point("latest", name)
    if is_best:
        run.point("best", name)
    _prune(run, keep_last=keep_last)


def _prune(run: RunDir, *, keep_last: int) -> None:
    keep = {run.pointer("best"), run.pointer("latest")}
    complete = run.checkpoint_names()
    keep.update(complete[-max(1, keep_last):])
    for name in complete:
        if name not in keep:
            shutil.rmtree(run.checkpoints / name, ignore_errors=True)


def clean_partial(run: RunDir) -> None:
    """Remove what a save interrupted by a crash left behind."""
    for tmp in run.partials():
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def verify(path: Path) -> CheckpointMeta:
    """meta.json of checkpoint `path` after checking every file's sha256."""
    try:
        raw = json.loads((path / META_FILE).read_text())
        meta = CheckpointMeta(step=int(raw["step"]), model=dict(raw["model"]),
                              sha256=dict(raw["sha256"]))
    except (OSError, ValueError, KeyError, TypeError):
        raise CheckpointError(f"{path} is incomplete (meta.json missing or unreadable)") from None
    for name, digest in meta.sha256.items():
        if not (path / name).is_file() or sha256_file(path / name) != digest:
            raise CheckpointError(f"{path / name} is corrupt (sha256 mismatch)")
    return meta


def find_checkpoint(run: RunDir, which: str = "latest") -> Path:
    """The checkpoint to load: 'latest', 'best' or a step directory name such as step_00000500."""
    if not run.path.is_dir():
        raise CheckpointError(f"run directory not found: {run}; give the run.dir of a training run")
    names = run.checkpoint_names()[::-1]  # newest first
    if not names:
        raise CheckpointError(f"{run} has no checkpoint yet; train it first "
                              f"(`lmforge train --run.dir={run}`)")
    if which in ("latest", "best"):
        target = run.pointer("best" if which == "best" else "latest")
        if which == "best" and target is None:
            raise CheckpointError(f"{run} has no best checkpoint (checkpoint.keep_best=false, "
                                  "or no evaluation has run yet); use --checkpoint latest")
        # Newest first, starting from the pointer, so a damaged checkpoint falls back to an older one.
        order = ([target] if target in names else []) + [n for n in names if n != target]
    elif which in names:
        order = [which]
    else:
        raise CheckpointError(f"{run} has no checkpoint '{which}'; it has: latest, "
                              f"{'best, ' if run.pointer('best') else ''}{', '.join(sorted(names))}")
    for name in order if which != "best" else order[:1]:
        try:
            verify(run.checkpoints / name)
            return run.checkpoints / name
        except CheckpointError:
            continue
    raise CheckpointError(f"no intact checkpoint in {run.checkpoints}: every one failed its checksum")


def check_model_config(meta: CheckpointMeta, model_config: dict[str, Any], *, path: Path) -> None:
    """Refuse a checkpoint made for another model shape, saying what differs."""
    differ = [f"model.{k}: checkpoint {meta.model.get(k)!r}, config {v!r}"
              for k, v in model_config.items() if k != "dropout" and meta.model.get(k) != v]
    if differ:
        raise CheckpointError(f"{path} was made for another model ({'; '.join(differ)}); "
                              "drop those overrides or start a new run")


def load_weights(path: Path, model: nn.Module) -> None:
    try:
        missing, unexpected = load_model(model, str(path / WEIGHTS_FILE), strict=False)
    except RuntimeError as err:  # same names, other shapes
        first = str(err).split("\n")[1].strip() if "\n" in str(err) else str(err)
        raise CheckpointError(f"{path} does not fit this model ({first}); start a new run") from None
    if missing or unexpected:
        raise CheckpointError(f"{path} does not fit this model (missing {sorted(missing)[:3]}, "
                              f"unexpected {sorted(unexpected)[:3]}); start a new run")


def read_trainer_state(path: Path) -> dict[str, Any]:
    """trainer.pt of checkpoint `path` (counters, loader position, RNG states), tensors and
    plain data only (weights_only: loading it runs no code)."""
    state: dict[str, Any] = torch.load(path / TRAINER_FILE, weights_only=True)
    return state


def load_training_state(path: Path, *, model: nn.Module,
                        optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Load model and optimizer state into this rank's (possibly sharded) model, whatever the
    number of ranks and the strategy that saved it; the trainer state for the caller."""
    if not (path / STATE_DIR).is_dir():
        raise CheckpointError(f"{path} was written by an older lmforge (no {STATE_DIR}/); "
                              "it can be evaluated but not resumed; start a new run")
    state = _training_state(model, optimizer)
    with _quiet_single_process():
        dcp.load(state, checkpoint_id=str(path / STATE_DIR), no_dist=not _in_group())
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, optimizer, state["optim"])
    return read_trainer_state(path)
