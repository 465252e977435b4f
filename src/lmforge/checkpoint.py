"""Checkpoints: atomic, checksummed directories that train, eval and generate all read.

    RUN/checkpoints/step_00000500/
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
import errno
import json
import os
import shutil
import warnings
from collections.abc import Iterator
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

STATE_DIR = "state"
_PREFIX = "step_"
_TMP = ".tmp-"


def checkpoints_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def _write_pointer(directory: Path, name: str, target: str) -> None:
    tmp = directory / f"{_TMP}{name}"
    tmp.write_text(target + "\n")
    os.replace(tmp, directory / name)


def _read_pointer(directory: Path, name: str) -> str | None:
    path = directory / name
    return path.read_text().strip() if path.is_file() else None


def _full_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every weight, gathered whole onto rank 0's CPU (collective: all ranks call it); tied
    weights once, under their first name, as safetensors wants."""
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True,
                                                                cpu_offload=True))
    seen: set[int] = set()
    weights = {}
    for name, t in full.items():
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


def save_checkpoint(run_dir: Path, *, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                    trainer_state: dict[str, Any], model_config: dict[str, Any],
                    keep_last: int, is_best: bool = False, info: DistInfo = SINGLE) -> Path:
    """Write checkpoint `step` atomically, point `latest` (and `best`) at it, prune old ones.
    Every rank calls it; rank 0 writes all but the DCP shards."""
    root = checkpoints_dir(run_dir)
    name = f"{_PREFIX}{step:08d}"
    final, tmp = root / name, root / f"{_TMP}{name}"
    exists = final.is_dir() if info.is_main else False
    if broadcast_object(exists, info):
        if info.is_main:
            _point(root, name, is_best=is_best, keep_last=keep_last)
        return final
    weights = _full_weights(model)
    # Checked before anything is written, so a NaN or Inf never reaches a checkpoint, and
    # `latest` keeps pointing at the last good one. Rank 0 holds the full weights.
    bad = broadcast_object(_nonfinite(weights) if info.is_main else None, info)
    if bad:
        last = _read_pointer(root, "latest")
        raise CheckpointError(f"refusing to save step {step}: weight '{bad}' holds NaN or Inf "
                              "values; the last checkpoint "
                              + (f"({last}) is kept" if last else "is none yet")
                              + "; lower --optim.lr or enable --optim.grad_clip and resume or "
                              "start again")
    try:
        if info.is_main:
            root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
        barrier(info)
        with _quiet_single_process():
            dcp.save(_training_state(model, optimizer), checkpoint_id=str(tmp / STATE_DIR),
                     no_dist=not _in_group())
        if info.is_main:
            save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})
            torch.save(trainer_state, tmp / "trainer.pt")
        barrier(info)  # every rank's shards are on disk
        if info.is_main:
            files = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
            meta = {"step": step, "model": model_config,
                    "sha256": {f: sha256_file(tmp / f) for f in files}}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
            os.replace(tmp, final)
            _point(root, name, is_best=is_best, keep_last=keep_last)
    except (OSError, dcp.api.CheckpointException) as err:
        # dcp.save reports a failed write as a CheckpointException (a BaseException) that
        # wraps each rank's OSError; either way the half-written directory goes, `latest`
        # still names the previous checkpoint, and the user learns what to do in one line.
        if info.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(_save_failed(run_dir, root, step, tmp, _os_error(err))) from None
    barrier(info)
    return final


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


def _save_failed(run_dir: Path, root: Path, step: int, tmp: Path, err: OSError | None) -> str:
    last = _read_pointer(root, "latest")
    kept = f"the last checkpoint ({root / last}) is kept" if last else "no checkpoint is saved yet"
    what = err.strerror if err is not None and err.strerror else str(err or "write failed")
    if err is not None and err.errno in _DISK_FULL:
        return (f"step {step}: checkpoint not saved, {tmp} ran out of disk space or hit the "
                f"file size limit ({what}); {kept}; free space (or raise the limit) or lower "
                f"--checkpoint.keep_last, then `lmforge train --resume {run_dir}`")
    return (f"step {step}: checkpoint not saved to {tmp} ({what}); {kept}; fix the cause, "
            f"then `lmforge train --resume {run_dir}`")


def _point(root: Path, name: str, *, is_best: bool, keep_last: int) -> None:
    _write_pointer(root, "latest", name)
    if is_best:
        _write_pointer(root, "best", name)
    _prune(root, keep_last=keep_last)


def _prune(root: Path, *, keep_last: int) -> None:
    keep = {_read_pointer(root, "best"), _read_pointer(root, "latest")}
    complete = sorted(p.name for p in root.glob(f"{_PREFIX}*") if p.is_dir())
    keep.update(complete[-max(1, keep_last):])
    for name in complete:
        if name not in keep:
            shutil.rmtree(root / name, ignore_errors=True)


def clean_partial(run_dir: Path) -> None:
    """Remove what a save interrupted by a crash left behind."""
    for tmp in checkpoints_dir(run_dir).glob(f"{_TMP}*"):
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def verify(path: Path) -> dict[str, Any]:
    """meta.json of checkpoint `path` after checking every file's sha256."""
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, ValueError):
        raise CheckpointError(f"{path} is incomplete (meta.json missing or unreadable)") from None
    for name, digest in meta["sha256"].items():
        if not (path / name).is_file() or sha256_file(path / name) != digest:
            raise CheckpointError(f"{path / name} is corrupt (sha256 mismatch)")
    return meta


def find_checkpoint(run_dir: Path, which: str = "latest") -> Path:
    """The checkpoint to load: 'latest', 'best' or a step directory name such as step_00000500."""
    root = checkpoints_dir(run_dir)
    if not Path(run_dir).is_dir():
        raise CheckpointError(f"run directory not found: {run_dir}; give the run.dir of a training run")
    names = sorted((p.name for p in root.glob(f"{_PREFIX}*") if p.is_dir()), reverse=True)
    if not names:
        raise CheckpointError(f"{run_dir} has no checkpoint yet; train it first "
                              f"(`lmforge train --run.dir={run_dir}`)")
    if which in ("latest", "best"):
        target = _read_pointer(root, which)
        if which == "best" and target is None:
            raise CheckpointError(f"{run_dir} has no best checkpoint (no evaluation has run); "
                                  "use --checkpoint latest")
        # Newest first, starting from the pointer, so a damaged checkpoint falls back to an older one.
        order = ([target] if target in names else []) + [n for n in names if n != target]
    elif which in names:
        order = [which]
    else:
        raise CheckpointError(f"{run_dir} has no checkpoint '{which}'; it has: {', '.join(sorted(names))}")
    for name in order if which != "best" else order[:1]:
        try:
            verify(root / name)
            return root / name
        except CheckpointError:
            continue
    raise CheckpointError(f"no intact checkpoint in {root}: every one failed its checksum")


def check_model_config(meta: dict[str, Any], model_config: dict[str, Any], *, path: Path) -> None:
    """Refuse a checkpoint made for another model shape, saying what differs."""
    differ = [f"model.{k}: checkpoint {meta['model'].get(k)!r}, config {v!r}"
              for k, v in model_config.items() if k != "dropout" and meta["model"].get(k) != v]
    if differ:
        raise CheckpointError(f"{path} was made for another model ({'; '.join(differ)}); "
                              "drop those overrides or start a new run")


def load_weights(path: Path, model: nn.Module) -> None:
    try:
        missing, unexpected = load_model(model, str(path / "model.safetensors"), strict=False)
    except RuntimeError as err:  # same names, other shapes
        first = str(err).split("\n")[1].strip() if "\n" in str(err) else str(err)
        raise CheckpointError(f"{path} does not fit this model ({first}); start a new run") from None
    if missing or unexpected:
        raise CheckpointError(f"{path} does not fit this model (missing {sorted(missing)[:3]}, "
                              f"unexpected {sorted(unexpected)[:3]}); start a new run")


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
    return torch.load(path / "trainer.pt", weights_only=True)
