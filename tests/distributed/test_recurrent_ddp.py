"""Recurrent models on several processes: real torchrun launches, real gloo groups.

Truncated BPTT under data parallelism: each rank reads its share of the streams and carries
their hidden state, so two ranks with half the batch each must give the losses of one
process with the whole batch; a run saved on two ranks must continue on one, every stream
with its own hidden state; tensor parallelism, which has nothing to split in a recurrent
network, must say so.
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

STDLIB = Path(sysconfig.get_paths()["stdlib"])
STEPS = 12
TINY = ["--model.arch=lstm", "--model.n_layer=2", "--model.n_embd=32", "--model.block_size=32",
        f"--train.max_steps={STEPS}", "--train.log_every=1", "--train.progress=false",
        "--eval.every=6", "--eval.batches=2", "--eval.samples=0", "--checkpoint.every=6",
        "--checkpoint.keep_last=4", "--optim.warmup_steps=3", "--model.dropout=0.0",
        "--data.path=data", "--data.source=", "--train.tensorboard=false", "--train.report=false",
        "--train.precision=fp32"]  # float32: these tests compare code paths at tight tolerances (bf16 has its own test)
GLOBAL_BATCH = 8


def run(cmd, *, cwd, check=True):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=cwd, text=True, capture_output=True, timeout=300, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def lmforge(*args):
    return [sys.executable, "-m", "lmforge", *map(str, args)]


def torchrun(*args):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
            "-m", "lmforge", *map(str, args)]


def records(run_dir: Path, kind: str) -> dict[int, dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r for r in map(json.loads, lines) if r["kind"] == kind}


def assert_same_losses(run_dir: Path, reference: Path, *, start: int = 1) -> None:
    got, want = records(run_dir, "train"), records(reference, "train")
    assert sorted(got) == list(range(1, STEPS + 1))
    for step in range(start, STEPS + 1):
        assert got[step]["loss"] == pytest.approx(want[step]["loss"], abs=1e-5), step
    got, want = records(run_dir, "eval"), records(reference, "eval")
    assert sorted(got) == sorted(want) == [6, 12]
    for step in got:
        assert got[step]["val_loss"] == pytest.approx(want[step]["val_loss"], abs=1e-5)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A tiny char-level corpus, and the one-process run everything is compared with."""
    work = tmp_path_factory.mktemp("rnn-ddp")
    text = "".join(p.read_text() for p in sorted((STDLIB / "json").glob("*.py")))
    (work / "corpus.txt").write_text(text)
    run(lmforge("prepare", "--data", "corpus.txt", "--out", "data", "--tokenizer", "char",
                "--no-progress"), cwd=work)
    run(lmforge("train", *TINY, f"--train.batch_size={GLOBAL_BATCH}", "--run.dir=single"), cwd=work)
    return work


def test_ddp_matches_one_process_and_resumes_on_one(work):
    run(torchrun("train", *TINY, f"--train.batch_size={GLOBAL_BATCH // 2}",
                 "--parallel.strategy=ddp", "--run.dir=ddp"), cwd=work)
    assert_same_losses(work / "ddp", work / "single")

    # Back to the checkpoint of step 6, written by two ranks, and on with one process that
    # reads all 8 streams: each must get the hidden state its rank had.
    shutil.copytree(work / "ddp", work / "resumed")
    (work / "resumed" / "checkpoints" / "latest").write_text("step_00000006\n")
    proc = run(lmforge("train", "--resume", "resumed", f"--train.batch_size={GLOBAL_BATCH}",
                       "--parallel.strategy=auto"), cwd=work)
    assert "saved on 2 processes" in proc.stderr
    assert_same_losses(work / "resumed", work / "single", start=7)


def test_fsdp_matches_one_process(work):
    run(torchrun("train", *TINY, f"--train.batch_size={GLOBAL_BATCH // 2}",
                 "--parallel.strategy=fsdp", "--run.dir=fsdp"), cwd=work)
    assert_same_losses(work / "fsdp", work / "single")


def test_tensor_parallel_is_a_clear_error(work):
    proc = run(torchrun("train", *TINY, "--train.batch_size=4", "--parallel.strategy=tp",
                        "--run.dir=tp"), cwd=work, check=False)
    assert proc.returncode != 0
    # one line, from rank 0 (every rank stops alike; torchrun adds its report)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("lmforge train: error")]
    assert len(lines) == 1
    assert "tensor parallelism splits attention heads and MLPs, and model.arch=lstm has " \
        "neither; use parallel.strategy=ddp" in lines[0]
