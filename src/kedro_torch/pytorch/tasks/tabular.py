"""Tables: a class (tabular_classification) or a number (tabular_regression) per row of
a pandas DataFrame.

The preprocessing is fitted on the training split (:mod:`kedro_torch.pytorch.tables`)
and the table becomes two tensors held whole, fed in slices
(:class:`~kedro_torch.pytorch.tensor_loader.TensorBatches`): a table's step is too
small for a DataLoader's per-row fetching. A regression model learns the
standardized target; its errors are reported in the target's own units. Evaluation
adds the permutation importance of each of the user's columns.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from torch import nn

from kedro_torch.pytorch import engine, metrics, plots, tables
from kedro_torch.pytorch.cache import ImageStore
from kedro_torch.pytorch.config import (
    DataConfig,
    EvaluationConfig,
    InferenceConfig,
    ModelConfig,
)
from kedro_torch.pytorch.table_inference import TableModelSpec, TablePredictor
from kedro_torch.pytorch.tasks.base import (
    Classification,
    Evaluation,
    PreparedData,
    Task,
    classification_figures,
    score_classifier,
)
from kedro_torch.pytorch.tensor_loader import TensorBatches

logger = logging.getLogger(__name__)

# Shuffles of each column for its permutation importance.
IMPORTANCE_REPEATS = 5


class _Table(Task):
    """What both table tasks share: the data, the loaders, the model's shapes."""

    sources = ("table",)
    spec_type = TableModelSpec
    kind: ClassVar[str]

    def prepare_data(self, raw: pd.DataFrame, config: DataConfig,
                     on_disk: ImageStore | None) -> PreparedData:
        prepared = tables.prepare_table(raw, config, self.kind)
        return PreparedData(prepared.model_input, prepared.label_map, prepared.preprocessing,
                            prepared.report, ImageStore(None), on_disk)

    def build_loaders(self, model_input: pd.DataFrame, preprocessing: Mapping[str, Any],
                      config: DataConfig, seed: int, images: ImageStore | None,
                      pin_memory: bool) -> dict[str, TensorBatches]:
        coding = tables.TablePreprocessing.from_dict(dict(preprocessing))
        return {
            split: TensorBatches(
                coding.features(rows), coding.targets(rows),
                config.batch_size if split == "train" else config.validation_batch_size,
                shuffle=split == "train", seed=seed)
            for split, rows in model_input.groupby("split", sort=False)
        }

    def model_arguments(self, config: DataConfig, label_map: Mapping[str, int],
                        preprocessing: Mapping[str, Any]) -> dict[str, Any]:
        return tables.TablePreprocessing.from_dict(dict(preprocessing)).model_arguments

    def spec(self, model: ModelConfig, config: DataConfig,
             preprocessing: Mapping[str, Any]) -> TableModelSpec:
        return TableModelSpec(model.name, dict(preprocessing), model.kwargs, self.name)

    def trained_model(self, spec: TableModelSpec, state_dict: Mapping[str, torch.Tensor],
                      label_map: Mapping[str, int]) -> nn.Module:
        return spec.build_model(state_dict)

    def example_input(self, spec: TableModelSpec, batch: int) -> torch.Tensor:
        """Zeros: the mean of every standardized number, and code 0 (unknown) for every
        category, a valid row whatever the table."""
        coding = tables.TablePreprocessing.from_dict(spec.preprocessing)
        return torch.zeros(batch, coding.numeric_width + len(coding.categorical))

    def input_batch(self, model_input: pd.DataFrame, spec: TableModelSpec,
                    data_config: DataConfig, split: str) -> torch.Tensor:
        coding = tables.TablePreprocessing.from_dict(spec.preprocessing)
        return coding.features(model_input[model_input["split"] == split])

    def input_example(self, model_input: pd.DataFrame) -> pd.DataFrame:
        """A few training rows, as the user's columns hold them."""
        coding = tables.TablePreprocessing.from_dict(self.preprocessing)
        train = model_input[model_input["split"] == "train"]
        return train[coding.feature_names].head(5).reset_index(drop=True)

    def predict(self, state_dict: Mapping[str, torch.Tensor], spec: TableModelSpec,
                label_map: Mapping[str, int], table: pd.DataFrame, config: InferenceConfig,
                device: torch.device) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The table with the prediction columns added; every row is predicted (a
        missing value or an unseen category is coded as in training), so none fails."""
        predictor = TablePredictor.from_state_dict(dict(state_dict), spec, device)
        predictions = predictor.predict(table, config.batch_size)
        kept = table.drop(columns=[c for c in predictions.columns if c in table.columns])
        return (pd.concat([kept.reset_index(drop=True), predictions.reset_index(drop=True)],
                          axis=1),
                pd.DataFrame({"row": pd.Series(dtype="int64"), "error": pd.Series(dtype=str)}))

    def data_note(self, report: dict, config: DataConfig) -> tuple[str, dict[str, int], str]:
        classes = report["target"].get("counts") if self.kind == "classification" else None
        used = f"{report['usable_rows']} rows" + (f" in {len(classes)} classes" if classes
                                                   else "")
        return (used, report["split_sizes"],
                f"{len(report['set_aside'])} rows without a usable target set aside")

    def input_note(self, config: DataConfig, report: dict | None) -> str:
        roles = [column["role"] for column in (report or {}).get("columns", {}).values()]
        return (f"{roles.count('numeric')} numeric and {roles.count('categorical')} "
                f"categorical columns, target `{config.table.target}`")

    def evaluate(self, state_dict: Mapping[str, torch.Tensor], spec: TableModelSpec,
                 model_input: pd.DataFrame, label_map: Mapping[str, int],
                 config: EvaluationConfig, data_config: DataConfig,
                 images: ImageStore | None, device: torch.device, split: str) -> Evaluation:
        coding = tables.TablePreprocessing.from_dict(spec.preprocessing)
        rows = model_input[model_input["split"] == split]
        features, targets = coding.features(rows), coding.targets(rows)
        loader = TensorBatches(features, targets, data_config.validation_batch_size,
                               shuffle=False, seed=0, shard=False)
        model = spec.build_model(state_dict).to(device)
        outputs, _ = engine.predict(model, loader, device)

        def score(permuted: torch.Tensor) -> float:
            batches = TensorBatches(permuted, targets, data_config.validation_batch_size,
                                    shuffle=False, seed=0, shard=False)
            return self._score(engine.predict(model, batches, device)[0], targets, coding)

        importance = metrics.permutation_importance(
            score, features, coding.feature_columns, IMPORTANCE_REPEATS, seed=0)
        evaluation = self._measure(outputs, targets, rows, coding, config)
        evaluation.report["permutation_importance"] = importance.to_dict("records")
        evaluation.figures["permutation_importance"] = plots.importance_figure(importance)
        return evaluation

    def _score(self, outputs: torch.Tensor, targets: torch.Tensor,
               coding: tables.TablePreprocessing) -> float:
        """The figure permutation importance watches drop (higher is better)."""
        raise NotImplementedError

    def _measure(self, outputs: torch.Tensor, targets: torch.Tensor, rows: pd.DataFrame,
                 coding: tables.TablePreprocessing, config: EvaluationConfig) -> Evaluation:
        raise NotImplementedError


class TabularClassification(Classification, _Table):
    name = "tabular_classification"
    kind = "classification"

    def probe_arguments(self, config: DataConfig) -> dict[str, Any]:
        return {"numeric_features": 2, "cardinalities": [3], "num_outputs": 2}

    def _score(self, outputs: torch.Tensor, targets: torch.Tensor,
               coding: tables.TablePreprocessing) -> float:
        return (outputs.argmax(dim=1) == targets).double().mean().item()

    def _measure(self, outputs: torch.Tensor, targets: torch.Tensor, rows: pd.DataFrame,
                 coding: tables.TablePreprocessing, config: EvaluationConfig) -> Evaluation:
        scored = score_classifier(outputs, targets, coding.classes,
                                  min(config.top_k, len(coding.classes)),
                                  config.calibration_bins)
        names = np.asarray(coding.classes, dtype=object)
        table = pd.DataFrame({
            "row": rows["row"].to_numpy(), "true": names[targets.numpy()],
            "predicted": names[scored.predictions.numpy()],
            "probability": scored.confidence.numpy(), "entropy": scored.entropy.numpy(),
        })
        figures: dict[str, Figure] = classification_figures(scored.report, coding.classes)
        return Evaluation(scored.report, self.test_metrics(scored.report), table,
                          metrics.per_class_table(scored.report), figures)


class TabularRegression(_Table):
    """A number per row. The model's one output is the standardized target, so that one
    learning rate suits a target in grams as well as one in tonnes."""

    name = "tabular_regression"
    kind = "regression"
    default_loss = "MSELoss"
    probe_outputs = 1
    headline = ("test_r2", "test_rmse", "test_mae")
    epoch_metrics: ClassVar[dict[str, str]] = {"rmse": "min", "mae": "min"}

    def step(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
             loss_fn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """One output per row, shaped like the targets: a ``(rows, 1)`` output would
        broadcast against ``(rows,)`` targets into a (rows, rows) loss."""
        outputs = model(inputs).reshape(targets.shape)
        return outputs, loss_fn(outputs, targets)

    def metric_sums(self, device: torch.device) -> dict[str, torch.Tensor]:
        return super().metric_sums(device) | {
            "squared_error": torch.zeros((), device=device),
            "absolute_error": torch.zeros((), device=device)}

    def accumulate(self, sums: dict[str, torch.Tensor], outputs: torch.Tensor,
                   targets: torch.Tensor, loss: torch.Tensor) -> None:
        super().accumulate(sums, outputs, targets, loss)
        errors = outputs.detach().float() - targets
        sums["squared_error"] += errors.square().sum()
        sums["absolute_error"] += errors.abs().sum()

    def summarize(self, totals: Mapping[str, float]) -> dict[str, float]:
        """RMSE and MAE in the target's units: the errors are of the standardized
        target, so they are scaled back by its standard deviation."""
        scale = self.preprocessing["target_std"]
        return super().summarize(totals) | {
            "rmse": (totals["squared_error"] / totals["seen"]) ** 0.5 * scale,
            "mae": totals["absolute_error"] / totals["seen"] * scale}

    def probe_arguments(self, config: DataConfig) -> dict[str, Any]:
        return {"numeric_features": 2, "cardinalities": [3], "num_outputs": 1}

    def probe_targets(self) -> dict[str, torch.Tensor]:
        return {"value": torch.tensor([0.5, -1.0, 0.25])}

    def test_metrics(self, report: dict) -> dict[str, float]:
        return {f"test_{name}": report[name] for name in ("rmse", "mae", "r2")}

    def _score(self, outputs: torch.Tensor, targets: torch.Tensor,
               coding: tables.TablePreprocessing) -> float:
        return metrics.regression_report(outputs.reshape(-1), targets)["r2"]

    def _measure(self, outputs: torch.Tensor, targets: torch.Tensor, rows: pd.DataFrame,
                 coding: tables.TablePreprocessing, config: EvaluationConfig) -> Evaluation:
        predicted = coding.output_to_values(outputs).double()
        actual = torch.tensor(rows["target"].to_numpy(dtype=np.float64))
        report = metrics.regression_report(predicted, actual) | {"rows": len(rows)}
        logger.info("Test RMSE: %.4g, MAE: %.4g, R²: %.4f", report["rmse"], report["mae"],
                    report["r2"])
        table = pd.DataFrame({"row": rows["row"].to_numpy(), "true": actual.numpy(),
                              "predicted": predicted.numpy(),
                              "error": (predicted - actual).numpy()})
        figures = {"predicted_vs_actual": plots.predicted_vs_actual_figure(predicted, actual),
                   "residuals": plots.residual_histogram_figure(predicted, actual)}
        return Evaluation(report, self.test_metrics(report), table, pd.DataFrame(), figures)
