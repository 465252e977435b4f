"""A signal that reaches one rank stops every rank at the same step, with one checkpoint."""

import os
import signal
import subprocess

from helpers import (
    QUIET,
    TINY_MODEL,
    children,
    environment,
    json_corpus,
    options,
    records,
    torchrun,
    wait_for_step,
)

TINY = options(TINY_MODEL, QUIET, {
    "train.log_every": "1", "eval.every": "0", "eval.batches": "2", "checkpoint.every": "0",
    "train.report": "false", "train.max_steps": "2000", "data.path": "data/json",
    "data.source": "", "parallel.strategy": "ddp"})


def test_sigterm_to_one_worker_stops_both_at_the_same_step(tmp_path_factory):
    work = json_corpus(tmp_path_factory, "preempt")
    run = work / "run"
    proc = subprocess.Popen(torchrun(2, "train", *TINY, f"--run.dir={run}"), cwd=work,
                            env=environment(threads=1), text=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    wait_for_step(proc, run, 10, timeout=240)
    workers = children(proc.pid)
    assert len(workers) == 2
    # Only the last worker hears it (rank 1, not the one that logs): both must stop.
    os.kill(sorted(workers)[-1], signal.SIGTERM)
    _, stderr = proc.communicate(timeout=240)
    stopped = len(records(run, "train"))
    assert 10 <= stopped < 2000, stderr[-2000:]
    assert f"stopped at step {stopped} on SIGTERM" in stderr
    assert (run / "checkpoints" / "latest").read_text().strip() == f"step_{stopped:08d}"
    # the workers say "stopped, not finished" (128 + SIGTERM); torchrun reports a failure
    assert proc.returncode != 0 and "exitcode  : 143" in stderr
