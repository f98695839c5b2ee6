"""Regression errors, permutation importance, and their figures."""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd
import pytest
import torch

from kedro_torch.pytorch import plots
from kedro_torch.pytorch.metrics import permutation_importance, regression_report


def test_regression_report_in_the_targets_units():
    actual = torch.tensor([1.0, 2.0, 3.0, 4.0])
    report = regression_report(torch.tensor([1.0, 2.0, 3.0, 6.0]), actual)
    assert report["rmse"] == pytest.approx(1.0)  # sqrt(4 / 4)
    assert report["mae"] == pytest.approx(0.5)
    assert report["r2"] == pytest.approx(1 - 4 / 5)  # total sum of squares: 5
    assert regression_report(actual.mean().expand(4), actual)["r2"] == pytest.approx(0.0)
    assert regression_report(actual[:, None], actual)["rmse"] == 0.0  # (rows, 1) outputs


def test_r2_of_a_constant_target_is_1_when_exact_else_0():
    constant = torch.full((3,), 2.0)
    assert regression_report(constant, constant)["r2"] == 1.0
    assert regression_report(torch.tensor([2.0, 2.0, 3.0]), constant)["r2"] == 0.0


def test_regression_report_needs_as_many_predictions_as_values():
    with pytest.raises(ValueError, match="2 predictions for 3 actual values"):
        regression_report(torch.zeros(2), torch.zeros(3))


def importance_case() -> tuple[torch.Tensor, dict[str, list[int]], Callable]:
    """Feature "a" is two identical columns (a value and its copy, as a numeric column
    and its indicator come together), "b" predicts the target, "c" is unused."""
    generator = torch.Generator().manual_seed(0)
    a, b, c = torch.randn(3, 200, generator=generator)
    features = torch.stack([a, a, b, c], dim=1)
    target = b.clone()

    def score(x: torch.Tensor) -> float:
        return -((x[:, 0] - x[:, 1]).square().mean() + (x[:, 2] - target).square().mean()).item()

    return features, {"a": [0, 1], "b": [2], "c": [3]}, score


def test_permutation_importance_shuffles_a_features_columns_together():
    features, columns, score = importance_case()
    before = features.clone()
    table = permutation_importance(score, features, columns, repeats=4, seed=1)
    assert list(table.columns) == ["feature", "importance", "std"]
    assert table["feature"].tolist()[0] == "b"
    importance = table.set_index("feature")["importance"]
    assert importance["b"] == pytest.approx(2 * features[:, 2].var().item(), rel=0.3)
    assert importance["a"] == importance["c"] == 0.0  # a's two columns stayed equal
    assert table.set_index("feature")["std"]["b"] > 0
    assert torch.equal(features, before)


def test_permutation_importance_repeats_with_its_seed():
    features, columns, score = importance_case()
    first = permutation_importance(score, features, columns, seed=1)
    pd.testing.assert_frame_equal(first, permutation_importance(score, features, columns, seed=1))
    assert not first.equals(permutation_importance(score, features, columns, seed=2))


def test_predicted_vs_actual_plots_every_row_beside_the_diagonal():
    actual = torch.arange(10.0)
    figure = plots.predicted_vs_actual_figure(actual + 1, actual)
    axes = figure.axes[0]
    assert len(axes.collections[0].get_offsets()) == 10
    assert list(axes.lines[0].get_xdata()) == [0.0, 10.0]  # from the lowest to the highest value


def test_residual_histogram_counts_every_row_and_reports_the_bias():
    actual = torch.arange(100.0)
    figure = plots.residual_histogram_figure(actual + 2, actual)
    axes = figure.axes[0]
    assert sum(patch.get_height() for patch in axes.patches) == 100
    assert "mean 2, std 0" in axes.get_title()


def test_importance_figure_puts_the_most_important_feature_on_top():
    table = pd.DataFrame({"feature": ["x", "y", "z"], "importance": [0.1, 0.5, -0.01],
                          "std": [0.01, 0.02, 0.0]})
    axes = plots.importance_figure(table).axes[0]
    bars = sorted(axes.patches, key=lambda bar: bar.get_y())
    assert [bar.get_width() for bar in bars] == [-0.01, 0.1, 0.5]  # bottom to top
    labels = [label.get_text() for label in axes.get_yticklabels()]
    assert labels == ["z", "x", "y"]
