"""The test figures of a classification run in its report: a real run made by `lmforge
finetune classify` (three labels, one of them HTML and mathtext) gets the per-label figure,
the confusion matrix, the summary line and the per-label table; 90 labels (Reuters' topics)
stay legible; a language-model run gets none of it; a damaged or hostile test_metrics.json
is left out and named, never a crash and never markup on the page."""

from __future__ import annotations

import base64
import html
import json
import os
import re
import shutil
import struct

import numpy as np
import pytest
from helpers import QUIET, STDLIB, TINY_MODEL, json_corpus, lmforge, options
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmforge.runs.report import write_report
from lmforge.runs.report_task import (
    MAX_FILE_BYTES,
    MAX_LABELS,
    SHOWN,
    read_test_metrics,
    results_section,
)
from lmforge.tasks.metrics import classification_metrics, top_k_classes

SETTINGS = {"train.threads": "1", "train.precision": "fp32", "log.to": "none",
            "data.path": "data/json"}
HOSTILE = "other <script>alert(1)</script> $x$"  # a label is any text: shown, never run
LABELS = ("def", "return", HOSTILE)
PNG = b"\x89PNG\r\n\x1a\n"


def kind(line: str) -> str:
    return "def" if line.startswith("def ") else "return" if line.startswith("return ") else HOSTILE


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A pretrained tiny GPT (runs/lm) and a classifier fine-tuned from it (runs/cls) whose
    lines of the json package are labelled by how they start; every fourth line of each
    label is a test line. The classifier's report is the one training writes at its end."""
    work = json_corpus(tmp_path_factory, "report-task")
    lmforge("train", *options(TINY_MODEL, QUIET, SETTINGS, {
        "train.max_steps": "20", "eval.every": "0", "eval.batches": "1",
        "train.report": "false", "run.dir": "runs/lm"}), cwd=work, threads=1)
    lines = [line.strip() for path in sorted((STDLIB / "json").glob("*.py"))
             for line in path.read_text().splitlines() if len(line.strip()) > 8]
    by_kind = {k: [t for t in lines if kind(t) == k] for k in LABELS}
    n = min(map(len, by_kind.values()))
    rows = [{"text": t, "label": k, "split": "test" if i % 4 == 3 else "train"}
            for k in LABELS for i, t in enumerate(by_kind[k][:n])]
    (work / "lines.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    lmforge("finetune", "classify", "--init-from", "runs/lm", "--data", "lines.jsonl",
            *options(QUIET, {k: v for k, v in SETTINGS.items() if k != "data.path"}, {
                "train.max_steps": "30", "eval.every": "15", "train.batch_size": "16",
                "optim.lr": "3e-3", "train.report": "true", "run.dir": "runs/cls"}),
            cwd=work, threads=1)
    return work


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) of a PNG, from its IHDR chunk; the file must be a PNG."""
    assert data[:8] == PNG and data[12:16] == b"IHDR", data[:16]
    return struct.unpack(">II", data[16:24])


def figures_section(page: str) -> str:
    """The page's "Test figures" section (empty when it has none)."""
    match = re.search(r"<h2>Test figures</h2>(.*?)<h2>Config</h2>", page, flags=re.S)
    return match[1] if match else ""


def copy_run(work, name: str):
    """A copy of the classification run, to damage or rewrite; without its metrics.jsonl,
    so that its report draws the test figures alone."""
    path = work / "runs" / name
    shutil.rmtree(path, ignore_errors=True)
    shutil.copytree(work / "runs" / "cls", path, ignore=shutil.ignore_patterns(
        "report.html", "figures", "metrics.jsonl", "checkpoints"))
    return path


# ---------------------------------------------------------------------------- a real run

def test_a_classification_run_s_report_shows_its_test_figures(work):
    run = work / "runs" / "cls"
    figures = json.loads((run / "test_metrics.json").read_text())
    rows = figures["all"]["per_class"]
    assert sorted(r["name"] for r in rows) == sorted(LABELS)
    page = (run / "report.html").read_text(encoding="utf-8")  # written by finetune itself
    section = figures_section(page)
    assert section, "no Test figures section"
    summary = (f"micro-F1 {figures['all']['micro_f1']:.4f}, macro-F1 "
               f"{figures['all']['macro_f1']:.4f}, accuracy {figures['all']['accuracy']:.4f}")
    assert f"Test, step {figures['step']:,}: " in section and summary in section
    assert "the 10 most frequent labels: micro-F1" in section
    # every label's row: name, precision, recall, F1, support
    for r in rows:
        assert (f"<tr><td>{html.escape(r['name'])}</td><td>{r['precision']:.3f}</td>"
                f"<td>{r['recall']:.3f}</td><td>{r['f1']:.3f}</td><td>{r['support']:,}</td>"
                "</tr>") in section
    assert "<script>" not in page and html.escape(HOSTILE) in section
    assert ("F1 (bars), precision and recall per label on the test examples, all 3 labels, "
            "the most frequent first (figures/test-per-class.png)") in section
    assert "Confusion matrix on the test examples" in section  # one label per text
    # the figures: real PNGs of a plausible size, the page's own copies of the files
    per_class = (run / "figures" / "test-per-class.png").read_bytes()
    confusion = (run / "figures" / "test-confusion.png").read_bytes()
    width, height = png_size(per_class)
    assert width == 800 and 300 <= height <= 500 and len(per_class) > 10_000
    assert png_size(confusion) >= (400, 400) and len(confusion) > 10_000
    embedded = [base64.b64decode(b) for b in re.findall(r'src="data:image/png;base64,([^"]+)"',
                                                        section)]
    assert embedded == [per_class, confusion]
    assert "Left out of this report" not in page


def test_a_language_model_run_and_a_run_without_test_figures_have_no_test_section(work):
    lm = work / "runs" / "lm"
    shutil.copy(work / "runs" / "cls" / "test_metrics.json", lm)  # not a classify run: ignored
    assert "left out" not in write_report([lm])
    page = (lm / "report.html").read_text(encoding="utf-8")
    assert "Test figures" not in page and "test_metrics" not in page
    assert not list((lm / "figures").glob("test-*"))
    untested = copy_run(work, "untested")
    (untested / "test_metrics.json").unlink()  # killed before its test evaluation
    summary = write_report([untested])
    page = (untested / "report.html").read_text(encoding="utf-8")
    assert "Test figures" not in page and "left out" not in summary
    assert not list((untested / "figures").glob("test-*"))


def test_a_comparison_shows_each_classifier_s_figures(work, tmp_path):
    summary = write_report([work / "runs" / "cls", work / "runs" / "lm"], out=tmp_path / "cmp")
    page = (tmp_path / "cmp" / "report.html").read_text(encoding="utf-8")
    section = figures_section(page)
    assert "<details open><summary>cls</summary>" in section and "<summary>lm<" not in section
    assert sorted(p.name for p in (tmp_path / "cmp" / "figures").glob("run*")) == [
        "run1-test-confusion.png", "run1-test-per-class.png"]
    assert "figures/run1-test-per-class.png" in section and "left out" not in summary


# ---------------------------------------------------------------------------- many labels

def synthetic(n: int, *, multi: bool, examples: int = 600, seed: int = 0) -> dict:
    """test_metrics.json as evaluate_classifier writes it, for predictions of a classifier
    that is mostly right over `n` labels of falling frequency."""
    rng = np.random.default_rng(seed)
    names = [f"topic-{i:02d}" for i in range(n)]
    names[4] = HOSTILE
    freq = 1 / np.arange(1, n + 1)
    if multi:
        truth = (rng.random((examples, n)) < np.maximum(freq * 0.6, 0.02)).astype(int)
        pred = np.where(rng.random(truth.shape) < 0.9, truth, 1 - truth)
    else:
        truth = rng.choice(n, examples, p=freq / freq.sum())
        pred = np.where(rng.random(examples) < 0.7, truth, rng.choice(n, examples))
    metrics = classification_metrics(truth, pred, names)
    top = top_k_classes(truth, truth, pred, names)
    return {"step": 300, "all": metrics.as_dict(), "top10": top.as_dict()}


def test_ninety_labels_show_the_sixty_most_frequent_and_the_table_has_them_all(work):
    run = copy_run(work, "topics")
    figures = synthetic(90, multi=True)
    (run / "test_metrics.json").write_text(json.dumps(figures))
    write_report([run])
    section = figures_section((run / "report.html").read_text(encoding="utf-8"))
    rows = figures["all"]["per_class"]
    assert len(rows) == 90
    assert f"the {SHOWN} most frequent of 90 labels (30 left out; the table has them all)" in section
    assert all(f"<tr><td>{html.escape(r['name'])}</td>" in section for r in rows)
    assert "several labels per text" in section and "subset accuracy" in section
    assert not (run / "figures" / "test-confusion.png").exists()  # multi-label: none
    width, height = png_size((run / "figures" / "test-per-class.png").read_bytes())
    assert width == 800 and 1200 <= height <= 1700  # about 22 pixels a label, capped at 60

    # 40 labels, one per text: the matrix would be unreadable, and the page says so
    (run / "test_metrics.json").write_text(json.dumps(synthetic(40, multi=False)))
    write_report([run])
    section = figures_section((run / "report.html").read_text(encoding="utf-8"))
    assert "all 40 labels" in section and "not drawn for more than 30 labels" in section
    assert not (run / "figures" / "test-confusion.png").exists()


# ---------------------------------------------------------------------------- damaged files

def damaged(**changes):
    """synthetic(5) with `changes` applied: key paths like "all.per_class.1.f1"."""
    figures = synthetic(5, multi=False)
    for path, value in changes.items():
        *parents, last = path.split(".")
        target = figures
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        if isinstance(target, list):
            target[int(last)] = value
        else:
            target[last] = value
    return json.dumps(figures, allow_nan=True)


@pytest.mark.parametrize("content, message", [
    ("[1, 2]", "test_metrics.json is damaged (not a JSON object)"),
    ("{not json", "test_metrics.json is damaged (not a JSON object)"),
    ('{"step": ' + "9" * 5000 + "}", "test_metrics.json is damaged (not a JSON object)"),
    ("[" * 100_000, "test_metrics.json is damaged (not a JSON object)"),
    ('{"step": 3}', "damaged (all is not an object)"),
    (damaged(**{"all.per_class": "many"}), "damaged (all.per_class is not a list)"),
    (damaged(**{"all.per_class.1.f1": float("nan")}), "all.per_class[1].f1 is not a number from 0 to 1"),
    (damaged(**{"all.per_class.1.recall": float("inf")}), "all.per_class[1].recall is not a number"),
    (damaged(**{"all.per_class.2.precision": 7}), "all.per_class[2].precision is not a number"),
    (damaged(**{"all.per_class.0.support": "12"}), "all.per_class[0].support is not a count"),
    (damaged(**{"all.per_class.0.support": -1}), "all.per_class[0].support is not a count"),
    (damaged(**{"all.per_class.3.name": ["<b>x</b>"]}), "all.per_class[3].name is not text"),
    (damaged(**{"all.per_class.3": "<b>row</b>"}), "all.per_class[3] is not an object"),
    (damaged(**{"all.micro_f1": float("-inf")}), "all.micro_f1 is not a number from 0 to 1"),
    (damaged(**{"all.multi_label": "no"}), "all.multi_label is not true or false"),
    (damaged(step="<b>last</b>"), "its step is not a step"),
    (damaged(**{"all.per_class": [{"name": "a", "support": 1, "precision": 1, "recall": 1,
                                   "f1": 1}] * (MAX_LABELS + 1)}),
     f"all.per_class has {MAX_LABELS + 1:,} rows"),
])
def test_a_damaged_test_metrics_file_is_left_out_and_named(work, content, message):
    run = copy_run(work, "damaged")
    (run / "test_metrics.json").write_text(content)
    summary = write_report([run])
    page = (run / "report.html").read_text(encoding="utf-8")
    assert "left out" in summary and html.escape(message) in page
    assert "Test figures" not in page and "<b>" not in page and "<script>" not in page
    assert not list((run / "figures").glob("test-*"))


def test_a_damaged_confusion_matrix_or_top_k_leaves_the_rest(work):
    run = copy_run(work, "half-damaged")
    (run / "test_metrics.json").write_text(damaged(**{"all.confusion.2.1": -3,
                                                      "top10.micro_f1": "0.9"}))
    write_report([run])
    page = (run / "report.html").read_text(encoding="utf-8")
    assert "test_metrics.json: a confusion count is not a count; the matrix was left out" in page
    assert "test_metrics.json: top10.micro_f1 is not a number from 0 to 1" in page
    section = figures_section(page)
    assert "all 5 labels" in section and "most frequent labels" not in section
    assert html.escape(HOSTILE) in section and "<script>" not in page
    assert [p.name for p in (run / "figures").glob("test-*")] == ["test-per-class.png"]


def test_a_huge_file_is_not_read(work):
    run = copy_run(work, "huge")
    with open(run / "test_metrics.json", "wb") as fh:  # sparse: takes no room
        fh.truncate(MAX_FILE_BYTES + 1)
    summary = write_report([run])
    assert "left out" in summary
    assert f"test_metrics.json is {MAX_FILE_BYTES + 1:,} bytes" in (
        run / "report.html").read_text(encoding="utf-8")


def test_odd_label_names_are_drawn_literally(work):
    run = copy_run(work, "odd-names")
    names = ["\ud800 stray", "two\nlines\t", "$\\frac{1}{0}$", "x" * 5000, "&amp; <!--"]
    figures = json.loads(damaged())
    for row, name in zip(figures["all"]["per_class"], names, strict=True):
        row["name"] = name
    (run / "test_metrics.json").write_text(json.dumps(figures))
    summary = write_report([run])
    assert "left out" not in summary
    page = (run / "report.html").read_text(encoding="utf-8")
    section = figures_section(page)
    assert "? stray" in section and "&amp;amp; &lt;!--" in section and "<!--" not in page
    assert "x" * 299 + "…" in section and "x" * 301 not in section
    assert len(list((run / "figures").glob("test-*"))) == 2


# ---------------------------------------------------------------------------- any values

json_values = st.recursive(
    st.none() | st.booleans() | st.floats() | st.text(max_size=8)
    | st.integers(-(10**30), 10**30),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=3),
    max_leaves=8)
row_values = st.fixed_dictionaries({}, optional={
    "name": json_values, "support": json_values, "precision": json_values,
    "recall": json_values, "f1": json_values})


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(step=json_values, every=st.fixed_dictionaries({}, optional={
    "multi_label": st.booleans() | json_values, "examples": json_values,
    "accuracy": json_values, "micro_f1": json_values, "macro_f1": json_values,
    "per_class": st.lists(row_values, max_size=3) | json_values,
    "confusion": json_values}), top=json_values)
def test_any_values_are_read_or_left_out(tmp_path, step, every, top):
    (tmp_path / "test_metrics.json").write_text(json.dumps(
        {"step": step, "all": every, "top10": top}, allow_nan=True))
    notes: list[str] = []
    test = read_test_metrics(tmp_path, {"task": {"kind": "classify"}}, notes)
    assert (test is None) == any("left out" in n and "damaged" in n for n in notes)
    section = results_section([("run", test)], [], "figures")
    assert ("<h2>Test figures</h2>" in section) == (test is not None)
    assert "<script" not in section


def test_a_run_of_another_kind_or_without_a_task_reads_nothing(tmp_path):
    (tmp_path / "test_metrics.json").write_text(damaged())
    notes: list[str] = []
    for config in ({}, {"task": "classify"}, {"task": {"kind": "lm"}}, {"task": {"kind": "tag"}}):
        assert read_test_metrics(tmp_path, config, notes) is None
    assert read_test_metrics(tmp_path, {"task": {"kind": "classify"}}, notes) is not None
    os.remove(tmp_path / "test_metrics.json")
    assert read_test_metrics(tmp_path, {"task": {"kind": "classify"}}, notes) is None
    assert notes == []
