"""Confusion matrix, per-class report, top-k accuracy, calibration and entropy against
hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from kedro_torch.pytorch.metrics import (
    calibration,
    classification_report,
    confusion_matrix,
    gallery_indices,
    predictive_entropy,
    top_k_accuracy,
)

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


def test_averages_and_normalized_matrix_by_hand():
    report = classification_report(TARGETS, PREDICTIONS, ["a", "b", "c"])
    # Per class: precision 1/3, 2/3, 0; recall 1/2, 1, 0; F1 2/5, 4/5, 0; support 2 each.
    assert report["macro_avg"] == pytest.approx({"precision": 1 / 3, "recall": 1 / 2,
                                                 "f1": 2 / 5})
    # Equal supports: the weighted average equals the macro average.
    assert report["weighted_avg"] == pytest.approx(report["macro_avg"])
    assert report["confusion_matrix_normalized"] == [
        [0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]
    ]


def test_weighted_average_follows_support():
    # Class x: 3 images, all right; class y: 1 image, wrong (predicted x).
    report = classification_report(torch.tensor([0, 0, 0, 1]), torch.tensor([0, 0, 0, 0]),
                                   ["x", "y"])
    assert report["macro_avg"]["recall"] == pytest.approx(0.5)
    assert report["weighted_avg"]["recall"] == pytest.approx(0.75)


def test_top_k_accuracy():
    logits = torch.tensor([[0.1, 0.5, 0.4], [0.7, 0.2, 0.1], [0.2, 0.3, 0.5]])
    targets = torch.tensor([2, 0, 0])
    assert top_k_accuracy(logits, targets, 1) == pytest.approx(1 / 3)
    assert top_k_accuracy(logits, targets, 2) == pytest.approx(2 / 3)
    assert top_k_accuracy(logits, targets, 10) == 1.0  # k beyond the classes: every class


def test_entropy_is_zero_when_sure_and_log_c_when_undecided():
    probabilities = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]])
    entropy = predictive_entropy(probabilities)
    assert entropy.tolist() == pytest.approx([0.0, math.log(4)], abs=1e-6)


def test_calibration_by_hand():
    # Top probabilities 0.9 (right), 0.8 (wrong), 0.6 (right), 0.3 (class 0, wrong);
    # bins (0, 0.5] and (0.5, 1].
    probabilities = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.3, 0.7]])
    probabilities[3] = torch.tensor([0.3, 0.3])  # a row that does not sum to 1 is fine here
    targets = torch.tensor([0, 1, 0, 1])
    result = calibration(probabilities, targets, bins=2)
    low, high = result["bins"]
    assert low["count"] == 1
    assert low["confidence"] == pytest.approx(0.3)
    assert low["accuracy"] == 0.0
    assert high["count"] == 3
    assert high["confidence"] == pytest.approx((0.9 + 0.8 + 0.6) / 3)
    assert high["accuracy"] == pytest.approx(2 / 3)
    # ECE = sum over bins of count/n * |accuracy - confidence|.
    expected = 1 / 4 * 0.3 + 3 / 4 * abs(2 / 3 - 2.3 / 3)
    assert result["ece"] == pytest.approx(expected)


def test_calibration_leaves_empty_bins_without_values():
    result = calibration(torch.tensor([[0.9, 0.1]]), torch.tensor([0]), bins=2)
    assert result["bins"][0] == {"lower": 0.0, "upper": 0.5, "count": 0, "confidence": None,
                                 "accuracy": None}


def test_calibration_error_of_an_overconfident_model():
    # Always 90 % sure, right half the time: ECE = |0.5 - 0.9| = 0.4.
    probabilities = torch.tensor([[0.9, 0.1]] * 4)
    targets = torch.tensor([0, 1, 0, 1])
    result = calibration(probabilities, targets, bins=10)
    assert result["ece"] == pytest.approx(0.4)
    assert [b["count"] for b in result["bins"]] == [0] * 8 + [4, 0]  # 0.9 lies in (0.8, 0.9]


def test_gallery_picks_confidently_wrong_then_most_uncertain():
    probabilities = torch.tensor([
        [0.6, 0.4],   # wrong (true 1), confidence 0.6
        [0.95, 0.05],  # wrong (true 1), confidence 0.95
        [0.5, 0.5],   # right by the tie-break, most uncertain
        [0.99, 0.01],  # right
    ])
    targets = torch.tensor([1, 1, 0, 0])
    entropy = predictive_entropy(probabilities)
    picked = gallery_indices(probabilities, targets, entropy, count=2)
    assert picked["confidently_wrong"] == [1, 0]
    assert picked["most_uncertain"] == [2, 0]
