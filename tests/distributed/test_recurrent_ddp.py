"""Recurrent models on several processes: real torchrun launches, real gloo groups.

Truncated BPTT under data parallelism: each rank reads its share of the streams and carries
their hidden state, so two ranks with half the batch each must give the losses of one
process with the whole batch; a run saved on two ranks must continue on one, every stream
with its own hidden state; tensor parallelism, which has nothing to split in a recurrent
network, must say so.
"""

import shutil
from pathlib import Path

import pytest
from helpers import QUIET, STDLIB, TINY_MODEL, command, options, rewind, train_losses, val_losses
from helpers import run as run_command
from helpers import torchrun as torchrun_cmd

STEPS = 12
# the tiny model as an LSTM (model.n_head does not apply to a recurrent model); every command
# gives its own train.batch_size
TINY = options(TINY_MODEL, QUIET, {
    "model.arch": "lstm", "train.max_steps": str(STEPS), "train.log_every": "1",
    "eval.every": "6", "eval.batches": "2", "checkpoint.every": "6", "checkpoint.keep_last": "4",
    "optim.warmup_steps": "3", "model.dropout": "0.0", "data.path": "data", "data.source": "",
    "log.to": "none", "train.report": "false",
    "train.precision": "fp32"})  # float32: these tests compare code paths at tight tolerances (bf16 has its own test)
GLOBAL_BATCH = 8


def run(cmd, *, cwd, check=True):
    return run_command(cmd, cwd=cwd, check=check, threads=1, timeout=300)


def torchrun(*args):
    return torchrun_cmd(2, *args)


def assert_same_losses(run_dir: Path, reference: Path, *, start: int = 1) -> None:
    got, want = train_losses(run_dir), train_losses(reference)
    assert sorted(got) == list(range(1, STEPS + 1))
    for step in range(start, STEPS + 1):
        assert got[step] == pytest.approx(want[step], abs=1e-5), step
    got, want = val_losses(run_dir), val_losses(reference)
    assert sorted(got) == sorted(want) == [6, 12]
    for step in got:
        assert got[step] == pytest.approx(want[step], abs=1e-5)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A tiny char-level corpus, and the one-process run everything is compared with."""
    work = tmp_path_factory.mktemp("rnn-ddp")
    text = "".join(p.read_text() for p in sorted((STDLIB / "json").glob("*.py")))
    (work / "corpus.txt").write_text(text)
    run(command("prepare", "--data", "corpus.txt", "--out", "data", "--tokenizer", "char",
                "--no-progress"), cwd=work)
    run(command("train", *TINY, f"--train.batch_size={GLOBAL_BATCH}", "--run.dir=single"), cwd=work)
    return work


def test_ddp_matches_one_process_and_resumes_on_one(work):
    run(torchrun("train", *TINY, f"--train.batch_size={GLOBAL_BATCH // 2}",
                 "--parallel.strategy=ddp", "--run.dir=ddp"), cwd=work)
    assert_same_losses(work / "ddp", work / "single")

    # Back to the checkpoint of step 6, written by two ranks, and on with one process that
    # reads all 8 streams: each must get the hidden state its rank had.
    shutil.copytree(work / "ddp", work / "resumed")
    rewind(work / "resumed", 6)
    proc = run(command("train", "--resume", "resumed", f"--train.batch_size={GLOBAL_BATCH}",
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
