"""Recurrent models and `lmforge compare` as a user runs them: real subprocesses, real
files, a real SIGKILL."""

import json
from pathlib import Path

import pytest
from helpers import QUIET, TINY_MODEL, json_corpus, kill_after, options, train_losses
from helpers import lmforge as run_lmforge

# the tiny model as an LSTM (model.n_head does not apply to a recurrent model)
TINY_LSTM = options(TINY_MODEL, QUIET, {
    "model.arch": "lstm", "train.log_every": "1", "eval.every": "40", "eval.batches": "2",
    "checkpoint.every": "20", "optim.warmup_steps": "10", "model.dropout": "0.1",
    "data.path": "data/json", "data.source": "", "train.report": "false",
    "log.to": "none"})


def lmforge(*args, **kwargs):
    return run_lmforge(*args, threads=1, **kwargs)  # see helpers.lmforge


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return json_corpus(tmp_path_factory, "rnn-cli")


def test_lstm_kill_resume_is_bit_identical_then_eval_and_generate(corpus):
    steps = ["--train.max_steps=80"]
    lmforge("train", *TINY_LSTM, *steps, "--run.dir=runs/straight", cwd=corpus)
    straight = train_losses(corpus / "runs" / "straight")
    assert sorted(straight) == list(range(1, 81))

    # The same run, killed with SIGKILL mid-pass once it has saved a checkpoint, then resumed:
    # the loader position and every stream's hidden state come back from the checkpoint.
    kill_after(["train", *TINY_LSTM, *steps, "--run.dir=runs/killed"],
               marker=corpus / "runs" / "killed" / "checkpoints" / "step_00000040", cwd=corpus,
               threads=1)

    lmforge("train", "--resume", "runs/killed", cwd=corpus)
    assert train_losses(corpus / "runs" / "killed") == straight  # bit-identical, every step

    result = json.loads(lmforge("eval", "runs/killed", "--json", cwd=corpus).stdout)
    assert result["step"] == 80 and 0 < result["loss"] < 5
    text = lmforge("generate", "runs/killed", "--prompt", "def ", "--max-new-tokens", "40",
                   "--seed", "1", cwd=corpus).stdout
    assert text.startswith("def ") and len(text) > 10


def tiny_recipe(path: Path, arch: str) -> Path:
    model = ('arch = "gpt"\nn_layer = 1\nn_head = 2\nn_embd = 32\n' if arch == "gpt"
             else f'arch = "{arch}"\nn_layer = 1\nn_embd = 32\n')
    path.write_text(f"[model]\n{model}block_size = 32\n\n[train]\nbatch_size = 4\n"
                    "progress = false\nlog_every = 2\nreport = false\n\n[optim]\nwarmup_steps = 2\n\n[log]\nto = \"none\"\n")
    return path


def test_compare_trains_each_recipe_and_reports(corpus):
    gpt, gru = tiny_recipe(corpus / "tiny_gpt.toml", "gpt"), tiny_recipe(corpus / "tiny_gru.toml", "gru")
    proc = lmforge("compare", gpt, gru, "--data", "data/json", "--tokens", 128 * 12,
                   "--out", "cmp", cwd=corpus)
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:3] == ["recipe", "arch", "params"]
    assert lines[2].split()[:2] == ["tiny_gpt", "gpt"] and lines[3].split()[:2] == ["tiny_gru", "gru"]
    report = json.loads((corpus / "cmp" / "compare.json").read_text())
    assert [r["recipe"] for r in report["runs"]] == ["tiny_gpt", "tiny_gru"]
    for row in report["runs"]:  # the same budget: 12 steps of 4 x 32 tokens each
        assert row["steps"] == 12 and row["tokens"] == 128 * 12
        assert len(row["curve"]) >= 2 and row["curve"][-1]["tokens"] == 128 * 12
        assert 0 < row["bits_per_byte"] and row["params"] > 0
    # a normal run directory: `lmforge eval` gives the table's figure for the whole split
    gru_row = report["runs"][1]
    full = json.loads(lmforge("eval", corpus / "cmp" / "tiny_gru", "--json", "--checkpoint", "best",
                              cwd=corpus).stdout)
    assert full["loss"] == pytest.approx(gru_row["val_loss"], rel=1e-9)
    assert (corpus / "cmp" / "compare.png").stat().st_size > 1000


@pytest.mark.parametrize("args, message", [
    (["compare", "--data", "data/json", "--minutes", "1", "--tokens", "10"], "not both"),
    (["compare", "--data", "data/json", "--tokens", "0"], "--tokens must be a positive"),
    (["compare", "--data", "data/json", "--minutes", "-1"], "--minutes must be a positive"),
    (["compare", "nope", "--data", "data/json"], "no recipe named 'nope'"),
    (["compare", "lstm_char", "lstm_char", "--data", "data/json"], "given twice"),
    (["compare", "--data", "missing.txt", "--tokens", "10", "--out", "x"], "data not found: missing.txt"),
    (["compare", "--data", "data/json", "--model.n_layr=2"], "did you mean 'model.n_layer'"),
])
def test_bad_input_is_one_line_and_exit_2(corpus, args, message):
    proc = lmforge(*args, cwd=corpus, check=False)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert not (corpus / "x").exists()
