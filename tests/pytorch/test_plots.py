"""The evaluation figures build from the report's plain data, edge cases included."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from kedro_torch.pytorch import plots

NAMES = ["a", "b"]


def test_confusion_matrix_has_counts_and_normalized_panels():
    figure = plots.confusion_matrix_figure([[3, 1], [0, 0]], [[0.75, 0.25], [0.0, 0.0]], NAMES)
    titles = [axes.get_title() for axes in figure.axes if axes.get_title()]
    assert titles == ["Counts", "Normalized by true class"]


def test_reliability_figure_skips_empty_bins():
    bins = [{"lower": 0.0, "upper": 0.5, "count": 0, "confidence": None, "accuracy": None},
            {"lower": 0.5, "upper": 1.0, "count": 4, "confidence": 0.9, "accuracy": 0.5}]
    figure = plots.reliability_figure(bins, ece=0.4)
    assert "ECE = 0.400" in figure.axes[0].get_title()
    assert len(figure.axes[0].patches) == 1  # one accuracy bar, for the filled bin


def test_per_class_figure_shows_three_scores_per_class():
    scores = {"precision": 0.5, "recall": 1.0, "f1": 0.67, "support": 2}
    figure = plots.per_class_figure({"a": scores, "b": scores})
    assert len(figure.axes[0].patches) == 6


def test_gallery_shows_every_image_and_copes_with_an_empty_section():
    grey = np.zeros((8, 8), dtype=np.uint8)
    colour = np.zeros((8, 8, 3), dtype=np.uint8)
    figure = plots.gallery_figure({"wrong": [], "uncertain": [(grey, "x"), (colour, "y")]})
    assert isinstance(figure, Figure)
    assert sum(len(axes.images) for axes in figure.axes) == 2
