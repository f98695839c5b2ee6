"""Classification metrics computed from predicted and true class indices, and from
the predicted probabilities: top-k accuracy, calibration and uncertainty."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import pandas as pd
import torch
from torch.distributions import Categorical


def confusion_matrix(targets: torch.Tensor, predictions: torch.Tensor, num_classes: int
                     ) -> torch.Tensor:
    """Counts with true classes as rows and predicted classes as columns."""
    flat = targets.long() * num_classes + predictions.long()
    return torch.bincount(flat, minlength=num_classes**2).reshape(num_classes, num_classes)


def classification_report(
    targets: torch.Tensor, predictions: torch.Tensor, class_names: Sequence[str]
) -> dict:
    """Accuracy, per-class precision/recall/F1/support, their macro and weighted
    averages, and the confusion matrix in counts and normalized by row.

    A class never predicted (or never present) gets 0 for the undefined ratio,
    as scikit-learn does with ``zero_division=0``. The macro average weighs every
    class alike, so a rare class that fails drags it down; the weighted average
    weighs classes by support and follows accuracy more closely.
    """
    matrix = confusion_matrix(targets, predictions, len(class_names)).double()
    true_positives = matrix.diag()
    predicted = matrix.sum(dim=0)
    support = matrix.sum(dim=1)
    precision = torch.where(predicted > 0, true_positives / predicted.clamp(min=1), 0.0)
    recall = torch.where(support > 0, true_positives / support.clamp(min=1), 0.0)
    denominator = precision + recall
    f1 = torch.where(denominator > 0, 2 * precision * recall / denominator.clamp(min=1e-12), 0.0)
    scores = {"precision": precision, "recall": recall, "f1": f1}
    weights = support / support.sum()
    return {
        "accuracy": (true_positives.sum() / matrix.sum()).item(),
        "macro_avg": {name: values.mean().item() for name, values in scores.items()},
        "weighted_avg": {name: (values * weights).sum().item() for name, values in scores.items()},
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
        # Row i: where the images of class i went; the diagonal is each class's recall.
        "confusion_matrix_normalized": (matrix / support.clamp(min=1)[:, None]).tolist(),
    }


def top_k_accuracy(logits: torch.Tensor, targets: torch.Tensor, k: int) -> float:
    """Share of rows whose true class is among the ``k`` highest scores."""
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices
    return (top == targets[:, None]).any(dim=1).double().mean().item()


def predictive_entropy(probabilities: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of each row's predicted distribution: 0 when the model is sure,
    ``log(num_classes)`` when it cannot tell the classes apart."""
    return Categorical(probs=probabilities).entropy()


def calibration(probabilities: torch.Tensor, targets: torch.Tensor, bins: int) -> dict:
    """Expected calibration error and the reliability table it is computed from.

    Predictions are grouped by confidence (the top probability) into ``bins``
    equal-width bins ``(lower, upper]``; in a calibrated model each bin's accuracy
    equals its mean confidence. The ECE is the gap averaged over the bins,
    weighted by how many predictions fall in each.
    """
    confidence, predicted = probabilities.double().max(dim=1)
    correct = (predicted == targets).double()
    index = (confidence * bins).ceil().long().clamp(1, bins) - 1
    counts = torch.bincount(index, minlength=bins)
    confidence_sum = torch.bincount(index, weights=confidence, minlength=bins)
    correct_sum = torch.bincount(index, weights=correct, minlength=bins)
    ece = (correct_sum - confidence_sum).abs().sum() / max(len(targets), 1)
    table = [
        {
            "lower": i / bins,
            "upper": (i + 1) / bins,
            "count": int(counts[i]),
            "confidence": (confidence_sum[i] / counts[i]).item() if counts[i] else None,
            "accuracy": (correct_sum[i] / counts[i]).item() if counts[i] else None,
        }
        for i in range(bins)
    ]
    return {"ece": ece.item(), "bins": table}


def gallery_indices(
    probabilities: torch.Tensor, targets: torch.Tensor, entropy: torch.Tensor, count: int
) -> dict[str, list[int]]:
    """The rows worth looking at: the most confidently wrong and the most uncertain.

    Confidently wrong images are often mislabelled data or a systematic blind spot;
    the most uncertain ones show where the classes meet. Ties keep row order.
    """
    confidence, predicted = probabilities.max(dim=1)
    wrong = torch.nonzero(predicted != targets).flatten()
    by_confidence = torch.argsort(confidence[wrong], descending=True, stable=True)
    return {
        "confidently_wrong": wrong[by_confidence][:count].tolist(),
        "most_uncertain": torch.argsort(entropy, descending=True, stable=True)[:count].tolist(),
    }


def flat_test_metrics(report: dict) -> dict[str, float]:
    """A classification report's summary numbers under the names MLflow shows and runs
    are compared by: ``test_accuracy``, ``test_top<k>_accuracy``, ``test_ece``, ...
    The per-class scores are not among them: one chart per class and score would bury
    the training curves, so they go to MLflow as one table (:func:`per_class_table`)."""
    flat = {
        "test_accuracy": report["accuracy"],
        f"test_top{report['top_k']}_accuracy": report["top_k_accuracy"],
        "test_ece": report["calibration"]["ece"],
        "test_mean_entropy": report["mean_entropy"],
    }
    for average in ("macro_avg", "weighted_avg"):
        for score, value in report[average].items():
            flat[f"test_{average.removesuffix('_avg')}_{score}"] = value
    return flat


def per_class_table(report: dict) -> pd.DataFrame:
    """One row per class of a classification report: precision, recall, F1, support."""
    return pd.DataFrame([{"class": name, **scores}
                         for name, scores in report["per_class"].items()],
                        columns=["class", "precision", "recall", "f1", "support"])


def regression_report(predicted: torch.Tensor, actual: torch.Tensor) -> dict[str, float]:
    """RMSE, MAE (both in the target's own units) and R², the share of the target's
    variance the predictions explain: 0 for always predicting the mean, negative for
    worse. For a constant target R² is 1 if every prediction is exact, else 0, as
    scikit-learn's ``r2_score`` has it."""
    predicted, actual = predicted.double().flatten(), actual.double().flatten()
    if len(predicted) != len(actual) or not len(actual):
        raise ValueError(f"{len(predicted)} predictions for {len(actual)} actual values; "
                         "need as many, and at least one")
    errors = predicted - actual
    residual = errors.square().sum()
    total = (actual - actual.mean()).square().sum()
    r2 = 1 - residual / total if total > 0 else torch.tensor(float(residual == 0))
    return {"rmse": errors.square().mean().sqrt().item(), "mae": errors.abs().mean().item(),
            "r2": r2.item()}


def permutation_importance(
    score: Callable[[torch.Tensor], float], features: torch.Tensor,
    columns: Mapping[str, Sequence[int]], repeats: int = 5, seed: int = 0,
) -> pd.DataFrame:
    """How much ``score`` (higher is better) drops when one feature's values are
    shuffled across the rows, mean and standard deviation over ``repeats`` shuffles,
    the most important feature first.

    ``columns`` maps each of the user's features to its columns of ``features``;
    they are shuffled together, so a numeric column and its "was missing" indicator
    count as the one feature they are. Shuffling keeps each feature's distribution but
    breaks its link to the target, which is what the model loses without it.
    """
    generator = torch.Generator().manual_seed(seed)
    baseline = score(features)
    permuted = features.clone()
    rows = []
    for feature, indices in columns.items():
        index = list(indices)
        original = features[:, index]
        drops = []
        for _ in range(repeats):
            permuted[:, index] = original[torch.randperm(len(features), generator=generator)]
            drops.append(baseline - score(permuted))
        permuted[:, index] = original
        spread = torch.tensor(drops, dtype=torch.float64)
        rows.append({"feature": feature, "importance": spread.mean().item(),
                     "std": spread.std(correction=0).item()})
    table = pd.DataFrame(rows, columns=["feature", "importance", "std"])
    return table.sort_values("importance", ascending=False, kind="stable", ignore_index=True)
