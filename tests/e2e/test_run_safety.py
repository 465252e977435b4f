"""A run directory that was damaged, stopped early or ran out of disk: one command continues
it, nothing of it is deleted, and every problem is one line."""

import shutil
import subprocess

import pytest
from helpers import (
    QUIET,
    STDLIB,
    TINY_MODEL,
    command,
    environment,
    json_corpus,
    kill_after,
    lmforge,
    options,
    records,
    train_losses,
    wait_for_step,
)

TINY = options(TINY_MODEL, QUIET, {"train.log_every": "1", "eval.every": "10",
                                   "eval.batches": "2", "checkpoint.every": "10",
                                   "checkpoint.keep_last": "10", "optim.warmup_steps": "5",
                                   "train.threads": "1", "train.report": "false",
                                   "log.to": "none", "data.path": "data/json",
                                   "data.source": "", "train.max_steps": "30"})


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    work = json_corpus(tmp_path_factory, "safety")
    lmforge("train", *TINY, "--run.dir=runs/straight", cwd=work, threads=1)
    return work


def test_a_damaged_checkpoint_is_set_aside_and_trained_again(work):
    shutil.copytree(work / "runs" / "straight", work / "runs" / "damaged")
    checkpoints = work / "runs" / "damaged" / "checkpoints"
    weights = checkpoints / "step_00000030" / "model.safetensors"
    damaged = weights.read_bytes()[:-100]
    weights.write_bytes(damaged)  # truncated, as a crash or a copy leaves it
    (checkpoints / "best").write_text("step_00000030\n")
    (checkpoints / "latest").write_text("step_00000030\n")
    # as eval sees it: the newest intact checkpoint, and a note that says why
    proc = lmforge("eval", "runs/damaged", "--json", cwd=work)
    assert "step_00000030/model.safetensors is corrupt" in proc.stderr
    assert '"step": 20' in proc.stdout
    # train backs off to step 20, keeps the damaged one aside, trains steps 21-30 again
    proc = lmforge("train", "--resume", "runs/damaged", "--train.max_steps=30", cwd=work,
                   threads=1)
    assert "moved the damaged step_00000030 aside to" in proc.stderr
    aside = checkpoints / "corrupt-step_00000030"
    assert (aside / "model.safetensors").read_bytes() == damaged  # kept as it was found
    assert (aside / "meta.json").is_file() and not (checkpoints / "corrupt-step_00000020").exists()
    assert (checkpoints / "latest").read_text().strip() == "step_00000030"
    assert train_losses(work / "runs" / "damaged") == train_losses(work / "runs" / "straight")
    result = lmforge("eval", "runs/damaged", "--checkpoint", "best", "--json", cwd=work)
    assert "corrupt" not in result.stderr
    straight = lmforge("eval", "runs/straight", "--checkpoint", "best", "--json", cwd=work)
    assert result.stdout.replace("damaged", "straight") == straight.stdout


def test_a_run_stopped_before_its_first_checkpoint_resumes_from_step_zero(work):
    run = work / "runs" / "early"
    kill_after(["train", *TINY, "--checkpoint.every=1000", "--run.dir=runs/early"],
               marker=run / "metrics.jsonl", cwd=work, threads=1)
    assert (run / "config.toml").is_file() and not (run / "checkpoints" / "latest").exists()
    refused = lmforge("train", *TINY, "--run.dir=runs/early", cwd=work, check=False)
    assert refused.returncode == 2 and "--resume runs/early" in refused.stderr
    proc = lmforge("train", "--resume", "runs/early", cwd=work, threads=1)
    assert "has no checkpoint yet (it stopped before its first one): training it from step 0" \
        in proc.stderr
    assert [r["step"] for r in records(run, "train")] == list(range(1, 31))  # each once


def test_a_cut_last_metrics_line_is_left_out_on_resume(work):
    shutil.copytree(work / "runs" / "straight", work / "runs" / "cut")
    metrics = work / "runs" / "cut" / "metrics.jsonl"
    (work / "runs" / "cut" / "checkpoints" / "latest").write_text("step_00000020\n")
    metrics.write_text(metrics.read_text() + '{"kind": "train", "step": 31, "lo')
    proc = lmforge("train", "--resume", "runs/cut", cwd=work, threads=1)
    assert "the last line was cut short" in proc.stderr
    assert train_losses(work / "runs" / "cut") == train_losses(work / "runs" / "straight")


@pytest.fixture
def small_disk(tmp_path):
    """An 8 MB tmpfs, where a run fills the disk for real; skipped where mounting is not
    allowed (not root, or a container without the capability)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_while_training_is_one_line_and_the_run_resumes(work, small_disk):
    run = small_disk / "run"
    args = ["train", *TINY, "--train.max_steps=60", "--checkpoint.keep_last=1",
            f"--run.dir={run}"]
    proc = subprocess.Popen(command(*args), cwd=work, env=environment(1), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for_step(proc, run, 12)  # past its first checkpoint
    filler = small_disk / "filler"
    with open(filler, "wb", buffering=0) as fh:  # every byte left, as another program would
        try:
            while True:
                fh.write(b"\0" * 4096)
        except OSError:
            pass
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err
    lines = err.strip().splitlines()
    assert "Traceback" not in err and lines[-1].startswith("lmforge train: error: ")
    assert "disk space" in lines[-1] and f"--resume {run}" in lines[-1]
    assert (run / "checkpoints" / "latest").is_file()  # the last checkpoint is kept
    filler.unlink()
    lmforge("train", "--resume", str(run), cwd=work, threads=1)
    straight = "runs/straight60"
    lmforge("train", *TINY, "--train.max_steps=60", "--checkpoint.keep_last=1",
            f"--run.dir={straight}", cwd=work, threads=1)
    assert train_losses(run) == train_losses(work / straight)


def test_a_second_process_on_a_run_that_is_training_is_refused(work):
    shutil.copytree(work / "runs" / "straight", work / "runs" / "busy")
    run = work / "runs" / "busy"
    first = subprocess.Popen(command("train", "--resume", "runs/busy", "--train.max_steps=100000"),
                             cwd=work, env=environment(1), text=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_step(first, run, 31)  # training past where it resumed
        second = lmforge("train", "--resume", "runs/busy", "--optim.lr=0.1", cwd=work,
                         check=False)
        assert second.returncode == 2 and len(second.stderr.strip().splitlines()) == 1
        assert f"is being written by another lmforge process (pid {first.pid}, train)" \
            in second.stderr
        assert "lr = 0.1" not in (run / "config.toml").read_text()  # nothing of it written
    finally:
        first.terminate()
        first.communicate(timeout=120)
    assert first.returncode == 143  # stopped by the SIGTERM above, saved
    lmforge("train", "--resume", "runs/busy", "--train.max_steps=40", cwd=work, threads=1)


def test_resuming_on_another_dataset_with_the_same_tokenizer_says_so(work):
    shutil.copytree(work / "runs" / "straight", work / "runs" / "moved")
    (work / "runs" / "moved" / "checkpoints" / "latest").write_text("step_00000020\n")
    lmforge("prepare", "--data", str(STDLIB / "json" / "decoder.py"), "--tokenizer-from",
            "runs/moved", "--out", "data/decoder", cwd=work)
    proc = lmforge("train", "--resume", "runs/moved", "--data.path=data/decoder", cwd=work,
                   threads=1)
    said = [line for line in proc.stderr.splitlines() if line.startswith("note: ")]
    assert len(said) == 1 and "continues on data/decoder, not on the dataset it was trained " \
        "on" in said[0] and "data/json" in said[0]
