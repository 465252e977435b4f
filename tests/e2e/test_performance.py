"""`lmforge bench` and `--train.profile` as a user runs them: real subprocesses, real files."""

import json

import pytest
from helpers import QUIET, TINY_MODEL, json_corpus, lmforge, options, records

TINY = options(TINY_MODEL, QUIET, {"data.path": "data/json", "data.source": ""})
# what the training runs add: a record every step, and no evaluation or report to slow them
TRAIN = options({"train.log_every": "1", "eval.every": "0", "train.report": "false"})


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return json_corpus(tmp_path_factory, "perf")


def test_bench_prints_throughput_and_mfu_and_saves_nothing(work):
    proc = lmforge("bench", *TINY, "--steps=4", "--warmup=1", "--json", cwd=work, threads=1)
    result = json.loads(proc.stdout)
    assert result["steps"] == 4 and result["tokens_per_step"] == 4 * 32
    assert result["tokens_per_s"] > 0 and result["step_ms_min"] <= result["step_ms_median"]
    assert 0 < result["mfu"] < 1
    assert result["peak_source"].startswith("matmul probe")
    assert result["flops_per_token"] > 0 and result["memory_mb"] > 0
    assert sorted(p.name for p in work.iterdir()) == ["data"]  # no run directory left behind
    text = lmforge("bench", *TINY, "--steps=2", "--warmup=0", "--train.peak_tflops=1",
                   cwd=work, threads=1).stdout
    assert "tokens/s" in text and "MFU" in text and "peak 1 TFLOP/s, train.peak_tflops" in text


@pytest.mark.parametrize("args, message", [
    (["--steps=0"], "--steps must be at least 1"),
    (["--model.n_layr=2"], "unknown config key 'model.n_layr'"),
])
def test_bench_bad_input_is_one_line_and_exit_2(work, args, message):
    proc = lmforge("bench", *TINY, *args, cwd=work, check=False)
    assert proc.returncode == 2
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_training_logs_mfu_and_profile_writes_a_trace(work):
    lmforge("train", *TINY, *TRAIN, "--train.max_steps=9", "--train.profile=2",
            "--run.dir=runs/prof", cwd=work, threads=1)
    run = work / "runs" / "prof"
    train = records(run, "train")
    assert all(0 < r["mfu"] < 1 for r in train)
    assert train[0]["startup_s"] > 0 and all("startup_s" not in r for r in train[1:])
    trace = json.loads((run / "profile" / "trace-rank0.json").read_text())
    names = {e.get("name") for e in trace["traceEvents"]}
    assert "ProfilerStep#5" in names and "ProfilerStep#6" in names  # after 5 warm-up steps
    assert "ProfilerStep#7" not in names
    assert "aten::mm" in (run / "profile" / "top_ops.txt").read_text()


def test_a_run_too_short_to_profile_says_so(work):
    proc = lmforge("train", *TINY, *TRAIN, "--train.max_steps=3", "--train.profile=2",
                   "--run.dir=runs/short", cwd=work, threads=1)
    assert "no profile written" in proc.stderr
    assert not (work / "runs" / "short" / "profile").exists()
