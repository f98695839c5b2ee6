"""Classification metrics computed from predicted and true class indices."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def confusion_matrix(targets: torch.Tensor, predictions: torch.Tensor, num_classes: int
                     ) -> torch.Tensor:
    """Counts with true classes as rows and predicted classes as columns."""
    flat = targets.long() * num_classes + predictions.long()
    return torch.bincount(flat, minlength=num_classes**2).reshape(num_classes, num_classes)


def classification_report(
    targets: torch.Tensor, predictions: torch.Tensor, class_names: Sequence[str]
) -> dict:
    """Accuracy, per-class precision/recall/F1/support and the confusion matrix.

    A class never predicted (or never present) gets 0 for the undefined ratio,
    as scikit-learn does with ``zero_division=0``.
    """
    matrix = confusion_matrix(targets, predictions, len(class_names)).double()
    true_positives = matrix.diag()
    predicted = matrix.sum(dim=0)
    support = matrix.sum(dim=1)
    precision = torch.where(predicted > 0, true_positives / predicted.clamp(min=1), 0.0)
    recall = torch.where(support > 0, true_positives / support.clamp(min=1), 0.0)
    denominator = precision + recall
    f1 = torch.where(denominator > 0, 2 * precision * recall / denominator.clamp(min=1e-12), 0.0)
    return {
        "accuracy": (true_positives.sum() / matrix.sum()).item(),
        "per_class": {
            name: {
                "precision": precision[i].item(),
                "recall": recall[i].item(),
                "f1": f1[i].item(),
                "support": int(support[i].item()),
            }
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": matrix.long().tolist(),
    }
