"""Confusion matrix and per-class report against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from kedro_torch.metrics import classification_report, confusion_matrix

# Class 2 ("c") is present twice but never predicted.
TARGETS = torch.tensor([0, 0, 1, 1, 2, 2])
PREDICTIONS = torch.tensor([0, 1, 1, 1, 0, 0])


def test_confusion_matrix_rows_are_true_classes():
    matrix = confusion_matrix(TARGETS, PREDICTIONS, num_classes=3)
    assert matrix.tolist() == [
        [1, 1, 0],
        [0, 2, 0],
        [2, 0, 0],
    ]


def test_confusion_matrix_has_a_row_and_column_for_absent_classes():
    matrix = confusion_matrix(torch.tensor([1]), torch.tensor([0]), num_classes=4)
    assert matrix.shape == (4, 4)
    assert matrix.sum().item() == 1
    assert matrix[1, 0].item() == 1


def test_classification_report_by_hand():
    report = classification_report(TARGETS, PREDICTIONS, ["a", "b", "c"])
    assert report["accuracy"] == pytest.approx(3 / 6)
    assert report["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [2, 0, 0]]
    a, b, c = (report["per_class"][name] for name in "abc")
    # a: 1 of 3 predicted "a" are right; 1 of 2 true "a" found; F1 = 2PR/(P+R).
    assert a["precision"] == pytest.approx(1 / 3)
    assert a["recall"] == pytest.approx(1 / 2)
    assert a["f1"] == pytest.approx(2 / 5)
    assert b["precision"] == pytest.approx(2 / 3)
    assert b["recall"] == pytest.approx(1.0)
    assert b["f1"] == pytest.approx(4 / 5)
    # Never predicted: precision is 0/0, reported as 0 like zero_division=0.
    assert c == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}
    assert [report["per_class"][n]["support"] for n in "abc"] == [2, 2, 2]


def test_class_predicted_but_never_present():
    report = classification_report(torch.tensor([0, 0]), torch.tensor([0, 1]), ["x", "y"])
    assert report["per_class"]["x"] == pytest.approx(
        {"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2}
    )
    assert report["per_class"]["y"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert report["accuracy"] == pytest.approx(0.5)


def test_perfect_predictions():
    targets = torch.tensor([2, 0, 1, 2])
    report = classification_report(targets, targets.clone(), ["a", "b", "c"])
    assert report["accuracy"] == 1.0
    for values in report["per_class"].values():
        assert values["precision"] == values["recall"] == values["f1"] == 1.0
    assert report["per_class"]["c"]["support"] == 2
