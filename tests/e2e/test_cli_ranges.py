"""The worst numbers through the real CLI: each is one line `lmforge VERB: error: ...` and
exit code 2, raised when the config or the arguments are read, before the dataset is looked
at, a run directory is made or anything is built.

Each command runs in a child process limited to 4 GB of address space: a check that went
missing fails fast with a MemoryError (a traceback, exit 1) instead of growing until the
machine runs out of memory."""

from __future__ import annotations

import resource
import subprocess

import pytest
from helpers import command, environment

LIMIT = 4 << 30  # bytes of address space: torch and lmforge start in well under 1 GB
HUGE = "9223372036854775808"  # 2**63: one past the largest 64-bit integer
NOWHERE = ["--data.path=nowhere", "--data.source=", "--run.dir=run", "--train.progress=false"]


def limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (LIMIT, LIMIT))


def lmforge_limited(tmp_path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(command(*args), cwd=tmp_path, env=environment(threads=1), text=True,
                          capture_output=True, timeout=120, preexec_fn=limit_memory)


@pytest.mark.parametrize("args, message", [
    (["train", f"--model.n_layer={HUGE}"], "model.n_layer must be between 1 and 1,024"),
    (["train", f"--model.n_embd={HUGE}"], "model.n_embd must be between 1 and 65,536"),
    (["train", f"--train.batch_size={HUGE}"], "train.batch_size must be between 1 and"),
    (["train", f"--eval.batches={HUGE}"], "eval.batches must be between 0 and"),
    (["train", f"--optim.warmup_steps={HUGE}"], "optim.warmup_steps must be between 0 and"),
    (["train", "--model.n_layer=1024", "--model.n_embd=65536"], "parameters; lmforge builds"),
    (["train", "--train.batch_size=1048576"], "one training micro-batch"),
    (["train", "--eval.batch_size=-1"], "eval.batch_size must be 0 (train.batch_size) or more"),
    (["train", "--model.pos=rope", "--model.rope_theta=0"], "model.rope_theta must be in (1,"),
    (["train", "--clean.near_threshold=nan"], "clean.near_threshold must be a finite number"),
    (["prepare", "--data", "nowhere", "--out", "out", "--vocab-size", "100000000000"],
     "--vocab-size must be between 1 and 2,097,152"),
    (["prepare", "--data", "nowhere", "--out", "out", "--clean.near_num_perm=0"],
     "clean.near_num_perm must be at least 2"),
    (["generate", "nowhere", "--num-samples", "100000000"], "--num-samples must be at most"),
    (["generate", "nowhere", "--seed", str(2**64)], "--seed must be between 0 and 2**64 - 1"),
    (["generate", "nowhere", "--temperature", "nan"], "--temperature must be a finite number"),
    (["eval", "nowhere", "--batches", "100000000000"], "use --batches 0"),
    (["eval", "nowhere", "--batch-size", "100000000000"], "--batch-size must be at most"),
], ids=lambda x: x if isinstance(x, str) else " ".join(x)[:40])
def test_the_worst_numbers_are_one_line_and_exit_2(tmp_path, args, message):
    verb = args[0]
    proc = lmforge_limited(tmp_path, *args, *(NOWHERE if verb == "train" else []))
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"lmforge {verb}: error: "), proc.stderr
    assert message in lines[0], lines[0]  # the number, not the missing data or run
    assert not (tmp_path / "run").exists() and not (tmp_path / "out").exists()
