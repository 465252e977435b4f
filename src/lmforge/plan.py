"""From what the user asked for to a resolved, frozen plan of one training run.

`lmforge train` is asked for a recipe and overrides (a new run), or a run directory to
continue (`--resume`), in some environment (one process, or a rank of a torchrun job,
possibly one restarted by torchrun after a failure). Everything that follows from that is
decided here, once, before a model exists:

- the config, loaded once in each process, then resolved by rank 0 alone (the model of
  `--init-from`, the vocabulary of the dataset, absolute paths) and shared with every rank;
- the run directory (a new one, never one that holds a run, or the one being continued);
- the dataset, prepared first when `data.source` names a corpus and `data.path` is empty;
- the checkpoint to resume from, checked against the config and the dataset's tokenizer;
- this process's device, compute precision and parallel strategy.

The `RunPlan` that comes out is what the trainer takes; nothing downstream changes it.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from lmforge import checkpoint
from lmforge.config import Config, load_config, require_trackers, validate, validate_lora
from lmforge.console import log, report_error
from lmforge.data import shards
from lmforge.data.tokenizer import tokenizer_digest
from lmforge.distributed import elastic, env
from lmforge.distributed.device import compute_dtype, resolve_device
from lmforge.distributed.env import SINGLE, DistInfo
from lmforge.distributed.parallelize import (
    TENSOR_PARALLEL,
    check_tensor_parallel,
    resolve_strategy,
)
from lmforge.errors import CheckpointError, ConfigError, LmforgeError
from lmforge.files import DISK_FULL
from lmforge.interop import init_from, lora
from lmforge.locks import DirectoryLock
from lmforge.models import build_model
from lmforge.recipes import recipe_path
from lmforge.rundir import RunDir, new_run_dir, read_run_config, write_config


@dataclass(frozen=True)
class TrainRequest:
    """What `lmforge train` was asked: a recipe (None: the default) or a run to resume, and
    `--section.field` overrides (`--init-from DIR` arrives as run.init_from)."""

    recipe: str | None = None
    resume: Path | None = None
    overrides: dict[str, str] | None = None
    verb: str = "train"  # the command, for its errors (lmforge finetune trains too)


@dataclass(frozen=True)
class RunPlan:
    """One process's part in one training run, resolved. `cfg` is the plan's own copy."""

    cfg: Config
    run: RunDir
    info: DistInfo
    device: torch.device
    compute_dtype: torch.dtype
    strategy: str
    resume_from: Path | None = None  # the intact checkpoint to continue from
    resume_step: int = 0  # its step
    restart: bool = False  # a run that stopped before its first checkpoint, trained again

    @property
    def is_main(self) -> bool:
        return self.info.is_main


@dataclass(frozen=True)
class _Decision:
    """What rank 0 decides and every rank receives."""

    cfg: Config
    run: RunDir
    resume_from: Path | None = None
    resume_step: int = 0
    restart: bool = False


def local_plan(cfg: Config, run_dir: Path | RunDir, *, resume_from: Path | None = None,
               resume_step: int = 0) -> RunPlan:
    """The plan of a run in this process alone (tests, `lmforge bench`, `lmforge compare`),
    from a loaded config: its model sized to the dataset's vocabulary."""
    cfg = copy.deepcopy(cfg)
    fit_vocab(cfg)
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(Path(run_dir))
    return _plan(_Decision(cfg, run, resume_from, resume_step), SINGLE)


def _plan(decision: _Decision, info: DistInfo) -> RunPlan:
    cfg = decision.cfg
    device = resolve_device(cfg.train.device, local_rank=info.local_rank)
    return RunPlan(cfg=cfg, run=decision.run, info=info, device=device,
                   compute_dtype=compute_dtype(cfg.train.precision, device),
                   strategy=resolve_strategy(cfg.parallel.strategy, info),
                   resume_from=decision.resume_from, resume_step=decision.resume_step,
                   restart=decision.restart)


@contextlib.contextmanager
def planned_run(request: TrainRequest) -> Iterator[RunPlan]:
    """The plan of `request` for this process, inside the job's process group when torchrun
    started it (joined here, left on exit). A peer lost while the body runs becomes a
    one-line LmforgeError instead of gloo's or NCCL's RuntimeError."""
    info, run = SINGLE, None
    held = contextlib.ExitStack()  # rank 0's lock on the run directory, while it trains
    try:
        cfg = _load(request)
        if env.launched_by_torchrun():
            # Join first, with the config's timeout, so rank 0 can share what it decides.
            p = cfg.parallel
            info = env.init(device_type=resolve_device(cfg.train.device).type,
                            strategy=p.strategy, tp=p.tp, timeout_s=p.timeout_s)
        decided: _Decision | LmforgeError | None = None
        if info.is_main:
            try:
                decided = _decide(request, cfg, info, held)
                check_parallel(decided.cfg, info)
            except LmforgeError as err:
                if info.distributed:  # said before the others hear of it (see below)
                    report_error(request.verb, err)
                decided = err
        decided = env.broadcast_object(decided, info)  # every rank stops alike on a bad input
        if isinstance(decided, LmforgeError):
            raise decided
        assert decided is not None
        run = decided.run
        yield _plan(decided, info)
    except LmforgeError as err:
        # Under torchrun, once any rank has exited torchrun ends the others: rank 0 says what
        # they all stopped on now, not after leaving the process group, lest it be ended first.
        if info.distributed:
            report_error(request.verb, err)
        raise
    except RuntimeError as err:  # gloo reports a vanished peer as a plain RuntimeError
        if info.distributed and env.is_peer_failure(err):
            raise LmforgeError(env.lost_peer_message(err, info)) from None
        raise
    except OSError as err:  # metrics, samples, plots, the config: any write of the run
        if err.errno not in DISK_FULL:
            raise
        raise LmforgeError(_out_of_space(err, run)) from None
    finally:
        held.close()
        env.teardown()


def check_parallel(cfg: Config, info: DistInfo) -> None:
    """Refuse a strategy this job cannot run, or a model tensor parallelism cannot split,
    as rank 0 decides the run: each rank would find the same when building it, but torchrun
    ends every process as soon as one has exited, which could end rank 0 before it said why.
    The model is built on the meta device, to ask its parallel plan (nothing allocated)."""
    strategy = resolve_strategy(cfg.parallel.strategy, info)
    if strategy not in TENSOR_PARALLEL:
        return
    with torch.device("meta"):
        plan = build_model(cfg.model).parallel_plan()
    check_tensor_parallel(plan, tp=info.tp_size, strategy=strategy)


def _out_of_space(err: OSError, run: RunDir | None) -> str:
    what = f"{err.filename} " if err.filename else ""
    if run is None or not run.has_checkpoint():
        return (f"out of disk space writing {what}({err.strerror}); no checkpoint was saved; "
                "free space and train again")
    return (f"out of disk space writing {what}({err.strerror}); the last checkpoint "
            f"({run.pointer('latest')}) is kept; free space, then `lmforge train --resume {run}`")


def _load(request: TrainRequest) -> Config:
    overrides = request.overrides or {}
    if request.resume is None:
        return load_config(request.recipe, overrides)
    if request.recipe:
        raise LmforgeError("give a recipe for a new run or --resume RUN for an old one, not both")
    if "run.init_from" in overrides:
        raise LmforgeError("--init-from starts a new run; a resumed run continues from its "
                           "own checkpoint, so drop --init-from or --resume")
    return read_run_config(RunDir(request.resume), overrides)


def _decide(request: TrainRequest, cfg: Config, info: DistInfo,
            held: contextlib.ExitStack) -> _Decision:
    """Rank 0: the run directory (locked in `held`: one process trains a run at a time), the
    resolved config and the resume point."""
    require_trackers(cfg.log)  # before a run directory exists: a missing package is one line
    if request.resume is not None:
        held.enter_context(DirectoryLock(request.resume, what="train"))
        return _resume(RunDir(request.resume), cfg, info)
    restarting = env.restart_count() > 0
    warning = elastic.shared_store_warning(dict(os.environ))
    if warning and not restarting:  # once, at the first start
        log(warning)
    if restarting:  # torchrun restarted the group after a failure: continue the run
        found = elastic.find_run(cfg)
        if found is not None and RunDir(found).has_checkpoint():
            held.enter_context(DirectoryLock(found, what="train"))
            log(f"restart {env.restart_count()}: continuing {found}")
            return _resume(RunDir(found), read_run_config(RunDir(found), request.overrides), info)
        if found is not None:  # it failed before its first checkpoint: start it again there
            cfg.run.dir = str(found)
    decision = _new_run(cfg, recipe=request.recipe, explicit=request.overrides or {},
                        restarting=restarting, held=held)
    return dataclasses.replace(decision, restart=restarting)


def _new_run(cfg: Config, *, recipe: str | None, explicit: dict[str, str],
             restarting: bool, held: contextlib.ExitStack) -> _Decision:
    init_note = init_from.resolve_config(cfg, explicit=explicit) if cfg.run.init_from else ""
    validate_lora(cfg)  # again: the architecture may have come from --init-from
    name = recipe_path(recipe or "default").stem
    run = new_run_dir(cfg, recipe_name=name, restarting=restarting)
    held.enter_context(DirectoryLock(run.path, what="train"))
    # another process may have taken the same new directory before the lock: ask again
    if new_run_dir(cfg, recipe_name=name, restarting=restarting) != run:
        raise LmforgeError(f"{run} was taken by another run as this one started; start again")
    cfg.run.dir = str(run)
    if not (Path(cfg.data.path) / shards.MANIFEST).is_file():  # else it is prepared already
        from lmforge.data.prepare import ensure_dataset  # the pipeline: only to prepare data

        ensure_dataset(cfg, log=log)
    # Absolute, so that eval and generate find the data from any working directory.
    cfg.data.path = str(Path(cfg.data.path).resolve())
    if cfg.run.init_from:  # first: its message says more than fit_vocab's would
        tokenizer_note = init_from.check_tokenizer(cfg)
        log(init_note)
        if tokenizer_note:
            log(tokenizer_note)
    fit_vocab(cfg)
    write_config(cfg, run)
    elastic.record_run(run.path)
    return _Decision(cfg, run)


def _resume(run: RunDir, cfg: Config, info: DistInfo) -> _Decision:
    """Continue `run` from its newest intact checkpoint, after checking that the checkpoint
    fits the config and that the dataset still has the run's tokenizer."""
    checkpoint.clean_partial(run)
    if not run.checkpoint_names():  # stopped before its first checkpoint (during start-up?)
        check_tokenizer(cfg, run)
        write_config(cfg, run)
        log(f"{run} has no checkpoint yet (it stopped before its first one): training it from "
            "step 0 with its saved config")
        return _Decision(cfg, run, restart=True)
    path = checkpoint.find_checkpoint(run, "latest")
    for name, dest in checkpoint.set_aside_damaged(run, resume_from=path):
        log(f"moved the damaged {name} aside to {dest} (kept, not deleted); its steps are "
            f"trained again from {path.name}")
    meta = checkpoint.verify(path)
    checkpoint.check_model_config(meta, asdict(cfg.model), path=path)
    lora.check_resume(meta.lora, cfg, path=path)
    check_tokenizer(cfg, run)
    saved = read_run_config(run)
    if Path(saved.data.path).resolve() != Path(cfg.data.path).resolve():
        log(f"note: {run} continues on {cfg.data.path}, not on the dataset it was trained on "
            f"({saved.data.path}); both have its tokenizer")
    try:
        batch = int(checkpoint.read_trainer_state(path)["loader"]["global_batch"])
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"{path}/trainer.pt has no global batch in its loader state; "
                              "the checkpoint is damaged or from another version: start a "
                              "new run") from None
    keep_global_batch(cfg, saved, batch, dp_size=info.dp_size)
    write_config(cfg, run)  # the overrides of this resume, for the next one
    return _Decision(cfg, run, resume_from=path, resume_step=meta.step)


def keep_global_batch(cfg: Config, saved: Config, batch: int, *, dp_size: int) -> None:
    """A run resumed on another number of data-parallel ranks keeps the global batch it was
    trained with, `batch` sequences (so the data order and the schedule continue), by
    changing train.grad_accum when some grad_accum gives it back; otherwise it cannot
    continue. The validation subset (eval.batches batches of eval.batch_size, or
    train.batch_size, sequences per rank) keeps its size too. `saved` is the run's config as
    it was saved, before this resume's overrides."""
    t = cfg.train
    per_micro = t.batch_size * dp_size
    if batch == per_micro * t.grad_accum:
        return
    if batch % per_micro:
        raise ConfigError(
            f"the checkpoint was trained with a global batch of {batch} sequences, and "
            f"train.batch_size={t.batch_size} on {dp_size} data-parallel rank(s) divides it by "
            f"no whole train.grad_accum; resume with a --train.batch_size that, times the "
            f"ranks, divides {batch}")
    log(f"resuming on {dp_size} data-parallel rank(s): train.grad_accum {t.grad_accum} -> "
        f"{batch // per_micro} keeps the global batch of {batch} sequences")
    t.grad_accum = batch // per_micro
    saved_dp = batch // (saved.train.batch_size * saved.train.grad_accum)
    evaluated = (saved.eval.batch_size or saved.train.batch_size) * saved_dp
    if cfg.eval.batch_size == saved.eval.batch_size and evaluated % dp_size == 0:
        cfg.eval.batch_size = evaluated // dp_size


def fit_vocab(cfg: Config) -> None:
    """model.vocab_size from the dataset's tokenizer (0 means: take it), or an error when the
    configured vocabulary is too small for the ids the dataset holds."""
    manifest = shards.read_manifest(Path(cfg.data.path))
    data_vocab = int(manifest["tokenizer"]["vocab_size"])
    if cfg.model.vocab_size == 0:
        cfg.model.vocab_size = data_vocab
        validate(cfg)  # the sizes again, with the vocabulary the config could only guess
    elif cfg.model.vocab_size < data_vocab:
        raise ConfigError(f"model.vocab_size={cfg.model.vocab_size} is smaller than the "
                          f"dataset's tokenizer ({data_vocab}); set it to 0 to take the tokenizer's")


def check_tokenizer(cfg: Config, run: RunDir) -> None:
    """The dataset a run resumes on must have the tokenizer it was trained with: the same
    ids with other meanings would train on noise without any error."""
    data = Path(cfg.data.path)
    theirs = data / shards.read_manifest(data)["tokenizer"]["dir"]
    if not run.tokenizer.is_dir():  # a run from before runs kept their tokenizer
        return
    if tokenizer_digest(run.tokenizer) != tokenizer_digest(theirs):
        raise ConfigError(f"the dataset at {data} has another tokenizer than the one {run} was "
                          f"trained with ({run.tokenizer}); resume with the run's own "
                          "data.path, or start a new run on this dataset")
