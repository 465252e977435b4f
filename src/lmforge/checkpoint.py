"""Checkpoints: atomic, checksummed directories that train, eval and generate all read.

    RUN/checkpoints/step_00000500/
        model.safetensors   weights anyone can load
        optimizer.pt        AdamW state (tensors and numbers only: loads with weights_only)
        trainer.pt          step, loader position, RNG, best-validation record
        meta.json           step, model config, sha256 of each file above
    RUN/checkpoints/latest  name of the newest complete checkpoint
    RUN/checkpoints/best    name of the checkpoint with the best validation loss

A checkpoint is written under a temporary name and renamed into place only when every
file is on disk, so a crash during a save leaves the previous checkpoints as they were.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model
from torch import nn

from lmforge.errors import CheckpointError
from lmforge.files import sha256_file

_FILES = ("model.safetensors", "optimizer.pt", "trainer.pt")
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


def save_checkpoint(run_dir: Path, *, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                    trainer_state: dict[str, Any], model_config: dict[str, Any],
                    keep_last: int, is_best: bool = False) -> Path:
    """Write checkpoint `step` atomically, point `latest` (and `best`) at it, prune old ones."""
    root = checkpoints_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    name = f"{_PREFIX}{step:08d}"
    final = root / name
    if not final.is_dir():
        tmp = root / f"{_TMP}{name}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        save_model(model, str(tmp / "model.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(trainer_state, tmp / "trainer.pt")
        meta = {"step": step, "model": model_config,
                "sha256": {f: sha256_file(tmp / f) for f in _FILES}}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        os.replace(tmp, final)
    _write_pointer(root, "latest", name)
    if is_best:
        _write_pointer(root, "best", name)
    _prune(root, keep_last=keep_last)
    return final


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


def load_training_state(path: Path, *, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    return torch.load(path / "trainer.pt", weights_only=True)
