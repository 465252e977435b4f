"""Stopping and breaking runs as a user (or a scheduler) does: real subprocesses, real
signals, real NaNs, and `lmforge verify-resume`."""

import signal
import subprocess

import pytest
from helpers import (
    QUIET,
    TINY_MODEL,
    command,
    environment,
    json_corpus,
    lmforge,
    options,
    records,
    train_losses,
    val_losses,
    wait_for_step,
)

# A tiny model on a small real corpus, one thread per process.
TINY = options(TINY_MODEL, QUIET, {
    "train.log_every": "1", "eval.every": "50", "eval.batches": "2", "optim.warmup_steps": "10",
    "model.dropout": "0.1", "train.threads": "1", "train.report": "false",
    "data.path": "data/json"})
STEPS = ["--train.max_steps=600"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return json_corpus(tmp_path_factory, "crash")


def start(*args, cwd):
    """`lmforge train ARGS` in the background, its stderr kept for the test to read."""
    return subprocess.Popen(command("train", *args), cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=environment(threads=1))


def test_sigterm_saves_the_step_and_resume_is_exact(corpus):
    lmforge("train", *TINY, *STEPS, "--run.dir=runs/straight", cwd=corpus, threads=1)
    straight = train_losses(corpus / "runs" / "straight")

    run = corpus / "runs" / "preempted"
    # no periodic checkpoints: the one at the stop comes from the signal
    proc = start(*TINY, *STEPS, "--checkpoint.every=0", f"--run.dir={run}", cwd=corpus)
    wait_for_step(proc, run, 20)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr  # 128 + SIGTERM: saved, but not finished

    stopped = max(train_losses(run))
    assert 20 <= stopped < 600
    assert f"stopped at step {stopped} on SIGTERM" in stderr
    assert f"lmforge train --resume {run}" in stderr and "Traceback" not in stderr
    saved = run / "checkpoints" / f"step_{stopped:08d}"
    assert saved.is_dir() and (run / "checkpoints" / "latest").read_text().strip() == saved.name
    assert not (run / "samples.txt").exists()  # no time spent on samples in the grace period

    lmforge("train", "--resume", run, cwd=corpus, threads=1)
    assert train_losses(run) == straight  # bit-identical, every step
    assert val_losses(run) == val_losses(corpus / "runs" / "straight")


def test_a_second_signal_stops_at_once_without_saving(corpus):
    run = corpus / "runs" / "impatient"
    proc = start(*TINY, *STEPS, "--checkpoint.every=0", f"--run.dir={run}", cwd=corpus)
    wait_for_step(proc, run, 10)
    proc.send_signal(signal.SIGINT)  # Ctrl-C ...
    proc.send_signal(signal.SIGTERM)  # ... and, before the step is over, the scheduler
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == "lmforge: interrupted"
    assert not list((run / "checkpoints").glob("step_*"))


def test_diverging_run_stops_with_one_line_and_exit_2(corpus):
    run = corpus / "runs" / "diverged"
    proc = lmforge("train", *TINY, "--train.max_steps=50", "--optim.lr=1e6",
                   "--optim.warmup_steps=0", "--optim.max_nonfinite=2", f"--run.dir={run}",
                   cwd=corpus, threads=1, check=False)
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("lmforge train: error: step 4: 3 non-finite losses or gradient norms")
    assert "--optim.lr" in last and "Traceback" not in proc.stderr
    assert "optimizer step skipped" in proc.stderr  # each skipped step said so
    skipped = [r for r in records(run, "train") if r["skipped"]]
    assert [r["step"] for r in skipped] == [2, 3, 4]


def test_verify_resume_reports_a_match(corpus):
    proc = lmforge("verify-resume", "--steps", "20", *TINY, "--eval.every=5", cwd=corpus,
                   threads=1)
    assert proc.returncode == 0
    assert "train losses: all 20 bit-identical" in proc.stdout
    assert "validation losses: all 4 bit-identical" in proc.stdout
    assert "killed at step" in proc.stderr or "restarted" in proc.stderr
    assert not (corpus / "runs" / "default").exists()  # nothing of the user's is touched


@pytest.mark.parametrize("args, message", [
    (["--steps", "1"], "--steps must be at least 2"),
    (["--model.n_layr=2"], "did you mean 'model.n_layer'"),
    (["no_such_recipe"], "no recipe named 'no_such_recipe'"),
    (["--data.path=nowhere", "--data.source="], "no prepared dataset at nowhere"),
])
def test_verify_resume_bad_input_is_one_line_and_exit_2(corpus, args, message):
    proc = lmforge("verify-resume", *args, cwd=corpus, check=False, threads=1)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("lmforge verify-resume: error:") and message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_first_difference_names_the_step_and_the_values():
    from lmforge.runs.verify_resume import first_difference

    assert first_difference({1: 2.5, 2: 2.25}, {1: 2.5, 2: 2.25}) is None
    assert first_difference({1: 2.5, 2: 2.25, 3: 2.0}, {1: 2.5, 2: 2.2500001, 3: 1.0}) == (
        2, 2.25, 2.2500001)
    assert first_difference({1: 2.5, 2: 2.25}, {1: 2.5}) == (2, 2.25, None)
    assert first_difference({1: float("nan")}, {1: float("nan")}) is None  # by bits, not ==
