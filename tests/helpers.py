"""What the tests share: running the real CLI (one process or a torchrun job), reading what
a run wrote, and the tiny model and settings of every test run."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import sysconfig
import threading
import time
from pathlib import Path

STDLIB = Path(sysconfig.get_paths()["stdlib"])


# ---------------------------------------------------------------------------- processes

def environment(threads: int | None = None) -> dict[str, str]:
    """This process's environment; threads=1 keeps a child to one OpenMP thread: a tiny model
    gains nothing from two, and on a shared 2-core machine spinning threads slow everyone down."""
    return {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}


def command(*args) -> list[str]:
    """The command line of `python -m lmforge ARGS`."""
    return [sys.executable, "-m", "lmforge", *map(str, args)]


def torchrun(nproc: int, *args, extra=()) -> list[str]:
    """The command line of `lmforge ARGS` on `nproc` processes of one machine, started by
    torchrun (`extra`: torchrun's own options)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={nproc}", *extra, "-m", "lmforge", *map(str, args)]


def run(cmd: list[str], *, cwd, check: bool = True, threads: int | None = None,
        timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    """`cmd` in a subprocess, its output captured; fails the test on a non-zero exit unless
    check=False."""
    proc = subprocess.run(cmd, cwd=cwd, text=True, capture_output=True, env=environment(threads),
                          timeout=timeout, **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd[2:]))} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def lmforge(*args, cwd, check: bool = True, threads: int | None = None,
            **kwargs) -> subprocess.CompletedProcess:
    """`python -m lmforge ARGS` in a subprocess (see run)."""
    return run(command(*args), cwd=cwd, check=check, threads=threads, **kwargs)


def kill_after(args, *, marker: Path, cwd, threads: int | None = None, timeout: float = 120) -> None:
    """Start `lmforge ARGS`, SIGKILL it as soon as `marker` (a checkpoint) exists, and check
    that it was killed rather than finished."""
    proc = subprocess.Popen(command(*args), cwd=cwd, env=environment(threads),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"


def children(pid: int) -> list[int]:
    """The process ids of `pid`'s children (torchrun's workers)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def wait_for_step(proc: subprocess.Popen, run_dir: Path, step: int, *,
                  timeout: float = 120) -> None:
    """Until the run that `proc` writes into `run_dir` has logged `step` or a later one; fails
    if the process ends first or `timeout` seconds pass."""
    metrics, deadline = Path(run_dir) / "metrics.jsonl", time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if metrics.is_file() and last_step(metrics) >= step:
            return
        time.sleep(0.01)
    raise AssertionError(f"the run ended or stalled before step {step}")


def last_step(metrics: Path) -> int:
    """The highest step among the last few records of a metrics.jsonl that is being written
    (0 before any): read from its end, so that polling a long run costs little."""
    with open(metrics, "rb") as fh:
        fh.seek(max(0, fh.seek(0, os.SEEK_END) - 2000))
        tail = fh.read().decode(errors="replace")
    return max(map(int, re.findall(r'"step": (\d+)', tail)), default=0)


def sigterm_once_training(*, after: float = 0.0) -> threading.Thread:
    """Start a thread that sends this very process SIGTERM `after` seconds after the training
    loop has installed its handler, as a scheduler would; join it once fit() returns."""
    before = signal.getsignal(signal.SIGTERM)

    def preempt():
        while signal.getsignal(signal.SIGTERM) == before:
            time.sleep(0.01)
        time.sleep(after)
        os.kill(os.getpid(), signal.SIGTERM)

    sender = threading.Thread(target=preempt, daemon=True)
    sender.start()
    return sender


def json_corpus(tmp_path_factory, name: str) -> Path:
    """A fresh work directory whose data/json holds the json package's sources, prepared with
    a char tokenizer: the small real corpus of the end-to-end tests."""
    work = tmp_path_factory.mktemp(name)
    lmforge("prepare", "--data", str(STDLIB / "json" / "*.py"), "--tokenizer", "char",
            "--out", "data/json", cwd=work, threads=1)
    return work


# ---------------------------------------------------------------------------- what a run wrote

def records(run: Path, kind: str) -> list[dict]:
    """The metrics.jsonl records of one kind (train, eval, state), in the order written."""
    lines = (Path(run) / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def losses(run_dir: Path) -> list[float]:
    """The train losses in the order written: a step logged twice shows twice."""
    return [r["loss"] for r in records(run_dir, "train")]


def train_losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in records(run_dir, "train")}


def val_losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["val_loss"] for r in records(run_dir, "eval")}


def rewind(run_dir: Path, step: int) -> None:
    """Make the checkpoint of `step` the latest, as if the run had died right after it."""
    (Path(run_dir) / "checkpoints" / "latest").write_text(f"step_{step:08d}\n")


def resumed_at(cfg, step: int):
    """Train `cfg` to its end, then go back to its checkpoint of `step` as if the run had died
    right after it: the Trainer that continues from there (its checkpoint.every must save
    `step`, its checkpoint.keep_last keep it)."""
    trainer(cfg).fit()
    rewind(cfg.run.dir, step)
    return trainer(cfg, resume=True)


def assert_meta_build_equals_direct(model_class, cfg, *, seed: int = 5):
    """A model built on the meta device, then materialized on the CPU and initialized, is the
    model built directly with the same seed, its tied embedding still tied; both returned."""
    import torch

    with torch.device("meta"):
        meta = model_class(cfg)
    meta.to_empty(device="cpu")
    torch.manual_seed(seed)
    meta.init_weights()
    direct = model_class(cfg)
    torch.manual_seed(seed)
    direct.init_weights()
    assert meta.lm_head.weight is meta.wte.weight
    for (name, a), (_, b) in zip(meta.state_dict().items(), direct.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    return meta, direct


# ---------------------------------------------------------------------------- settings

# The tiny GPT of the tests: a second or two per run on the small real corpora below.
TINY_MODEL = {"model.n_layer": "2", "model.n_head": "2", "model.n_embd": "32",
              "model.block_size": "32", "train.batch_size": "4"}
# What every test run pins: no progress bar, no samples at the end, and no time limit, so
# that a busy machine never changes how many steps a test counts.
QUIET = {"train.progress": "false", "train.max_minutes": "0", "eval.samples": "0"}


def options(*layers: dict[str, str]) -> list[str]:
    """--key=value arguments from dicts of settings, later ones overriding earlier ones."""
    merged: dict[str, str] = {}
    for layer in layers:
        merged.update(layer)
    return [f"--{key}={value}" for key, value in merged.items()]


def tiny_config(dataset: Path, run_dir: Path, *layers: dict[str, str]):
    """The config of an in-process training test: the tiny GPT (context 16, 30 steps, no
    checkpoints, no TensorBoard) on `dataset` in `run_dir`, with `layers` on top."""
    from lmforge.config import load_config

    settings = {**TINY_MODEL, **QUIET, "model.block_size": "16", "train.max_steps": "30",
                "checkpoint.every": "0", "eval.batches": "2", "log.to": "none",
                "data.path": str(dataset), "data.source": "", "run.dir": str(run_dir)}
    for layer in layers:
        settings.update(layer)
    return load_config("default", settings)


def trainer(cfg, *, resume: bool = False, task=None):
    """A Trainer for `cfg` in this process; resume=True continues cfg.run.dir from its latest
    intact checkpoint, as `lmforge train --resume` does. `task` (lmforge.tasks: its head and
    objective) trains for a task instead of language modeling."""
    from lmforge import checkpoint
    from lmforge.plan import local_plan
    from lmforge.rundir import RunDir
    from lmforge.train.trainer import Trainer

    run = RunDir(Path(cfg.run.dir))
    path = checkpoint.find_checkpoint(run, "latest") if resume else None
    hooks = {} if task is None else {"wrap": task.wrap, "objective": task.objective}
    made = Trainer(local_plan(cfg, run, resume_from=path), **hooks)
    if path is not None:
        made.restore(path)
    return made
