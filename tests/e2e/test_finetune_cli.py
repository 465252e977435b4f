"""`lmforge finetune classify`, `predict` and `eval` as a user runs them: a small model
pretrained on the json package's sources, fine-tuned to tell which of their lines define a
function, then asked about new lines; every figure read back from the files it wrote."""

from __future__ import annotations

import json
import shutil

import pytest
from helpers import QUIET, STDLIB, TINY_MODEL, json_corpus, lmforge, options

SETTINGS = {"train.threads": "1", "train.precision": "fp32", "log.to": "none",
            "train.report": "false", "data.path": "data/json"}


def lines() -> list[str]:
    out = []
    for path in sorted((STDLIB / "json").glob("*.py")):
        out += [line.strip() for line in path.read_text().splitlines() if len(line.strip()) > 8]
    return out


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    work = json_corpus(tmp_path_factory, "finetune")
    lmforge("train", *options(TINY_MODEL, QUIET, SETTINGS, {
        "train.max_steps": "20", "eval.every": "0", "eval.batches": "1",
        "run.dir": "runs/lm"}), cwd=work)
    # as many lines that define a function as lines that do not: chance is 1/2
    defs = [t for t in lines() if t.startswith("def ")]
    others = [t for t in lines() if not t.startswith("def ")][:len(defs)]
    rows = [{"text": t, "label": label} for d, o in zip(defs, others, strict=True)
            for t, label in ((d, "def"), (o, "other"))]
    (work / "lines.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = lmforge("finetune", "classify", "--init-from", "runs/lm", "--data", "lines.jsonl",
                   *options(QUIET, {k: v for k, v in SETTINGS.items() if k != "data.path"}, {
                       "train.max_steps": "40", "eval.every": "20", "train.batch_size": "16",
                       "optim.lr": "3e-3", "run.dir": "runs/cls"}), cwd=work)
    (work / "finetune.out").write_text(proc.stdout + proc.stderr)
    return work


def test_the_classifier_is_measured_on_the_held_out_examples(work):
    out = (work / "finetune.out").read_text()
    assert "classify: " in out and "2 labels (one label per text)" in out
    figures = json.loads((work / "runs" / "cls" / "test_metrics.json").read_text())
    assert figures["all"]["micro_f1"] > 0.9, figures  # "def " at the start is easy to tell
    assert f"micro-F1 {figures['all']['micro_f1']:.4f}" in out
    labels = json.loads((work / "runs" / "cls" / "labels.json").read_text())
    assert labels["names"] == ["def", "other"] and labels["multi_label"] is False
    # eval measures the same checkpoint on the same examples: the same figures
    proc = lmforge("eval", "runs/cls", "--json", cwd=work)
    assert json.loads(proc.stdout)["all"]["micro_f1"] == figures["all"]["micro_f1"]


def test_predict_labels_new_texts(work):
    proc = lmforge("predict", "runs/cls", "--text", "def encode(self, o):",
                   "--text", "return self.scan_once(s, idx)", "--json", cwd=work)
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["labels"] for r in rows] == [["def"], ["other"]]
    assert all(abs(sum(r["scores"].values()) - 1) < 1e-3 for r in rows)  # both labels shown
    (work / "new.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in lines()[:7]))
    lmforge("predict", "runs/cls", "--data", "new.jsonl", "--out", "predicted.jsonl", cwd=work)
    assert len((work / "predicted.jsonl").read_text().splitlines()) == 7


@pytest.mark.parametrize("args, message", [
    (["finetune", "classify", "--init-from", "runs/lm", "--data", "missing.jsonl"],
     "missing.jsonl does not exist"),
    (["finetune", "classify", "--init-from", "runs/nothing", "--data", "lines.jsonl"],
     "no such directory"),
    (["predict", "runs/lm", "--text", "x"], "not a classifier"),
    (["predict", "runs/cls", "--data", "new.jsonl", "--out", "lines.jsonl"], "does not exist yet"),
])
def test_bad_input_is_one_line_and_exit_2(work, args, message):
    proc = lmforge(*args, cwd=work, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert message in proc.stderr.strip().splitlines()[-1]


def test_sft_tunes_on_completions_and_resumes_as_a_task_run(work):
    from helpers import records

    pairs = list(zip(lines()[::2], lines()[1::2], strict=False))
    (work / "pairs.jsonl").write_text("".join(
        json.dumps({"prompt": a + "\n", "completion": b}) + "\n" for a, b in pairs))
    settings = options(QUIET, {k: v for k, v in SETTINGS.items() if k != "data.path"}, {
        "train.max_steps": "20", "eval.every": "10", "eval.batches": "2", "optim.lr": "3e-3",
        "checkpoint.every": "10", "run.dir": "runs/sft"})
    proc = lmforge("finetune", "sft", "--init-from", "runs/lm", "--data", "pairs.jsonl",
                   *settings, cwd=work)
    assert "sft: " in proc.stderr and "ROUGE-L" in proc.stderr
    evals = records(work / "runs" / "sft", "eval")
    assert [r["step"] for r in evals] == [10, 20] and evals[1]["val_loss"] < evals[0]["val_loss"]
    assert {"rouge_l", "bleu", "exact_match"} <= set(evals[1])
    proc = lmforge("train", "--resume", "runs/sft", "--train.max_steps=30", cwd=work)
    assert "resumed from" in proc.stderr and "ROUGE-L" in proc.stderr  # still an sft run


def test_tag_tags_python_tokens_and_resumes_as_a_task_run(work):
    from helpers import records

    settings = options(QUIET, {k: v for k, v in SETTINGS.items() if k != "data.path"}, {
        "train.max_steps": "40", "eval.every": "20", "optim.lr": "1e-2",
        "checkpoint.every": "20", "run.dir": "runs/tag"})
    proc = lmforge("finetune", "tag", "--init-from", "runs/lm", "--data", "python:json",
                   *settings, cwd=work)
    assert "macro-F1" in proc.stderr or "macro_f1" in proc.stderr or "accuracy" in proc.stderr
    evals = records(work / "runs" / "tag", "eval")
    assert [r["step"] for r in evals] == [20, 40]
    assert evals[-1]["accuracy"] > 0.8, evals  # most tokens' types show in their characters
    proc = lmforge("train", "--resume", "runs/tag", "--train.max_steps=50", cwd=work)
    assert "resumed from" in proc.stderr
    assert records(work / "runs" / "tag", "eval")[-1]["step"] == 50


def test_a_task_run_is_not_a_language_model_for_generate(work):
    proc = lmforge("generate", "runs/cls", cwd=work, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "is a classify run" in proc.stderr


def test_a_classifier_exports_for_transformers_but_not_mean_pooled(work):
    # the same run with its head on the last token's state (what HF's class reads)
    shutil.copytree(work / "runs" / "cls", work / "runs" / "cls-last")
    toml = work / "runs" / "cls-last" / "config.toml"
    toml.write_text(toml.read_text().replace('pooling = "mean"', 'pooling = "last"'))
    proc = lmforge("export", "runs/cls-last", "--out", "cls-hf", cwd=work)
    assert "wrote GPT2ForSequenceClassification (gpt2, 2 labels)" in proc.stderr
    config = json.loads((work / "cls-hf" / "config.json").read_text())
    assert config["id2label"] == {"0": "def", "1": "other"}
    assert config["problem_type"] == "single_label_classification"
    # the run as trained, its head on the mean of the states: no HF class computes that
    proc = lmforge("export", "runs/cls", "--out", "mean-hf", cwd=work, check=False)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "task.pooling=mean" in proc.stderr and "--format safetensors" in proc.stderr
    assert not (work / "mean-hf").exists()
