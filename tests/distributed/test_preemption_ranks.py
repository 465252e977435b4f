"""A signal that reaches one rank stops every rank at the same step, with one checkpoint."""

import os
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

STDLIB = Path(sysconfig.get_paths()["stdlib"])
TINY = ["--model.n_layer=2", "--model.n_head=2", "--model.n_embd=32", "--model.block_size=32",
        "--train.batch_size=4", "--train.log_every=1", "--train.progress=false",
        "--eval.every=0", "--eval.batches=2", "--eval.samples=0", "--checkpoint.every=0",
        "--train.report=false", "--train.max_steps=2000", "--data.path=data",
        "--data.source=", "--parallel.strategy=ddp"]


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def test_sigterm_to_one_worker_stops_both_at_the_same_step(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "lmforge", "prepare", "--data",
                    str(STDLIB / "json" / "*.py"), "--tokenizer", "char", "--out", "data"],
                   cwd=tmp_path, env=env, check=True, capture_output=True, timeout=300)
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             "--nproc-per-node=2", "-m", "lmforge", "train", *TINY,
                             f"--run.dir={run}"], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    metrics, deadline = run / "metrics.jsonl", time.time() + 240
    while not (metrics.is_file() and '"step": 10,' in metrics.read_text()):
        assert proc.poll() is None and time.time() < deadline, "the run did not reach step 10"
        time.sleep(0.05)
    workers = children(proc.pid)
    assert len(workers) == 2
    # Only the last worker hears it (rank 1, not the one that logs): both must stop.
    os.kill(sorted(workers)[-1], signal.SIGTERM)
    _, stderr = proc.communicate(timeout=240)
    steps = [r for r in metrics.read_text().splitlines() if '"kind": "train"' in r]
    stopped = len(steps)
    assert 10 <= stopped < 2000, stderr[-2000:]
    assert f"stopped at step {stopped} on SIGTERM" in stderr
    assert (run / "checkpoints" / "latest").read_text().strip() == f"step_{stopped:08d}"
    # the workers say "stopped, not finished" (128 + SIGTERM); torchrun reports a failure
    assert proc.returncode != 0 and "exitcode  : 143" in stderr
