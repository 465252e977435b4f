"""A task run on two processes (DDP, gloo) trains what one process trains: the same
examples in each global batch and the same losses, and its evaluations agree."""

from __future__ import annotations

import json

import numpy as np
from helpers import (
    QUIET,
    STDLIB,
    TINY_MODEL,
    command,
    json_corpus,
    losses,
    options,
    records,
    torchrun,
)
from helpers import run as run_command

SETTINGS = {"train.precision": "fp32", "log.to": "none", "train.report": "false",
            "train.max_steps": "20", "eval.every": "10", "optim.lr": "3e-3",
            "train.log_every": "1"}


def test_classify_on_two_ddp_ranks_matches_one_process(tmp_path_factory):
    work = json_corpus(tmp_path_factory, "task-ranks")
    run_command(command("train", *options(TINY_MODEL, QUIET, SETTINGS, {
        "data.path": "data/json", "eval.every": "0", "run.dir": "runs/lm"})),
        cwd=work, threads=1)
    lines = [line.strip() for path in sorted((STDLIB / "json").glob("*.py"))
             for line in path.read_text().splitlines() if len(line.strip()) > 8]
    (work / "lines.jsonl").write_text("".join(
        json.dumps({"text": t, "label": "def" if t.startswith("def ") else "other"}) + "\n"
        for t in lines))
    args = ["finetune", "classify", "--init-from", "runs/lm", "--data", "lines.jsonl",
            *options(QUIET, SETTINGS)]
    run_command(command(*args, "--train.batch_size=8", "--run.dir=runs/one"), cwd=work,
                threads=1)
    run_command(torchrun(2, *args, "--train.batch_size=4", "--parallel.strategy=ddp",
                         "--run.dir=runs/two"), cwd=work, threads=1)
    one, two = losses(work / "runs" / "one"), losses(work / "runs" / "two")
    assert len(one) == len(two) == 20
    assert np.max(np.abs(np.array(one) - np.array(two))) < 1e-5, (one, two)
    for a, b in zip(records(work / "runs" / "one", "eval"), records(work / "runs" / "two", "eval"),
                    strict=True):
        assert abs(a["val_loss"] - b["val_loss"]) < 1e-5 and a["micro_f1"] == b["micro_f1"]
