"""Classification metrics, computed by scikit-learn: accuracy, micro- and macro-averaged
precision/recall/F1, a per-class table and, for single-label sets, the confusion matrix.

Single-label predictions are arrays of class indices, shape (n,); multi-label ones are 0/1
indicator matrices, shape (n, classes). Accuracy is subset accuracy for multi-label sets
(every label of an example right). Macro averages are the plain mean of the per-class
figures, as Yang & Liu (1999) define macro-F1; a class with neither true nor predicted
examples counts 0 (scikit-learn's zero_division=0), so it is left out by default: the
classes reported are those seen in the truth or the predictions, as scikit-learn's own
report does, unless `classes` names them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    precision_recall_curve,
    precision_recall_fscore_support,
)

DEFAULT_THRESHOLD = 0.5
CONFUSION_PRINT_MAX = 12  # classes up to which format_table prints the confusion matrix


@dataclass(frozen=True)
class ClassRow:
    name: str
    support: int  # true examples of the class
    precision: float
    recall: float
    f1: float


@dataclass(frozen=True)
class ClassificationMetrics:
    multi_label: bool
    examples: int
    accuracy: float  # subset accuracy for multi-label sets
    micro_precision: float
    micro_recall: float
    micro_f1: float
    macro_precision: float
    macro_recall: float
    macro_f1: float
    per_class: list[ClassRow]
    confusion: list[list[int]] | None  # [true][predicted] over per_class's classes; single-label only

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, label_names: list[str], *,
                           classes: np.ndarray | list[int] | None = None) -> ClassificationMetrics:
    """The metrics of predictions against the truth, over `classes` (indices into
    label_names; by default every class seen in either)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape or y_true.ndim not in (1, 2):
        raise ValueError(f"truth {y_true.shape} and predictions {y_pred.shape} must share one "
                         "shape: (n,) class indices or (n, classes) indicators")
    multi = y_true.ndim == 2
    chosen = _classes(y_true, y_pred, multi) if classes is None else np.asarray(classes, int)
    if multi:
        return _multi_label(y_true[:, chosen], y_pred[:, chosen], [label_names[c] for c in chosen])
    return _single_label(y_true, y_pred, chosen, label_names)


def _classes(y_true: np.ndarray, y_pred: np.ndarray, multi: bool) -> np.ndarray:
    if multi:
        return np.flatnonzero(y_true.any(axis=0) | y_pred.any(axis=0))
    return np.union1d(y_true, y_pred).astype(int)


def _averages(y_true: np.ndarray, y_pred: np.ndarray, **labels: Any) -> dict[str, float]:
    figures: dict[str, float] = {}
    for average in ("micro", "macro"):
        p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, average=average,
                                                     zero_division=0, **labels)
        figures |= {f"{average}_precision": float(p), f"{average}_recall": float(r),
                    f"{average}_f1": float(f)}
    return figures


def _rows(y_true: np.ndarray, y_pred: np.ndarray, names: list[str],
          **labels: Any) -> list[ClassRow]:
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, average=None,
                                                 zero_division=0, **labels)
    return [ClassRow(name, int(s[i]), float(p[i]), float(r[i]), float(f[i]))
            for i, name in enumerate(names)]


def _multi_label(y_true: np.ndarray, y_pred: np.ndarray, names: list[str]) -> ClassificationMetrics:
    if not names:  # nothing true, nothing predicted: no class to average over
        return _empty(True, len(y_true), float(accuracy_score(y_true, y_pred)))
    if y_true.shape[1] == 1:
        # scikit-learn reads one column as a binary target (and reports its 0s as a class);
        # an all-zero column beside it keeps the matrix multi-label and changes no count.
        y_true, y_pred = (np.hstack([a, np.zeros_like(a)]) for a in (y_true, y_pred))
    labels = {"labels": list(range(len(names)))}
    return ClassificationMetrics(
        multi_label=True, examples=len(y_true), accuracy=float(accuracy_score(y_true, y_pred)),
        **_averages(y_true, y_pred, **labels), per_class=_rows(y_true, y_pred, names, **labels),
        confusion=None)


def _single_label(y_true: np.ndarray, y_pred: np.ndarray, classes: np.ndarray,
                  label_names: list[str]) -> ClassificationMetrics:
    # Over a subset of classes, accuracy is over the examples of those classes.
    inside = np.isin(y_true, classes)
    accuracy = float(accuracy_score(y_true[inside], y_pred[inside])) if inside.any() else 0.0
    if not len(classes):
        return _empty(False, len(y_true), accuracy)
    labels = {"labels": classes}
    names = [label_names[c] for c in classes]
    confusion = confusion_matrix(y_true, y_pred, labels=classes)
    return ClassificationMetrics(
        multi_label=False, examples=len(y_true), accuracy=accuracy,
        **_averages(y_true, y_pred, **labels), per_class=_rows(y_true, y_pred, names, **labels),
        confusion=confusion.tolist())


def _empty(multi: bool, examples: int, accuracy: float) -> ClassificationMetrics:
    return ClassificationMetrics(multi, examples, accuracy, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, [],
                                 None if multi else [])


def most_frequent(y_train: np.ndarray, k: int, n_classes: int) -> np.ndarray:
    """The indices of the k classes with the most training examples (ties: lower index)."""
    y_train = np.asarray(y_train)
    counts = (y_train.sum(axis=0) if y_train.ndim == 2
              else np.bincount(y_train.astype(int), minlength=n_classes))
    order = np.lexsort((np.arange(n_classes), -counts[:n_classes]))
    return np.sort(order[:k])


def top_k_classes(y_train: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray,
                  label_names: list[str], k: int = 10) -> ClassificationMetrics:
    """The metrics over the k classes most frequent in training (Reuters' "10 most
    frequent" of the literature)."""
    return classification_metrics(y_true, y_pred, label_names,
                                  classes=most_frequent(y_train, k, len(label_names)))


def tune_thresholds(scores: np.ndarray, y_true: np.ndarray, *,
                    min_positives: int = 1) -> np.ndarray:
    """Per-class thresholds tuned on a validation part (a class is predicted where its score
    reaches its threshold): its own, the cut that maximizes its F1, for a class with at least
    `min_positives` validation positives; for the others one shared threshold, the cut that
    maximizes micro-F1 over all classes. A class's own cut from one or two positives fits
    them, not the class: on Reuters' test stories such cuts cost micro-F1 more than they
    gain in macro-F1."""
    scores, y_true = np.asarray(scores, float), np.asarray(y_true)
    # micro-F1 at one shared threshold is the F1 of every (example, class) decision at once
    shared = (_best_threshold(scores.ravel(), y_true.ravel()) if y_true.any()
              else DEFAULT_THRESHOLD)
    thresholds = np.full(scores.shape[1], shared, dtype=float)
    for c in range(scores.shape[1]):
        if y_true[:, c].sum() >= max(1, min_positives):
            thresholds[c] = _best_threshold(scores[:, c], y_true[:, c])
    return thresholds


def _best_threshold(scores: np.ndarray, truth: np.ndarray) -> float:
    precision, recall, cuts = precision_recall_curve(truth, scores)
    # The curve's last point (precision 1, recall 0) has no threshold.
    p, r = precision[:-1], recall[:-1]
    f1 = np.divide(2 * p * r, p + r, out=np.zeros_like(p), where=(p + r) > 0)
    best = float(cuts[int(np.argmax(f1))])
    # Halfway down to the next lower score: the same validation predictions, with a margin
    # on both sides for unseen scores.
    below = scores[scores < best]
    return (best + float(below.max())) / 2 if below.size else best


def apply_thresholds(scores: np.ndarray, thresholds: np.ndarray | float) -> np.ndarray:
    """0/1 indicators: a class is predicted where its score reaches its threshold."""
    return (np.asarray(scores) >= thresholds).astype(np.int8)


def format_table(metrics: ClassificationMetrics) -> str:
    """An aligned per-class table (most supported classes first) and a summary line."""
    rows = sorted(metrics.per_class, key=lambda row: (-row.support, row.name))
    width = max([len("class"), *(len(row.name) for row in rows)])
    lines = [f"{'class':<{width}}  {'support':>7}  {'precision':>9}  {'recall':>6}  {'f1':>6}"]
    lines += [f"{row.name:<{width}}  {row.support:>7,}  {row.precision:>9.3f}  "
              f"{row.recall:>6.3f}  {row.f1:>6.3f}" for row in rows]
    if metrics.confusion and len(metrics.confusion) <= CONFUSION_PRINT_MAX:
        lines += ["", *_confusion_lines(metrics)]
    accuracy = "subset accuracy" if metrics.multi_label else "accuracy"
    lines += ["", f"{metrics.examples:,} examples, {len(rows)} classes: {accuracy} "
              f"{metrics.accuracy:.3f}; micro P/R/F1 {metrics.micro_precision:.3f}/"
              f"{metrics.micro_recall:.3f}/{metrics.micro_f1:.3f}; macro P/R/F1 "
              f"{metrics.macro_precision:.3f}/{metrics.macro_recall:.3f}/{metrics.macro_f1:.3f}"]
    return "\n".join(lines)


def _confusion_lines(metrics: ClassificationMetrics) -> list[str]:
    assert metrics.confusion is not None
    names = [row.name for row in metrics.per_class]
    cell = max([7, *(len(n) for n in names), *(len(f"{v:,}") for r in metrics.confusion for v in r)])
    lines = ["confusion (rows: true, columns: predicted)",
             " " * cell + "".join(f"  {n:>{cell}}" for n in names)]
    lines += [f"{name:>{cell}}" + "".join(f"  {v:>{cell},}" for v in row)
              for name, row in zip(names, metrics.confusion, strict=True)]
    return lines
