"""What the end-to-end tests share: running the real CLI and reading what a run wrote."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

STDLIB = Path(sysconfig.get_paths()["stdlib"])


def lmforge(*args, cwd, check=True, threads: int | None = None, **kwargs):
    """`python -m lmforge ARGS` in a subprocess; fails the test on a non-zero exit unless
    check=False. threads=1 keeps each process to one OpenMP thread: a tiny model gains
    nothing from two, and on a shared 2-core machine spinning threads slow everyone down."""
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    proc = subprocess.run([sys.executable, "-m", "lmforge", *map(str, args)], cwd=cwd, text=True,
                          capture_output=True, env=env,
                          timeout=kwargs.pop("timeout", 600), **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(f"lmforge {args} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def records(run: Path, kind: str) -> list[dict]:
    """The metrics.jsonl records of one kind (train, eval, state)."""
    lines = (Path(run) / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def train_losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in records(run_dir, "train")}


def kill_after(args, *, marker: Path, cwd, threads: int | None = None, timeout: float = 120) -> None:
    """Start `lmforge ARGS`, SIGKILL it as soon as `marker` (a checkpoint) exists, and check
    that it was killed rather than finished."""
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    proc = subprocess.Popen([sys.executable, "-m", "lmforge", *map(str, args)], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"


def json_corpus(tmp_path_factory, name: str) -> Path:
    """A fresh work directory whose data/json holds the json package's sources, prepared with
    a char tokenizer: the small real corpus of the end-to-end tests."""
    work = tmp_path_factory.mktemp(name)
    lmforge("prepare", "--data", str(STDLIB / "json" / "*.py"), "--tokenizer", "char",
            "--out", "data/json", cwd=work, threads=1)
    return work


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
                "checkpoint.every": "0", "eval.batches": "2", "train.tensorboard": "false",
                "data.path": str(dataset), "data.source": "", "run.dir": str(run_dir)}
    for layer in layers:
        settings.update(layer)
    return load_config("default", settings)


def trainer(cfg, *, resume: bool = False):
    """A Trainer for `cfg` in this process; resume=True continues cfg.run.dir from its latest
    intact checkpoint, as `lmforge train --resume` does."""
    from lmforge import checkpoint
    from lmforge.plan import local_plan
    from lmforge.rundir import RunDir
    from lmforge.train.trainer import Trainer

    run = RunDir(Path(cfg.run.dir))
    if not resume:
        return Trainer(local_plan(cfg, run))
    path = checkpoint.find_checkpoint(run, "latest")
    resumed = Trainer(local_plan(cfg, run, resume_from=path))
    resumed.restore(path)
    return resumed
