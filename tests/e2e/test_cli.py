"""The CLI as a user runs it: real subprocesses, real files, a real SIGKILL."""

import json
import math
import subprocess
import sys

import pytest
from helpers import (
    QUIET,
    STDLIB,
    TINY_MODEL,
    json_corpus,
    kill_after,
    lmforge,
    options,
    train_losses,
)

# A tiny model on a small real corpus, so each run takes a second or two.
TINY = options(TINY_MODEL, QUIET, {
    "train.log_every": "1", "eval.every": "50", "eval.batches": "2", "checkpoint.every": "20",
    "optim.warmup_steps": "10", "model.dropout": "0.1"})


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return json_corpus(tmp_path_factory, "cli")


def test_prepare_is_idempotent(corpus):
    manifest = corpus / "data" / "json" / "manifest.json"
    before = manifest.stat().st_mtime_ns
    proc = lmforge("prepare", "--data", str(STDLIB / "json" / "*.py"), "--tokenizer", "char",
                   "--out", "data/json", cwd=corpus)
    assert "reusing" in proc.stderr + proc.stdout
    assert manifest.stat().st_mtime_ns == before


def test_kill_resume_eval_generate(corpus):
    steps = ["--train.max_steps=400"]
    lmforge("train", *TINY, *steps, "--data.path=data/json", "--run.dir=runs/straight", cwd=corpus)
    straight = train_losses(corpus / "runs" / "straight")
    assert sorted(straight) == list(range(1, 401))

    # The same run, killed with SIGKILL once it has saved a checkpoint, resumed, killed again
    # (past an evaluation: the best-validation record must come back too), resumed again.
    checkpoints = corpus / "runs" / "killed" / "checkpoints"
    kill_after(["train", *TINY, *steps, "--data.path=data/json", "--run.dir=runs/killed"],
               marker=checkpoints / "step_00000060", cwd=corpus)
    kill_after(["train", "--resume", "runs/killed"], marker=checkpoints / "step_00000140",
               cwd=corpus)

    lmforge("train", "--resume", "runs/killed", cwd=corpus)
    assert train_losses(corpus / "runs" / "killed") == straight  # bit-identical, every step

    result = json.loads(lmforge("eval", "runs/killed", "--json", cwd=corpus).stdout)
    assert result["step"] == 400 and result["split"] == "val"
    assert 0 < result["loss"] < 5 and result["perplexity"] > 1 and result["bits_per_byte"] > 0
    again = json.loads(lmforge("eval", "runs/straight", "--json", cwd=corpus).stdout)
    assert again["loss"] == result["loss"]

    args = ["generate", "runs/killed", "--prompt", "def ", "--max-new-tokens", "60", "--seed", "1"]
    first, second = lmforge(*args, cwd=corpus).stdout, lmforge(*args, cwd=corpus).stdout
    assert first == second and first.startswith("def ") and len(first) > 10
    greedy = lmforge("generate", "runs/killed", "--temperature", "0", "--num-samples", "2",
                     "--max-new-tokens", "20", cwd=corpus).stdout
    one, two = greedy.split("----- sample 2 -----")
    assert one.replace("----- sample 1 -----", "").strip() == two.strip()


def test_run_dir_is_never_overwritten(corpus):
    lmforge("train", *TINY, "--train.max_steps=3", "--data.path=data/json", "--run.dir=runs/once",
            cwd=corpus)
    config = (corpus / "runs" / "once" / "config.toml").read_text()
    proc = lmforge("train", *TINY, "--train.max_steps=3", "--data.path=data/json",
                   "--run.dir=runs/once", cwd=corpus, check=False)
    assert proc.returncode == 2 and "already holds a run" in proc.stderr
    assert (corpus / "runs" / "once" / "config.toml").read_text() == config


@pytest.mark.parametrize("args, message", [
    (["prepare", "--data", "missing/*.txt", "--out", "x"], "no files match"),
    (["prepare", "--data", "nope.txt", "--out", "x"], "data not found: nope.txt"),
    (["prepare", "--data", "empty", "--out", "x"], "no text"),
    (["prepare", "--data", "data/json/manifest.json", "--out", "y", "--vocab-size", "100"], "too small"),
    (["train", "--model.n_layr=2"], "did you mean 'model.n_layer'"),
    (["train", "--nproc", "0"], "--nproc must be 1 or more, got 0"),
    (["train", "--train.max_steps=ten"], "train.max_steps: expected an integer"),
    (["train", "--data.path=nowhere", "--data.source="], "no prepared dataset at nowhere"),
    (["train", "--resume", "runs/none"], "run directory not found"),
    (["train", "--resume", "empty"], "not an lmforge run"),
    (["eval", "runs/none"], "run directory not found"),
    (["generate", "empty"], "not an lmforge run"),
])
def test_bad_input_is_one_line_and_exit_2(corpus, args, message):
    (corpus / "empty").mkdir(exist_ok=True)
    proc = lmforge(*args, cwd=corpus, check=False)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_resume_with_another_model_shape_is_refused(corpus):
    lmforge("train", *TINY, "--train.max_steps=2", "--data.path=data/json", "--run.dir=runs/shape",
            cwd=corpus)
    proc = lmforge("train", "--resume", "runs/shape", "--model.n_layer=3", cwd=corpus, check=False)
    assert proc.returncode == 2
    assert "model.n_layer: checkpoint 2, config 3" in proc.stderr
    # a dataset made with another tokenizer: the run's token ids would mean other things
    lmforge("prepare", "--data", str(STDLIB / "json" / "tool.py"), "--tokenizer", "char", "--out",
            "data/tool", cwd=corpus)  # a smaller alphabet, so the model's vocabulary still fits
    proc = lmforge("train", "--resume", "runs/shape", "--data.path=data/tool", cwd=corpus,
                   check=False)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "another tokenizer" in proc.stderr and "data/tool" in proc.stderr
    # The way out: the same text prepared with the run's own tokenizer evaluates.
    lmforge("prepare", "--data", str(STDLIB / "json" / "tool.py"), "--tokenizer-from",
            "runs/shape", "--out", "data/tool-same", cwd=corpus)
    result = json.loads(lmforge("eval", "runs/shape", "--data", "data/tool-same", "--json",
                                cwd=corpus).stdout)
    assert result["data"].endswith("data/tool-same") and math.isfinite(result["loss"])


def test_help_lists_every_verb_and_field(corpus):
    top = lmforge("--help", cwd=corpus).stdout
    assert all(verb in top for verb in ("prepare", "train", "eval", "generate"))
    train_help = lmforge("train", "--help", cwd=corpus).stdout
    for key in ("--data.path", "--model.arch", "--train.max_steps", "--train.max_minutes", "--run.dir"):
        assert key in train_help
    for verb in ("bench", "verify-resume", "compare", "export", "report"):
        assert verb in top


def torch_imported(cwd, *argvs: list[str]) -> bool:
    """Whether running `lmforge ARGV` for each argv, in one fresh process, imported torch."""
    probe = ("import sys\nfrom lmforge.cli.main import main\n"
             f"for argv in {list(argvs)!r}:\n"
             "    try:\n        assert main(argv) == 0\n    except SystemExit as e:\n"
             "        assert e.code == 0\n"
             "print('torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", probe], cwd=cwd, text=True,
                          capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()[-1] == "True"


def test_help_does_not_import_torch(tmp_path):
    """Help is instant: the verbs import torch only when they run."""
    assert not torch_imported(tmp_path, ["--help"], ["train", "--help"], ["bench", "--help"])


def test_prepare_does_not_import_torch(tmp_path):
    """Preparing data needs no torch, and importing it would cost more than small prepares."""
    (tmp_path / "a.txt").write_text("some text to prepare\n" * 100)
    assert not torch_imported(tmp_path, ["prepare", "--data", "a.txt", "--tokenizer", "bpe",
                                         "--vocab-size", "300", "--out", "ds", "--no-progress"])
    assert (tmp_path / "ds" / "manifest.json").is_file()


@pytest.mark.slow
def test_default_job_prepares_stdlib_and_trains(tmp_path):
    """`lmforge train` with no arguments, shortened: prepares the stdlib with BPE, trains, samples."""
    proc = lmforge("train", "--train.max_steps=6", "--train.max_minutes=0", "--eval.every=3",
                   "--eval.batches=2", "--eval.sample_tokens=20", cwd=tmp_path)
    assert (tmp_path / "data" / "stdlib" / "manifest.json").is_file()
    run = tmp_path / "runs" / "default"
    assert (run / "loss.png").is_file() and (run / "samples.txt").is_file()
    assert "----- sample 1 -----" in proc.stdout
    second = lmforge("train", "--train.max_steps=2", "--train.max_minutes=0", "--eval.samples=0",
                     cwd=tmp_path)
    assert "preparing" not in second.stderr  # the prepared corpus is reused
    assert (tmp_path / "runs" / "default-2" / "config.toml").is_file()
