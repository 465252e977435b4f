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
