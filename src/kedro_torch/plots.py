"""Figures for the evaluation report.

Built on ``matplotlib.figure.Figure`` directly (no pyplot), so no GUI backend or
global figure state is involved and figures are freed when dropped.
"""

from __future__ import annotations

from collections.abc import Sequence

from matplotlib.figure import Figure


def confusion_matrix_figure(matrix: Sequence[Sequence[int]], class_names: Sequence[str]) -> Figure:
    size = max(4.0, 0.5 * len(class_names) + 2)
    figure = Figure(figsize=(size, size), layout="constrained")
    axes = figure.subplots()
    image = axes.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axes, shrink=0.8)
    ticks = range(len(class_names))
    axes.set_xticks(ticks, class_names, rotation=45, ha="right")
    axes.set_yticks(ticks, class_names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title("Confusion matrix (test split)")
    peak = max(max(row) for row in matrix) or 1
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            if count:
                colour = "white" if count > peak / 2 else "black"
                axes.text(j, i, count, ha="center", va="center", color=colour, fontsize=8)
    return figure


def learning_curve_figure(history: Sequence[dict[str, float]]) -> Figure:
    figure = Figure(figsize=(10, 4), layout="constrained")
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    epochs = [row["epoch"] for row in history]
    for axes, metric in ((loss_axes, "loss"), (accuracy_axes, "accuracy")):
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
