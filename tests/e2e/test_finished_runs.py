"""A run that has finished, as the CLI sees it: resuming it says so (or trains further when
asked to), and asking for what it does not have is one line."""

import pytest
from helpers import QUIET, TINY_MODEL, json_corpus, lmforge, options, records

TINY = options(TINY_MODEL, QUIET, {"train.log_every": "1", "eval.every": "5",
                                   "eval.batches": "2", "checkpoint.every": "5",
                                   "train.report": "false", "log.to": "none",
                                   "data.path": "data/json", "data.source": ""})


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    work = json_corpus(tmp_path_factory, "finished")
    lmforge("train", *TINY, "--train.max_steps=10", "--run.dir=runs/done", cwd=work, threads=1)
    return work


def test_resuming_a_finished_run_says_so_and_changes_nothing(work):
    metrics = work / "runs" / "done" / "metrics.jsonl"
    before = metrics.read_text()
    proc = lmforge("train", "--resume", "runs/done", cwd=work, threads=1)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr
    assert "already finished at step 10 (train.max_steps=10)" in proc.stderr
    assert "raise --train.max_steps" in proc.stderr
    assert metrics.read_text() == before


def test_a_finished_run_trains_further_when_max_steps_is_raised(work):
    lmforge("train", *TINY, "--train.max_steps=10", "--run.dir=runs/more", cwd=work, threads=1)
    proc = lmforge("train", "--resume", "runs/more", "--train.max_steps=15", cwd=work, threads=1)
    assert "resumed from" in proc.stderr and "at step 10" in proc.stderr
    assert [r["step"] for r in records(work / "runs" / "more", "train")] == list(range(1, 16))
    assert "max_steps = 15" in (work / "runs" / "more" / "config.toml").read_text()


@pytest.mark.parametrize("args, message", [
    (["eval", "runs/nobest", "--checkpoint", "best"],
     "no best checkpoint (checkpoint.keep_best=false, or no evaluation has run yet)"),
    (["eval", "runs/nobest", "--checkpoint", "step_7"], "it has: latest, step_00000010"),
    (["train", *TINY, "--model.norm=batchnorm"], "lets a causal language model see future"),
])
def test_what_a_run_does_not_have_is_one_line(work, args, message):
    if not (work / "runs" / "nobest").exists():
        lmforge("train", *TINY, "--train.max_steps=10", "--checkpoint.keep_best=false",
                "--checkpoint.keep_last=1", "--run.dir=runs/nobest", cwd=work, threads=1)
    proc = lmforge(*args, cwd=work, check=False)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
