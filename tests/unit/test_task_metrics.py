"""Classification metrics against small cases worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from lmforge.tasks.metrics import (
    ClassRow,
    apply_thresholds,
    classification_metrics,
    format_table,
    most_frequent,
    top_k_classes,
    tune_thresholds,
)


def test_single_label_imbalanced_micro_and_macro_differ():
    # 8 of class a, 2 of class b; the model always says a.
    y_true = np.array([0] * 8 + [1] * 2)
    y_pred = np.zeros(10, dtype=int)
    m = classification_metrics(y_true, y_pred, ["a", "b"])
    assert not m.multi_label and m.examples == 10
    assert m.accuracy == pytest.approx(0.8)
    # Single-label micro averages are the accuracy.
    assert (m.micro_precision, m.micro_recall, m.micro_f1) == pytest.approx((0.8, 0.8, 0.8))
    # a: P 8/10, R 1, F1 16/18; b: nothing predicted, F1 0.
    assert m.per_class == [ClassRow("a", 8, 0.8, 1.0, pytest.approx(16 / 18)),
                           ClassRow("b", 2, 0.0, 0.0, 0.0)]
    assert m.macro_f1 == pytest.approx(8 / 18)
    assert m.macro_precision == pytest.approx(0.4) and m.macro_recall == pytest.approx(0.5)
    assert m.confusion == [[8, 0], [2, 0]]


def test_multi_label_by_hand():
    y_true = np.array([[1, 0], [1, 1], [0, 1], [0, 0]])
    y_pred = np.array([[1, 0], [1, 0], [0, 1], [1, 0]])
    m = classification_metrics(y_true, y_pred, ["x", "y"])
    assert m.multi_label and m.confusion is None
    assert m.accuracy == pytest.approx(0.5)  # rows 0 and 2 exactly right
    # x: TP 2, FP 1, FN 0; y: TP 1, FP 0, FN 1; pooled: TP 3, FP 1, FN 1.
    assert [(r.name, r.support) for r in m.per_class] == [("x", 2), ("y", 2)]
    assert m.per_class[0].f1 == pytest.approx(0.8) and m.per_class[1].f1 == pytest.approx(2 / 3)
    assert (m.micro_precision, m.micro_recall, m.micro_f1) == pytest.approx((0.75, 0.75, 0.75))
    assert m.macro_f1 == pytest.approx((0.8 + 2 / 3) / 2)
    assert m.as_dict()["per_class"][0] == {"name": "x", "support": 2, "precision": 2 / 3,
                                           "recall": 1.0, "f1": 0.8}


def test_classes_never_seen_are_left_out_unless_named():
    y_true = np.array([[1, 0, 0], [0, 1, 0]])
    y_pred = np.array([[1, 0, 0], [0, 1, 0]])
    assert classification_metrics(y_true, y_pred, ["a", "b", "c"]).macro_f1 == 1.0
    named = classification_metrics(y_true, y_pred, ["a", "b", "c"], classes=[0, 1, 2])
    assert named.macro_f1 == pytest.approx(2 / 3) and named.micro_f1 == 1.0


def test_top_k_uses_the_most_frequent_training_classes():
    names = ["a", "b", "c"]
    y_train = np.array([[1, 0, 1], [1, 0, 1], [1, 1, 0], [1, 0, 1], [1, 0, 0]])  # 5, 1, 3
    assert most_frequent(y_train, 2, 3).tolist() == [0, 2]
    y_true = np.array([[1, 1, 0], [0, 1, 1]])
    y_pred = np.array([[1, 0, 0], [0, 0, 1]])  # b, the rare class, always missed
    top = top_k_classes(y_train, y_true, y_pred, names, k=2)
    assert [r.name for r in top.per_class] == ["a", "c"]
    assert top.micro_f1 == 1.0 and top.accuracy == 1.0
    assert classification_metrics(y_true, y_pred, names).micro_f1 == pytest.approx(2 / 3)


def test_top_k_single_label_counts_the_examples_of_those_classes():
    y_train = np.array([0, 0, 0, 1, 2, 2])
    assert most_frequent(y_train, 2, 3).tolist() == [0, 2]
    y_true, y_pred = np.array([0, 1, 2, 2]), np.array([0, 0, 2, 1])
    top = top_k_classes(y_train, y_true, y_pred, ["a", "b", "c"], k=2)
    assert top.accuracy == pytest.approx(2 / 3)  # of the 3 examples of a and c
    assert top.confusion == [[1, 0], [0, 1]]


def test_tuned_thresholds_beat_one_half_on_a_constructed_case():
    # Class 0 scores low but separably; class 1 has no positives on the validation part.
    scores = np.array([[0.30, 0.9], [0.35, 0.1], [0.10, 0.2], [0.20, 0.4], [0.32, 0.3]])
    y_true = np.array([[1, 0], [1, 0], [0, 0], [0, 0], [1, 0]])
    thresholds = tune_thresholds(scores, y_true)
    assert thresholds[0] == pytest.approx(0.25)  # halfway between 0.20 and 0.30
    # no positive: the shared cut, best for micro-F1 over every decision (0.30, 3 of 6
    # predicted right), halfway down to the next score (0.20)
    assert thresholds[1] == pytest.approx(0.25)
    tuned = classification_metrics(y_true[:, :1], apply_thresholds(scores, thresholds)[:, :1],
                                   ["p"])
    plain = classification_metrics(y_true[:, :1], apply_thresholds(scores, 0.5)[:, :1], ["p"],
                                   classes=[0])
    assert tuned.per_class[0].support == 3 and tuned.micro_f1 == 1.0 and plain.micro_f1 == 0.0


def test_a_class_with_too_few_validation_positives_takes_the_shared_threshold():
    # class 1's two positives score 0.9 and 0.15: its own best cut takes both (F1 2/3, as
    # 0.9 alone), halfway down to 0.05, and would fire on its negatives at 0.2 and 0.6
    scores = np.array([[0.9, 0.2], [0.8, 0.15], [0.1, 0.9], [0.2, 0.05], [0.7, 0.6]])
    y_true = np.array([[1, 0], [1, 1], [0, 1], [0, 0], [1, 0]])
    assert tune_thresholds(scores, y_true, min_positives=2)[1] == pytest.approx(0.10)
    # with three positives needed, class 1 takes the cut best for micro-F1 over all ten
    # decisions (0.7: four of five positives, no negative), halfway down to 0.6
    thresholds = tune_thresholds(scores, y_true, min_positives=3)
    assert thresholds[1] == pytest.approx(0.65)
    assert thresholds[0] == pytest.approx(0.45)  # three positives: its own cut (0.7 .. 0.2)



    scores = np.array([[0.9], [0.8], [0.7], [0.6], [0.5], [0.4]])
    y_true = np.array([[1], [0], [1], [1], [0], [0]])
    # Thresholds at 0.9, 0.7 and 0.6 give F1 2/3, 2/3 and 6/7: 0.6 is best, then the margin.
    assert tune_thresholds(scores, y_true)[0] == pytest.approx(0.55)


def test_format_table_aligns_rows_and_sums_up():
    y_true = np.array([0, 0, 0, 1, 2, 2])
    y_pred = np.array([0, 0, 1, 1, 2, 0])
    table = format_table(classification_metrics(y_true, y_pred, ["earn", "acq", "money-fx"]))
    lines = table.splitlines()
    assert lines[0].split() == ["class", "support", "precision", "recall", "f1"]
    assert [line.split()[0] for line in lines[1:4]] == ["earn", "money-fx", "acq"]
    assert len({len(line) for line in lines[:4]}) == 1
    assert "confusion (rows: true, columns: predicted)" in table
    assert lines[-1].startswith("6 examples, 3 classes: accuracy 0.667; micro P/R/F1 0.667/")
    multi = classification_metrics(np.array([[1, 0], [0, 1]]), np.array([[1, 0], [0, 0]]),
                                   ["a", "b"])
    assert "subset accuracy 0.500" in format_table(multi)


def test_mismatched_shapes_are_a_programming_error():
    with pytest.raises(ValueError, match="share one shape"):
        classification_metrics(np.zeros(3), np.zeros((3, 2)), ["a", "b"])
