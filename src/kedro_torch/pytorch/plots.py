"""Figures for the evaluation report.

Built on ``matplotlib.figure.Figure`` directly (no pyplot), so no GUI backend or
global figure state is involved and figures are freed when dropped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from numpy.typing import ArrayLike


def confusion_matrix_figure(
    matrix: Sequence[Sequence[int]],
    normalized: Sequence[Sequence[float]],
    class_names: Sequence[str],
) -> Figure:
    """Counts beside the row-normalized matrix, whose diagonal is each class's recall:
    counts show where most errors are, the normalized matrix which classes suffer."""
    size = max(4.0, 0.5 * len(class_names) + 2)
    figure = Figure(figsize=(2 * size + 1, size), layout="constrained")
    count_axes, share_axes = figure.subplots(1, 2)
    _matrix_panel(figure, count_axes, matrix, class_names, "Counts", "{:d}")
    _matrix_panel(figure, share_axes, normalized, class_names, "Normalized by true class",
                  "{:.2f}")
    figure.suptitle("Confusion matrix (test split)")
    return figure


def _matrix_panel(
    figure: Figure,
    axes: Axes,
    values: Sequence[Sequence[float]],
    class_names: Sequence[str],
    title: str,
    text_format: str,
) -> None:
    image = axes.imshow(values, cmap="Blues")
    figure.colorbar(image, ax=axes, shrink=0.8)
    ticks = range(len(class_names))
    axes.set_xticks(ticks, class_names, rotation=45, ha="right")
    axes.set_yticks(ticks, class_names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title)
    peak = max(max(row) for row in values) or 1
    for i, row in enumerate(values):
        for j, value in enumerate(row):
            if value:
                colour = "white" if value > peak / 2 else "black"
                axes.text(j, i, text_format.format(value), ha="center", va="center",
                          color=colour, fontsize=7)


def learning_curve_figure(history: Sequence[dict[str, float]]) -> Figure:
    """One panel per metric the epochs recorded (the loss, then the task's own:
    accuracy, or RMSE and MAE; a detector's losses, then its validation mAP), training
    and validation together."""
    keys = history[0] if history else {}
    names = list(dict.fromkeys(key.split("_", 1)[1] for key in keys
                               if key.startswith(("train_", "val_")))) or ["loss"]
    figure = Figure(figsize=(5 * len(names), 4), layout="constrained")
    panels = figure.subplots(1, len(names), squeeze=False)[0]
    epochs = [row["epoch"] for row in history]
    for axes, metric in zip(panels, names, strict=True):
        for split in ("train", "val"):
            name = f"{split}_{metric}"
            if history and name in history[0]:
                axes.plot(epochs, [row[name] for row in history], marker="o", label=split)
        axes.set_xlabel("epoch")
        axes.set_ylabel(metric)
        axes.grid(alpha=0.3)
        axes.legend()
    figure.suptitle("Learning curves")
    return figure


def reliability_figure(bins: Sequence[Mapping], ece: float) -> Figure:
    """Accuracy per confidence bin against the bin's mean confidence, with how many
    predictions each bin holds.

    Ticks above the bars mean over-confidence, below them under-confidence; an
    almost empty bin says little.
    """
    figure = Figure(figsize=(6, 6.5), layout="constrained")
    reliability_axes, count_axes = figure.subplots(
        2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    filled = [b for b in bins if b["count"]]
    lower = [b["lower"] for b in filled]
    upper = [b["upper"] for b in filled]
    width = [b["upper"] - b["lower"] for b in filled]
    reliability_axes.bar(lower, [b["accuracy"] for b in filled], width=width, align="edge",
                         edgecolor="black", label="accuracy")
    reliability_axes.hlines([b["confidence"] for b in filled], lower, upper, colors="tab:red",
                            linewidth=3, label="mean confidence")
    reliability_axes.plot([0, 1], [0, 1], linestyle="--", color="grey", label="calibrated")
    reliability_axes.set_ylabel("accuracy")
    reliability_axes.set_ylim(0, 1)
    reliability_axes.legend(loc="upper left")
    reliability_axes.set_title(f"Reliability diagram (test split), ECE = {ece:.3f}")
    count_axes.bar(lower, [b["count"] for b in filled], width=width, align="edge",
                   edgecolor="black", color="grey")
    count_axes.set_xlabel("confidence (top probability)")
    count_axes.set_ylabel("images")
    count_axes.set_xlim(0, 1)
    return figure


def per_class_figure(per_class: Mapping[str, Mapping[str, float]]) -> Figure:
    """Precision, recall and F1 side by side for every class, support in the labels."""
    names = list(per_class)
    figure = Figure(figsize=(max(6.0, 0.6 * len(names) + 2), 4), layout="constrained")
    axes = figure.subplots()
    positions = np.arange(len(names))
    width = 0.27
    for offset, score in zip((-width, 0.0, width), ("precision", "recall", "f1"), strict=True):
        axes.bar(positions + offset, [per_class[n][score] for n in names], width, label=score)
    axes.set_xticks(positions, [f"{n}\n(n={per_class[n]['support']})" for n in names])
    axes.set_ylim(0, 1.15)
    axes.set_ylabel("score")
    axes.legend(loc="upper center", ncols=3)
    axes.set_title("Per-class metrics (test split)")
    return figure


def gallery_figure(sections: Mapping[str, Sequence[tuple[np.ndarray, str]]]) -> Figure:
    """Rows of captioned images, one row per section (e.g. "most confidently wrong").

    Images are pixel arrays of shape (H, W) (shown in grey) or (H, W, 3).
    """
    columns = max((len(images) for images in sections.values()), default=1) or 1
    rows = max(len(sections), 1)
    figure = Figure(figsize=(1.6 * columns + 0.5, 2.1 * rows), layout="constrained")
    grid = figure.subplots(rows, columns, squeeze=False)
    for row, (title, images) in zip(grid, sections.items(), strict=False):
        row[0].set_title(title, loc="left", fontsize=10, pad=22)
        for axes, (pixels, caption) in zip(row, images, strict=False):
            grey = {"cmap": "gray", "vmin": 0, "vmax": 255} if pixels.ndim == 2 else {}
            axes.imshow(pixels, **grey)
            axes.set_xlabel(caption, fontsize=7)
        if not images:
            row[0].text(0.5, 0.5, "none", ha="center", va="center")
    for axes in grid.flat:
        axes.set_xticks([])
        axes.set_yticks([])
        axes.spines[:].set_visible(False)
    figure.suptitle("Test images worth a look")
    return figure


def predicted_vs_actual_figure(predicted: ArrayLike, actual: ArrayLike) -> Figure:
    """Each row's prediction against its true value, with the diagonal of perfect
    predictions: points off it are errors, a slope or curve of the cloud is a bias."""
    predicted, actual = np.asarray(predicted, dtype=float), np.asarray(actual, dtype=float)
    figure = Figure(figsize=(6, 6), layout="constrained")
    axes = figure.subplots()
    axes.scatter(actual, predicted, s=8, alpha=min(1.0, max(0.1, 300 / max(len(actual), 1))))
    low = min(actual.min(), predicted.min())
    high = max(actual.max(), predicted.max())
    axes.plot([low, high], [low, high], linestyle="--", color="grey", label="predicted = actual")
    axes.set_xlabel("actual")
    axes.set_ylabel("predicted")
    axes.set_aspect("equal", adjustable="datalim")
    axes.grid(alpha=0.3)
    axes.legend(loc="upper left")
    axes.set_title("Predicted vs actual (test split)")
    return figure


def residual_histogram_figure(predicted: ArrayLike, actual: ArrayLike) -> Figure:
    """How far predictions miss, and to which side: a histogram off-centre from 0 is a
    bias, long tails are the rows the model gets badly wrong."""
    residuals = np.asarray(predicted, dtype=float) - np.asarray(actual, dtype=float)
    figure = Figure(figsize=(7, 4), layout="constrained")
    axes = figure.subplots()
    axes.hist(residuals, bins=int(np.clip(np.sqrt(len(residuals)), 10, 50)), edgecolor="black")
    axes.axvline(0, linestyle="--", color="grey")
    axes.set_xlabel("residual (predicted - actual)")
    axes.set_ylabel("rows")
    axes.set_title(f"Residuals (test split): mean {residuals.mean():.3g}, "
                   f"std {residuals.std():.3g}")
    return figure


def importance_figure(table: pd.DataFrame) -> Figure:
    """Permutation importance per feature (columns ``feature``, ``importance``,
    ``std``), the most important at the top, the spread over shuffles as error bars.
    A bar near 0 (or below) is a feature the model does without."""
    ordered = table.sort_values("importance", kind="stable")
    figure = Figure(figsize=(7, max(2.5, 0.35 * len(ordered) + 1.5)), layout="constrained")
    axes = figure.subplots()
    axes.barh(ordered["feature"], ordered["importance"], xerr=ordered["std"], capsize=3)
    axes.axvline(0, color="black", linewidth=0.8)
    axes.set_xlabel("drop in score when the feature is shuffled")
    axes.set_title("Permutation importance (test split)")
    return figure
