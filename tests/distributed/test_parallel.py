"""Training on several processes: real torchrun launches, real gloo process groups.

Every strategy must give the losses of one process with the same global batch; a run saved
on some number of ranks must continue on another as if nothing happened; torchrun's
multi-node rendezvous and elastic restarts must work; a vanished peer must end the run
with a clear error instead of a hang.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    QUIET,
    TINY_MODEL,
    children,
    command,
    environment,
    json_corpus,
    losses,
    options,
    train_losses,
    val_losses,
    wait_for_step,
)
from helpers import run as run_command
from helpers import torchrun as torchrun_cmd

STEPS = 20
# A tiny model; 4 heads so that 2-way tensor parallelism has whole heads on each rank. Every
# command gives its own train.batch_size.
TINY = options(TINY_MODEL, QUIET, {
    "model.n_head": "4", "train.log_every": "1", "eval.every": "10", "eval.batches": "2",
    "checkpoint.every": "10", "optim.warmup_steps": "5", "train.record_samples": "true",
    "data.path": "data/json", "data.source": "",
    "train.precision": "fp32"})  # float32: these tests compare code paths at tight tolerances (bf16 has its own test)
GLOBAL_BATCH = 8


def run(cmd, *, cwd, timeout=300, check=True):
    return run_command(cmd, cwd=cwd, timeout=timeout, check=check, threads=1)


def torchrun(nproc, *args, extra=()):
    return torchrun_cmd(nproc, "train", *TINY, *args, extra=extra)


def single(*args):
    return command("train", *TINY, *args)


def windows_by_step(run_dir: Path) -> dict[int, list[int]]:
    """Every window start any rank trained on, per step, from the samples-rankN records."""
    seen: dict[int, list[int]] = {}
    for path in run_dir.glob("samples-rank*.jsonl"):
        for line in path.read_text().splitlines():
            r = json.loads(line)
            seen.setdefault(r["step"], []).extend(r["starts"])
    return {step: sorted(starts) for step, starts in seen.items()}


def assert_same_run(run_dir: Path, reference: Path, *, tol: float = 1e-5) -> None:
    got, want = losses(run_dir), losses(reference)
    assert len(got) == len(want) == STEPS
    assert np.max(np.abs(np.array(got) - np.array(want))) < tol, (got, want)
    ev, ref = val_losses(run_dir), val_losses(reference)
    assert sorted(ev) == sorted(ref)
    assert all(abs(ev[s] - ref[s]) < tol for s in ev)
    assert windows_by_step(run_dir) == windows_by_step(reference)  # none skipped or repeated


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A char-level dataset of the json package's sources and the one-process reference run."""
    work = json_corpus(tmp_path_factory, "parallel")
    run(single(f"--train.max_steps={STEPS}", f"--train.batch_size={GLOBAL_BATCH}",
               "--run.dir=runs/single"), cwd=work)
    return work


@pytest.mark.parametrize(("strategy", "nproc", "micro", "extra"), [
    ("ddp", 2, 4, []),
    ("fsdp", 2, 4, []),  # ZeRO-3
    ("fsdp", 2, 4, ["--parallel.reshard_after_forward=false"]),  # ZeRO-2
    ("tp", 2, 8, []),
    ("fsdp+tp", 4, 4, []),  # 2 x 2 mesh
    ("fsdp", 2, 4, ["--parallel.activation_checkpointing=true"]),
], ids=["ddp", "fsdp-zero3", "fsdp-zero2", "tp", "fsdp+tp", "fsdp-ac"])
def test_strategy_matches_one_process(work, strategy, nproc, micro, extra):
    name = f"runs/{strategy}-{nproc}-{'-'.join(e.split('.')[-1] for e in extra)}"
    proc = run(torchrun(nproc, f"--train.max_steps={STEPS}", f"--train.batch_size={micro}",
                        f"--parallel.strategy={strategy}", f"--run.dir={name}", *extra), cwd=work)
    assert f"= {GLOBAL_BATCH} sequences" in proc.stderr  # the global batch is printed
    assert_same_run(work / name, work / "runs" / "single")
    # only rank 0 writes metrics: one record per step
    lines = (work / name / "metrics.jsonl").read_text().splitlines()
    assert sum('"kind": "train"' in line for line in lines) == STEPS


# Llama-shaped, with grouped-query attention: 4 query heads over 2 key/value heads, so 2-way
# tensor parallelism gives each rank one key/value head and the two query heads it serves
GQA = ["--model.norm=rmsnorm", "--model.mlp=swiglu", "--model.pos=rope", "--model.n_kv_head=2"]


@pytest.mark.parametrize(("strategy", "micro"), [("tp", 8), ("fsdp", 4)])
def test_grouped_query_attention_splits_as_one_process(work, strategy, micro):
    reference = work / "runs" / "gqa-single"
    if not reference.exists():
        run(single(f"--train.max_steps={STEPS}", f"--train.batch_size={GLOBAL_BATCH}",
                   f"--run.dir={reference}", *GQA), cwd=work)
    name = f"runs/gqa-{strategy}"
    run(torchrun(2, f"--train.max_steps={STEPS}", f"--train.batch_size={micro}",
                 f"--parallel.strategy={strategy}", f"--run.dir={name}", *GQA), cwd=work)
    assert_same_run(work / name, reference)


def test_saved_on_two_fsdp_ranks_resumes_on_one_and_on_four(work):
    run(torchrun(2, f"--train.max_steps={STEPS}", "--train.batch_size=4",
                 "--parallel.strategy=fsdp", "--run.dir=runs/saved2"), cwd=work)
    # on one rank the global batch of 8 comes back by accumulating two micro-batches of 4,
    # on four by giving each rank 2
    for nproc, settings in ((1, []), (4, ["--train.batch_size=2"])):
        resumed = work / "runs" / f"resumed{nproc}"
        shutil.copytree(work / "runs" / "saved2", resumed)
        shutil.rmtree(resumed / "checkpoints" / f"step_{STEPS:08d}")  # back to step 10
        args = ["train", "--resume", resumed, *settings]
        proc = run(command(*args) if nproc == 1 else
                   torchrun_cmd(nproc, *args, "--parallel.strategy=fsdp"), cwd=work)
        assert "at step 10 (saved on 2 processes)" in proc.stderr
        if nproc == 1:
            assert "train.grad_accum 1 -> 2 keeps the global batch of 8 sequences" in proc.stderr
            assert "grad_accum = 2" in (resumed / "config.toml").read_text()
        assert_same_run(resumed, work / "runs" / "single")


def test_another_global_batch_on_resume_is_refused(work):
    proc = run(command("train", "--resume", "runs/single", "--train.batch_size=3",
                       "--train.max_steps=30"), cwd=work, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "global batch of 8 sequences, and train.batch_size=3 on 1" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_with_c10d_rendezvous(work):
    endpoint = f"127.0.0.1:{free_port()}"
    nodes = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node-rank={rank}",
         "--nproc-per-node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}",
         "--rdzv-id=lmforge-test", "-m", "lmforge", "train", *TINY,
         f"--train.max_steps={STEPS}", "--train.batch_size=4", "--run.dir=runs/two-nodes"],
        cwd=work, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=environment(threads=1))
        for rank in range(2)]
    outputs = [node.communicate(timeout=300) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    assert_same_run(work / "runs" / "two-nodes", work / "runs" / "single")


def test_elastic_restart_after_a_killed_worker_continues_the_run(work):
    steps = ["--train.max_steps=600", "--checkpoint.every=100", "--eval.every=0",
             "--train.batch_size=4", "--train.record_samples=false"]
    run(torchrun(2, *steps, "--run.dir=runs/straight"), cwd=work)
    # As `lmforge train --nproc` launches it: torchrun's store not shared with the workers,
    # else a restarted group can read the last one's addresses and fail to connect.
    env = {**environment(threads=1), "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
    name = "elastic"
    # a short collective timeout turns a hung restart into one more restart
    proc = subprocess.Popen(torchrun(2, *steps, f"--run.dir=runs/{name}",
                                     "--parallel.timeout_s=20", extra=["--max-restarts=3"]),
                            cwd=work, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    wait_for_step(proc, work / "runs" / name, 150)
    workers = children(proc.pid)
    assert len(workers) == 2
    os.kill(workers[1], signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert "restart 1: continuing" in err and "resumed from" in err  # the first restart held
    assert "connectFullMesh failed" not in err and "shares its rendezvous store" not in err
    straight, elastic = (train_losses(work / "runs" / n) for n in ("straight", name))
    assert sorted(elastic) == list(range(1, 601))
    assert all(elastic[s] == straight[s] for s in straight)


def test_a_stuck_peer_ends_the_run_with_a_clear_error(work):
    proc = subprocess.Popen(torchrun(2, "--train.max_steps=100000", "--train.batch_size=4",
                                     "--checkpoint.every=0", "--eval.every=0",
                                     "--parallel.timeout_s=3", "--run.dir=runs/stuck",
                                     "--train.record_samples=false"),
                            cwd=work, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=environment(threads=1))
    try:
        wait_for_step(proc, work / "runs" / "stuck", 20)
        survivor, stuck = children(proc.pid)
        os.kill(stuck, signal.SIGSTOP)  # alive but silent: the worst kind of peer
        start = time.monotonic()
        while time.monotonic() - start < 60 and Path(f"/proc/{survivor}").exists() and \
                Path(f"/proc/{survivor}/stat").read_text().split()[2] != "Z":
            time.sleep(0.1)
        waited = time.monotonic() - start
        os.kill(stuck, signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert waited < 30, f"the surviving rank waited {waited:.0f}s"
    assert proc.returncode != 0
    line = next(ln for ln in err.splitlines() if "lmforge train: error" in ln)
    assert "rank 0 lost contact with another process" in line and "--resume" in line
