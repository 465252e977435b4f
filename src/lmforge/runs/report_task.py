"""The test figures of a classification run in its report (lmforge.runs.report).

A run made by `lmforge finetune classify` (task.kind = "classify") measures its best
checkpoint on the test examples at the end and keeps the figures in RUN/test_metrics.json
(lmforge.runs.classifier): {"step", "all": ClassificationMetrics.as_dict(), "top10": ...}.
From it the report draws F1, precision and recall per label, the most frequent labels first
(at most SHOWN of them), and for one label per text the confusion matrix (up to
CONFUSION_MAX labels); the page gets a "Test figures" section with the summary line and
the per-class table. A run without the file, or a run of another kind, gets none of this.
The file is checked as the report checks every file: one that is damaged, or written to do
harm (wrong types, numbers that are not finite or not in [0, 1], a list of millions), is
left out and named in the report's notes; a label is text, escaped on the page and shown
literally (no mathtext) in the figures.

This module does not import lmforge.runs.report (which imports it): it keeps its own small
escaping helpers, the same as the report's.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge import rundir
from lmforge.runs.page_text import cut, escape, literal, png, pyplot

TEST_METRICS_FILE = "test_metrics.json"
MAX_FILE_BYTES = 64 << 20  # Reuters' 90 labels take 30 KB; beyond this, no run wrote it
MAX_LABELS = 100_000  # per-class rows a report reads
SHOWN = 60  # labels in the per-class figure, the most frequent (all are in the table)
CONFUSION_MAX = 30  # labels up to which the confusion matrix is drawn
ANNOTATE_MAX = 15  # labels up to which each confusion cell shows its count
FIGURE_NAME_CHARS = 32  # a label's name in a figure is cut to this
TABLE_NAME_CHARS = 300  # and in the table

Figure = tuple[str, str, bytes]  # file name (without .png), caption, PNG


@dataclass(frozen=True)
class ClassFigures:
    name: str
    support: int
    precision: float
    recall: float
    f1: float


@dataclass(frozen=True)
class ClassifierResults:
    """A classification run's test figures, checked."""

    step: int | None
    multi_label: bool
    examples: int | None
    accuracy: float
    micro_f1: float
    macro_f1: float
    rows: list[ClassFigures]  # in the file's order (the confusion matrix's)
    confusion: list[list[int]] | None  # [true][predicted]; None: multi-label, or too large
    top: tuple[int, float, float] | None  # (k, micro-F1, macro-F1) over the k most frequent

    @property
    def by_support(self) -> list[ClassFigures]:
        """The most frequent labels first (ties: by name), as format_table lists them."""
        return sorted(self.rows, key=lambda r: (-r.support, r.name))


class _Damaged(ValueError):
    """What is wrong with test_metrics.json, for the note."""


# ---------------------------------------------------------------------------- reading

def _share(value: Any, what: str) -> float:
    x = rundir.finite(value)
    if x is None or not 0.0 <= x <= 1.0:
        raise _Damaged(f"{what} is not a number from 0 to 1")
    return float(x)


def _count(value: Any, what: str) -> int:
    n = rundir.step_or_none(value)
    if n is None:
        raise _Damaged(f"{what} is not a count")
    return n


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Damaged(f"{what} is not an object")
    return value


def _rows(value: Any) -> list[ClassFigures]:
    if not isinstance(value, list):
        raise _Damaged("all.per_class is not a list")
    if len(value) > MAX_LABELS:
        raise _Damaged(f"all.per_class has {len(value):,} rows, more than {MAX_LABELS:,}")
    rows = []
    for i, raw in enumerate(value):
        row = _object(raw, f"all.per_class[{i}]")
        name = row.get("name")
        if not isinstance(name, str):
            raise _Damaged(f"all.per_class[{i}].name is not text")
        rows.append(ClassFigures(name, _count(row.get("support"), f"all.per_class[{i}].support"),
                                 *(_share(row.get(k), f"all.per_class[{i}].{k}")
                                   for k in ("precision", "recall", "f1"))))
    return rows


def _confusion(value: Any, n: int) -> list[list[int]]:
    if not (isinstance(value, list) and len(value) == n
            and all(isinstance(r, list) and len(r) == n for r in value)):
        raise _Damaged(f"its confusion matrix is not {n} × {n}")
    return [[_count(v, "a confusion count") for v in r] for r in value]


def _top(raw: dict[str, Any]) -> tuple[int, float, float] | None:
    for key, value in raw.items():
        match = re.fullmatch(r"top([0-9]{1,6})", key)
        if match and isinstance(value, dict):
            return (int(match[1]), _share(value.get("micro_f1"), f"{key}.micro_f1"),
                    _share(value.get("macro_f1"), f"{key}.macro_f1"))
    return None


def _parse(raw: dict[str, Any], notes: list[str]) -> ClassifierResults:
    step = raw.get("step")
    if step is not None and rundir.step_or_none(step) is None:
        raise _Damaged("its step is not a step")
    every = _object(raw.get("all"), "all")
    multi = every.get("multi_label")
    if not isinstance(multi, bool):
        raise _Damaged("all.multi_label is not true or false")
    examples = every.get("examples")
    if examples is not None:
        examples = _count(examples, "all.examples")
    rows = _rows(every.get("per_class"))
    summary = {k: _share(every.get(k), f"all.{k}") for k in ("accuracy", "micro_f1", "macro_f1")}
    confusion = None  # what is damaged below leaves the rest standing
    if not multi and 0 < len(rows) <= CONFUSION_MAX and every.get("confusion") is not None:
        try:
            confusion = _confusion(every.get("confusion"), len(rows))
        except _Damaged as err:
            notes.append(f"{TEST_METRICS_FILE}: {err}; the matrix was left out")
    try:
        top = _top(raw)
    except _Damaged as err:
        notes.append(f"{TEST_METRICS_FILE}: {err}; the top-k figures were left out")
        top = None
    return ClassifierResults(step=step, multi_label=multi, examples=examples, rows=rows,
                             confusion=confusion, top=top, **summary)


def read_test_metrics(run_path: Path, config: dict[str, Any],
                      notes: list[str]) -> ClassifierResults | None:
    """The test figures of a classification run; None for a run of another kind, a run
    without test_metrics.json, or a damaged one (noted)."""
    task = config.get("task")
    if not isinstance(task, dict) or task.get("kind") != "classify":
        return None
    path = Path(run_path) / TEST_METRICS_FILE
    try:
        if not path.is_file():
            return None
        size = path.stat().st_size
    except OSError as err:
        notes.append(f"{TEST_METRICS_FILE} could not be read ({err.strerror or err})")
        return None
    if size > MAX_FILE_BYTES:
        notes.append(f"{TEST_METRICS_FILE} is {size:,} bytes, more than any run writes, and "
                     "was left out")
        return None
    raw = rundir.read_json_object(path, notes)
    if raw is None:
        return None
    try:
        return _parse(raw, notes)
    except _Damaged as err:
        notes.append(f"{TEST_METRICS_FILE} is damaged ({err}) and was left out")
        return None


# ---------------------------------------------------------------------------- figures

def per_class_figure(test: ClassifierResults) -> bytes:
    """F1 bars with precision and recall marks per label, the most frequent first (at most
    SHOWN), each label's test support on the right, micro- and macro-F1 as vertical lines."""
    plt = pyplot()
    rows = test.by_support[:SHOWN]
    n = len(rows)
    fig, ax = plt.subplots(figsize=(8, max(3.2, 1.9 + 0.22 * n)), dpi=100, layout="constrained")
    y = list(range(n))
    handles = [
        ax.barh(y, [r.f1 for r in rows], height=0.62, color="#4c78a8", label="F1"),
        ax.scatter([r.precision for r in rows], y, marker="o", s=16, facecolors="none",
                   edgecolors="#e45756", linewidths=1.1, label="precision", zorder=3),
        ax.scatter([r.recall for r in rows], y, marker="x", s=16, color="#222222", linewidths=1.0,
                   label="recall", zorder=3),
        ax.axvline(test.micro_f1, color="#f58518", linestyle="--", linewidth=1.3,
                   label=f"micro-F1 {test.micro_f1:.3f}"),
        ax.axvline(test.macro_f1, color="#54a24b", linestyle=":", linewidth=1.6,
                   label=f"macro-F1 {test.macro_f1:.3f}")]
    ax.set_xlim(0, 1.03)
    ax.set_ylim(n - 0.5, -0.5)  # the most frequent at the top
    ax.set_yticks(y, [literal(r.name, FIGURE_NAME_CHARS) for r in rows], fontsize=8)
    ax.set_xlabel("on the test examples")
    ax.grid(axis="x", alpha=0.3)
    right = ax.twinx()
    right.set_ylim(ax.get_ylim())
    right.set_yticks(y, [f"{r.support:,}" for r in rows], fontsize=8)
    right.set_ylabel("test examples (support)")
    step = f", step {test.step:,}" if test.step is not None else ""
    ax.set_title(f"Per-label test figures{step}", fontsize=11)
    fig.legend(handles=handles, loc="outside lower center", ncol=5, fontsize=8, frameon=False)
    return png(fig)


def confusion_figure(test: ClassifierResults) -> bytes:
    """The confusion matrix (one label per text): colour is the share of the true label's
    examples, the numbers are counts."""
    assert test.confusion is not None
    plt = pyplot()
    n = len(test.confusion)
    side = max(4.0, 2.6 + 0.32 * n)
    fig, ax = plt.subplots(figsize=(side + 1.0, side), dpi=100, layout="constrained")
    shares = [[v / (sum(row) or 1) for v in row] for row in test.confusion]
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    names = [literal(r.name, 20) for r in test.rows]
    ax.set_xticks(range(n), names, rotation=90, fontsize=8)
    ax.set_yticks(range(n), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= ANNOTATE_MAX:
        for i, row in enumerate(test.confusion):
            for j, v in enumerate(row):
                ax.text(j, i, f"{v:,}", ha="center", va="center", fontsize=8,
                        color="white" if shares[i][j] > 0.5 else "#1f2328")
    fig.colorbar(image, ax=ax, shrink=0.8, label="share of the true label's examples")
    step = f", step {test.step:,}" if test.step is not None else ""
    ax.set_title(f"Confusion on the test examples{step}", fontsize=11)
    return png(fig)


def per_class_caption(test: ClassifierResults) -> str:
    n = len(test.rows)
    shown = (f"all {n} labels" if n <= SHOWN else
             f"the {SHOWN} most frequent of {n} labels ({n - SHOWN} left out; the table "
             "has them all)")
    return (f"F1 (bars), precision and recall per label on the test examples, {shown}, "
            "the most frequent first")


CONFUSION_CAPTION = "Confusion matrix on the test examples (rows: true label; columns: predicted)"


def task_figures(test: ClassifierResults | None, notes: list[str], *, prefix: str = "") -> list[Figure]:
    """The test figures of one run (none without test figures); a figure matplotlib cannot
    draw is left out and noted."""
    if test is None or not test.rows:
        return []
    out = []
    for name, caption, draw in (
            ("test-per-class", per_class_caption(test), per_class_figure),
            ("test-confusion", CONFUSION_CAPTION, confusion_figure)):
        if name == "test-confusion" and test.confusion is None:
            continue
        try:
            out.append((prefix + name, caption, draw(test)))
        except (ValueError, OverflowError) as err:
            notes.append(f"the figure {caption} could not be drawn ({err})")
    return out


# ---------------------------------------------------------------------------- html

def summary_line(test: ClassifierResults) -> str:
    """One line of plain text: the figures over all labels (and the k most frequent)."""
    step = f"step {test.step:,}" if test.step is not None else "step unknown"
    examples = f"{test.examples:,} examples, " if test.examples is not None else ""
    kind = "several labels per text" if test.multi_label else "one label per text"
    accuracy = "subset accuracy" if test.multi_label else "accuracy"
    line = (f"Test, {step}: {examples}{len(test.rows)} labels ({kind}): micro-F1 "
            f"{test.micro_f1:.4f}, macro-F1 {test.macro_f1:.4f}, {accuracy} {test.accuracy:.4f}")
    if test.top is not None:
        k, micro, macro = test.top
        line += f"; the {k} most frequent labels: micro-F1 {micro:.4f}, macro-F1 {macro:.4f}"
    return line + "."


def _class_table(test: ClassifierResults) -> str:
    rows = "".join(
        f"<tr><td>{escape(cut(r.name, TABLE_NAME_CHARS))}</td><td>{r.precision:.3f}</td>"
        f"<td>{r.recall:.3f}</td><td>{r.f1:.3f}</td><td>{r.support:,}</td></tr>"
        for r in test.by_support)
    table = ('<table class="num"><thead><tr><th>label</th><th>precision</th><th>recall</th>'
             f"<th>F1</th><th>support</th></tr></thead><tbody>{rows}</tbody></table>")
    opened = " open" if len(test.rows) <= 30 else ""
    return (f"<details{opened}><summary>Per-label table ({len(test.rows):,} labels, the most "
            f"frequent first)</summary>{table}</details>")


def _one_run(test: ClassifierResults, figures: list[Figure], figures_dir: str) -> str:
    figs = "".join(
        f'<figure style="max-width:820px"><img src="data:image/png;base64,'
        f'{base64.b64encode(png).decode()}" alt="{escape(caption)}"><figcaption>{escape(caption)} '
        f"({escape(figures_dir)}/{escape(name)}.png)</figcaption></figure>"
        for name, caption, png in figures)
    parts = [f"<p>{escape(summary_line(test))}</p>", figs]
    if not test.rows:
        parts.append("<p>No label had a test example or a prediction.</p>")
    elif not test.multi_label and test.confusion is None and len(test.rows) > CONFUSION_MAX:
        parts.append(f"<p class=sub>The confusion matrix is not drawn for more than "
                     f"{CONFUSION_MAX} labels; it is in {TEST_METRICS_FILE}.</p>")
    if test.rows:
        parts.append(_class_table(test))
    return "".join(parts)


def results_section(runs: list[tuple[str, ClassifierResults | None]],
                    figures: Sequence[list[Figure]], figures_dir: str) -> str:
    """The "Test figures" section for (run name, its test figures) of each run, with each
    run's drawn figures (task_figures; none given: none drawn); empty when no run has test
    figures."""
    drawn = list(figures) + [[]] * (len(runs) - len(figures))
    shown = [(name, test, figs) for (name, test), figs in zip(runs, drawn, strict=False)
             if test is not None]
    if not shown:
        return ""
    if len(runs) == 1:
        _, test, figs = shown[0]
        return f"<h2>Test figures</h2>{_one_run(test, figs, figures_dir)}"
    return "<h2>Test figures</h2>" + "".join(
        f"<details open><summary>{escape(name)}</summary>{_one_run(test, figs, figures_dir)}"
        "</details>" for name, test, figs in shown)
