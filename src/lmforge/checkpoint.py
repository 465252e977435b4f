"""Checkpoints: atomic, checksummed directories that train, eval and generate all read.

    RUN/checkpoints/step_00000500/    (the run directory's layout is rundir.py's)
        model.safetensors   the full weights, for eval, generate, export and anyone else
                            (a LoRA run: its adapters only, here and in state/)
        state/              model and AdamW state in torch.distributed.checkpoint (DCP)
                            format: each rank writes its own shards, and a run saved on N
                            ranks loads on M, under any parallel strategy
        trainer.pt          step, loader position, every rank's RNG, best-validation record
        meta.json           step, model config, sha256 of each file above; for LoRA, the
                            adapters' settings and their base model's sha256
    RUN/checkpoints/latest  name of the newest complete checkpoint
    RUN/checkpoints/best    name of the checkpoint with the best validation loss

A checkpoint is written under a temporary name and renamed into place (by rank 0, once
every rank has written its part) only when every file is on disk, so a crash during a
save leaves the previous checkpoints as they were.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_file
from torch import nn

from lmforge import weights_only
from lmforge.console import log
from lmforge.distributed.env import SINGLE, DistInfo, barrier, broadcast_object
from lmforge.errors import CheckpointError
from lmforge.files import DISK_FULL, sha256_file
from lmforge.rundir import WEIGHTS_FILE, RunDir, checkpoint_name

STATE_DIR = "state"
TRAINER_FILE = "trainer.pt"
META_FILE = "meta.json"


def _dcp() -> Any:
    """torch.distributed.checkpoint, imported where a checkpoint's model and optimizer state
    is saved or loaded: the import takes most of a second (DTensor, sympy), which loading the
    weights alone (eval, generate, serve) and a run's first step need not wait for."""
    import torch.distributed.checkpoint as dcp
    import torch.distributed.checkpoint.state_dict  # noqa: F401  (dcp.state_dict below)

    return dcp


@dataclass(frozen=True)
class CheckpointMeta:
    """meta.json: the step, the model config the weights fit, and every file's sha256;
    `lora` (interop/lora.py's record) when the checkpoint holds LoRA adapters, not a model."""

    step: int
    model: dict[str, Any]
    sha256: dict[str, str]
    lora: dict[str, Any] | None = None


def _full_weights(model: nn.Module, *, adapters_only: bool = False) -> dict[str, torch.Tensor]:
    """Every weight (the trainable ones alone with `adapters_only`: a frozen base is not
    saved), gathered whole onto rank 0's CPU (collective: all ranks call it); tied weights
    once, under their first name, as safetensors wants."""
    full = _model_state(model, adapters_only=adapters_only, full=True)
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


def _training_state(model: nn.Module, optimizer: torch.optim.Optimizer, *,
                    adapters_only: bool = False) -> dict[str, Any]:
    """Model and optimizer state as DCP saves and loads it: sharded as the model is, keyed by
    parameter names that are the same under every strategy (the trainable weights alone
    with `adapters_only`)."""
    optim = (_plain_optimizer_state(model, optimizer) if _plain(model) and optimizer.state
             else _dcp().state_dict.get_optimizer_state_dict(model, optimizer))
    return {"model": _model_state(model, adapters_only=adapters_only), "optim": optim}


def _plain(model: nn.Module) -> bool:
    """Whether the state can be read without DCP's helpers (one process, no DTensor): they
    look for DDP, FSDP and torch.compile wrappers a plain model lacks, importing torch._dynamo
    (1.2 s on 2 CPU cores). tests/unit/test_checkpoint.py checks both give the same state."""
    return not _in_group() and all(type(p.data) is torch.Tensor for p in model.parameters())


def _plain_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's state dict keyed by parameter names, as DCP's
    get_optimizer_state_dict gives it for a plain model whose optimizer has stepped."""
    own = optimizer.state_dict()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    index = {id(p): i for i, p in enumerate(params)}  # state_dict numbers them in this order
    name = {index[id(p)]: n for n, p in model.named_parameters() if id(p) in index}
    return {"state": {name[i]: value for i, value in own["state"].items()},
            "param_groups": [{**group, "params": [name[i] for i in group["params"]]}
                             for group in own["param_groups"]]}


def _model_state(model: nn.Module, *, adapters_only: bool, full: bool = False) -> dict[str, Any]:
    """The model's state dict (`full`: gathered whole onto rank 0's CPU), without its frozen
    weights when `adapters_only`."""
    read = _plain_model_state if _plain(model) else _dcp_model_state
    return read(model, adapters_only=adapters_only, full=full)


def _plain_model_state(model: nn.Module, *, adapters_only: bool, full: bool) -> dict[str, Any]:
    """_model_state of a plain model, without DCP: its own state dict."""
    frozen = {n for n, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad}
    return {n: t.cpu() if full else t for n, t in model.state_dict().items()
            if not (adapters_only and n in frozen)}


def _dcp_model_state(model: nn.Module, *, adapters_only: bool, full: bool) -> dict[str, Any]:
    """_model_state through DCP, for a model under any strategy. torch's
    ignore_frozen_params looks each frozen parameter up under one name only, so a frozen
    weight with two (the tied output layer) is dropped here under the other as well."""
    dicts = _dcp().state_dict
    options = dicts.StateDictOptions(full_state_dict=full, cpu_offload=full,
                                     ignore_frozen_params=adapters_only)
    state = dicts.get_model_state_dict(model, options=options)
    if adapters_only:
        for name, p in model.named_parameters(remove_duplicate=False):
            if not p.requires_grad:
                for fqn in dicts._get_fqns(model, name):  # its name in the state dict,
                    state.pop(fqn, None)                   # unwrapped as torch unwraps it
    return state


def save_checkpoint(run: RunDir, *, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                    trainer_state: dict[str, Any], model_config: dict[str, Any],
                    keep_last: int, is_best: bool = False, info: DistInfo = SINGLE,
                    lora: dict[str, Any] | None = None) -> Path:
    """Write checkpoint `step` atomically, point `latest` (and `best`) at it, prune old ones.
    Every rank calls it; rank 0 writes all but the DCP shards. `lora` (a LoRA run's record,
    the same on every rank): save the trainable adapters only, and that record in meta.json."""
    name = checkpoint_name(step)
    final, tmp = run.checkpoints / name, run.partial(name)
    exists = _intact(run, name) if info.is_main else False
    if broadcast_object(exists, info):
        if info.is_main:
            _point(run, name, is_best=is_best, keep_last=keep_last)
        return final
    adapters_only = lora is not None
    weights = _full_weights(model, adapters_only=adapters_only)
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
               trainer_state=trainer_state, info=info, adapters_only=adapters_only)
        if info.is_main:
            files = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
            meta = CheckpointMeta(step=step, model=model_config,
                                  sha256={f: sha256_file(tmp / f) for f in files}, lora=lora)
            (tmp / META_FILE).write_text(json.dumps(dataclasses.asdict(meta), indent=2))
            os.replace(tmp, final)
            _point(run, name, is_best=is_best, keep_last=keep_last)
    except (OSError, _dcp().api.CheckpointException) as err:
        # dcp.save reports a failed write as a CheckpointException (a BaseException) that
        # wraps each rank's OSError; either way the half-written directory goes, `latest`
        # still names the previous checkpoint, and the user learns what to do in one line.
        if info.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(_save_failed(run, step, tmp, err)) from None
    barrier(info)
    return final


def _intact(run: RunDir, name: str) -> bool:
    """Whether checkpoint `name` exists and passes its checksums; a damaged one in the way of
    a new save is set aside first."""
    path = run.checkpoints / name
    if not path.is_dir():
        return False
    try:
        verify(path)
        return True
    except CheckpointError:
        dest = _set_aside(run, name)
        log(f"note: {path} was damaged; moved to {dest} (kept) and saved again")
        return False


def _write(tmp: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer,
           weights: dict[str, torch.Tensor], trainer_state: dict[str, Any], info: DistInfo,
           adapters_only: bool) -> None:
    """Every file of a checkpoint but meta.json, into `tmp` (each rank its DCP shards)."""
    if info.is_main:
        tmp.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    barrier(info)
    with _quiet_single_process():
        _dcp().save(_training_state(model, optimizer, adapters_only=adapters_only),
                 checkpoint_id=str(tmp / STATE_DIR),
                 no_dist=not _in_group())
    if info.is_main:
        save_file(weights, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        torch.save(trainer_state, tmp / TRAINER_FILE)
    barrier(info)  # every rank's shards are on disk


def _cause(err: BaseException) -> BaseException:
    """What made a save fail: `err` itself, or the first failure DCP wrapped (an OSError if
    there is one)."""
    failures = [f[0] if isinstance(f, tuple) else f
                for f in getattr(err, "failures", {}).values()]
    return next((f for f in failures if isinstance(f, OSError)), failures[0] if failures else err)


def _disk_full(cause: BaseException, where: Path) -> bool:
    """Whether a failed save ran out of room. An OSError says so by its errno; torch's
    serializer, writing a shard that came up short, says only "unexpected pos", so a failure
    on a file system with (nearly) nothing left counts as one too."""
    if isinstance(cause, OSError) and cause.errno in DISK_FULL:
        return True
    try:
        return shutil.disk_usage(where).free < _ROOM
    except OSError:
        return False


_ROOM = 1 << 20  # less free space than this after a failed write: the disk was full


def _save_failed(run: RunDir, step: int, tmp: Path, err: BaseException) -> str:
    last = run.pointer("latest")
    kept = (f"the last checkpoint ({run.checkpoints / last}) is kept" if last
            else "no checkpoint is saved yet")
    cause = _cause(err)
    what = (cause.strerror if isinstance(cause, OSError) and cause.strerror
            else " ".join(str(cause).split())[:200] or type(cause).__name__)
    if _disk_full(cause, run.checkpoints):
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
        lora = raw.get("lora")
        meta = CheckpointMeta(step=int(raw["step"]), model=dict(raw["model"]),
                              sha256=dict(raw["sha256"]),
                              lora=dict(lora) if lora is not None else None)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise CheckpointError(f"{path} is incomplete (meta.json missing or unreadable)") from None
    for name, digest in meta.sha256.items():
        if not (path / name).is_file() or sha256_file(path / name) != digest:
            raise CheckpointError(f"{path / name} is corrupt (sha256 mismatch)")
    return meta


def find_checkpoint(run: RunDir, which: str = "latest") -> Path:
    """The checkpoint to load: 'latest', 'best' or a step directory name such as step_00000500.
    A damaged `latest` falls back to the newest intact checkpoint, and says so."""
    if not run.path.is_dir():
        raise CheckpointError(f"run directory not found: {run}; give the run.dir of a training run")
    names = run.checkpoint_names()[::-1]  # newest first
    if not names:
        raise CheckpointError(f"{run} has no checkpoint yet; train it first "
                              f"(`lmforge train --run.dir={run}`)")
    if which == "best":
        target = run.pointer("best")
        if target is None or target not in names:
            raise CheckpointError(f"{run} has no best checkpoint (checkpoint.keep_best=false, "
                                  "or no evaluation has run yet); use --checkpoint latest")
        try:
            verify(run.checkpoints / target)
        except CheckpointError as err:
            raise CheckpointError(f"the best checkpoint is damaged: {err}; use --checkpoint "
                                  "latest or a step_NNNNNNNN name") from None
        return run.checkpoints / target
    if which != "latest" and which not in names:
        raise CheckpointError(f"{run} has no checkpoint '{which}'; it has: latest, "
                              f"{'best, ' if run.pointer('best') else ''}{', '.join(sorted(names))}")
    target = run.pointer("latest") if which == "latest" else which
    # Newest first, starting from the pointer, so a damaged checkpoint falls back to an older one.
    order = ([target] if target in names else []) + [n for n in names if n != target]
    for name in order if which == "latest" else order[:1]:
        try:
            verify(run.checkpoints / name)
        except CheckpointError as err:
            if which != "latest":
                raise
            log(f"note: {err}; using an older checkpoint")
            continue
        return run.checkpoints / name
    raise CheckpointError(f"no intact checkpoint in {run.checkpoints}: every one failed its checksum")


def set_aside_damaged(run: RunDir, *, resume_from: Path) -> list[tuple[str, Path]]:
    """Move every damaged checkpoint newer than `resume_from` out of the way, where the run
    will write its retrained one: renamed corrupt-step_N (kept for inspection, never
    deleted), pointers that named it dropped, `latest` pointed at `resume_from`. Returns
    (name, where it went) of each."""
    moved = []
    for name in run.checkpoint_names():
        if name <= resume_from.name:
            continue
        try:
            verify(run.checkpoints / name)
        except CheckpointError:
            moved.append((name, _set_aside(run, name)))
    if moved:
        run.point("latest", resume_from.name)
    return moved


def _set_aside(run: RunDir, name: str) -> Path:
    dest = run.set_aside(name)
    os.rename(run.checkpoints / name, dest)
    for pointer in ("latest", "best"):
        if run.pointer("latest" if pointer == "latest" else "best") == name:
            (run.checkpoints / pointer).unlink()
    return dest


def check_model_config(meta: CheckpointMeta, model_config: dict[str, Any], *, path: Path) -> None:
    """Refuse a checkpoint made for another model shape, saying what differs."""
    differ = [f"model.{k}: checkpoint {meta.model.get(k)!r}, config {v!r}"
              for k, v in model_config.items() if k != "dropout" and meta.model.get(k) != v]
    if differ:
        raise CheckpointError(f"{path} was made for another model ({'; '.join(differ)}); "
                              "drop those overrides or start a new run")


def load_weights(path: Path, model: nn.Module, *, adapters_only: bool = False) -> None:
    """The weights of checkpoint `path` into `model`: all of them, or with `adapters_only`
    (a LoRA checkpoint) every trainable one, the frozen base being the model's own."""
    try:
        missing, unexpected = load_model(model, str(path / WEIGHTS_FILE), strict=False)
    except RuntimeError as err:  # same names, other shapes
        first = str(err).split("\n")[1].strip() if "\n" in str(err) else str(err)
        raise CheckpointError(f"{path} does not fit this model ({first}); start a new run") from None
    if adapters_only:
        frozen = {n for n, p in model.named_parameters(remove_duplicate=False)
                  if not p.requires_grad}
        missing = [n for n in missing if n not in frozen]
    if missing or unexpected:
        raise CheckpointError(f"{path} does not fit this model (missing {sorted(missing)[:3]}, "
                              f"unexpected {sorted(unexpected)[:3]}); start a new run")


def read_trainer_state(path: Path) -> dict[str, Any]:
    """trainer.pt of checkpoint `path` (counters, loader position, RNG states), tensors and
    plain data only (weights_only: loading it runs no code)."""
    try:
        state = weights_only.load(path / TRAINER_FILE)
    except weights_only.NotLoaded as err:
        raise CheckpointError(f"{path / TRAINER_FILE} is damaged or not lmforge's ({err}); "
                              "it was not loaded; use another checkpoint or start a new run"
                              ) from None
    if not isinstance(state, dict) or not {"counters", "loader", "rng"} <= set(state):
        raise CheckpointError(f"{path / TRAINER_FILE} holds no trainer state; it was not "
                              "loaded; use another checkpoint or start a new run")
    return state


def load_training_state(path: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                        adapters_only: bool = False) -> dict[str, Any]:
    """Load model and optimizer state into this rank's (possibly sharded) model, whatever the
    number of ranks and the strategy that saved it; the trainer state for the caller. With
    `adapters_only` (LoRA) the trainable weights alone: DCP loads every one of them or
    fails, and the frozen base stays the model's own."""
    if not (path / STATE_DIR).is_dir():
        raise CheckpointError(f"{path} was written by an older lmforge (no {STATE_DIR}/); "
                              "it can be evaluated but not resumed; start a new run")
    state = _training_state(model, optimizer, adapters_only=adapters_only)
    from lmforge import safe_dcp  # as _dcp: only where a run resumes

    with _quiet_single_process():  # through admitted classes only: a hostile file runs nothing
        safe_dcp.load(state, path / STATE_DIR, no_dist=not _in_group())
    dicts = _dcp().state_dict
    dicts.set_model_state_dict(model, state["model"],
                               options=dicts.StateDictOptions(strict=not adapters_only))
    dicts.set_optimizer_state_dict(model, optimizer, state["optim"])
    return read_trainer_state(path)
