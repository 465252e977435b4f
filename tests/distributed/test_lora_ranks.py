"""LoRA on two gloo ranks: DDP and FSDP2 (whose blocks then mix frozen base weights and
trainable adapters) give the losses of one process with the same global batch, and an FSDP
run's adapter checkpoint continues on one process."""

from __future__ import annotations

import shutil

import pytest
from helpers import QUIET, TINY_MODEL, command, json_corpus, options, rewind, torchrun, train_losses
from helpers import run as run_command

TINY = options(TINY_MODEL, QUIET, {
    "train.log_every": "1", "eval.every": "10", "eval.batches": "2", "checkpoint.every": "10",
    "optim.warmup_steps": "5", "data.path": "data/json", "train.precision": "fp32",
    "log.to": "none", "train.report": "false", "train.max_steps": "20",
    "lora.r": "4", "lora.alpha": "8", "optim.lr": "1e-2"})  # no dropout: it differs by rank


def run(cmd, *, cwd):
    return run_command(cmd, cwd=cwd, timeout=300, threads=1)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    work = json_corpus(tmp_path_factory, "lora-ranks")
    run(command("train", *TINY, "--train.batch_size=8", "--run.dir=runs/one"), cwd=work)
    return work


def assert_close(got: dict[int, float], want: dict[int, float]) -> None:
    assert sorted(got) == sorted(want) == list(range(1, 21))
    assert max(abs(got[s] - want[s]) for s in got) < 1e-5, (got, want)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_ranks_train_the_adapters_as_one_process_does(work, strategy):
    run(torchrun(2, "train", *TINY, "--train.batch_size=4", f"--parallel.strategy={strategy}",
                 f"--run.dir=runs/{strategy}"), cwd=work)
    assert_close(train_losses(work / "runs" / strategy), train_losses(work / "runs" / "one"))
    if strategy == "fsdp":  # sharded adapters saved on 2 ranks continue on 1
        resumed = work / "runs" / "fsdp-on-one"
        shutil.copytree(work / "runs" / "fsdp", resumed)
        rewind(resumed, 10)
        shutil.rmtree(resumed / "checkpoints" / "step_00000020")
        run(command("train", "--resume", resumed, "--train.batch_size=8"), cwd=work)
        assert_close(train_losses(resumed), train_losses(work / "runs" / "one"))
