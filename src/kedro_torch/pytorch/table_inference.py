"""Predicting with a trained table model: raw rows in, a label or a value out.

Plain PyTorch and pandas, so that the inference pipeline, a notebook and the MLflow
model predict the same way. A :class:`TableModelSpec` is the small, JSON-able
description (``model_spec.json``) that rebuilds the model and the preprocessing
fitted on its training rows; rows are prepared exactly as in training and
evaluation, by :meth:`~kedro_torch.pytorch.tables.TablePreprocessing.features`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from torch import nn

from kedro_torch.pytorch import models
from kedro_torch.pytorch.tables import TablePreprocessing


@dataclass(frozen=True)
class TableModelSpec:
    """What rebuilds a trained table model: its name and arguments, and the
    preprocessing (:meth:`TablePreprocessing.to_dict`) that decides its shapes."""

    model_name: str
    preprocessing: dict[str, Any]
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    task: str = "tabular_classification"  # or "tabular_regression"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TableModelSpec:
        return cls(**values)

    def model_arguments(self) -> dict[str, Any]:
        """The shapes the data gives the model's constructor."""
        return TablePreprocessing.from_dict(self.preprocessing).model_arguments

    def build_model(self, state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
        """The architecture with these exact weights, in eval mode.

        Loading is strict: weights that do not fit the spec are an error here,
        not a silently half-initialised model.
        """
        model = models.build(self.model_name, self.model_arguments(), self.model_kwargs)
        model.load_state_dict(models.strip_wrapper_prefixes(state_dict))
        return model.eval()


class TablePredictor:
    """A trained table model with the preprocessing of its training rows."""

    def __init__(self, model: nn.Module, spec: TableModelSpec,
                 device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.spec = spec
        self.preprocessing = TablePreprocessing.from_dict(spec.preprocessing)

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, torch.Tensor], spec: TableModelSpec,
                        device: torch.device | str = "cpu") -> TablePredictor:
        return cls(spec.build_model(state_dict), spec, device)

    @torch.inference_mode()
    def outputs(self, table: pd.DataFrame, batch_size: int = 4096) -> torch.Tensor:
        """The model's raw outputs for each row, on the CPU, a batch at a time."""
        features = self.preprocessing.features(table)
        return torch.cat([self.model(batch.to(self.device)).float().cpu()
                          for batch in features.split(batch_size)])

    def predict(self, table: pd.DataFrame, batch_size: int = 4096) -> pd.DataFrame:
        """One row per row of ``table``, on its index.

        Classification: ``label`` (the likeliest class), its ``probability``, and
        ``probability_<class>`` for every class. Regression: ``value``, in the
        target's own units. A missing value or an unseen category is predicted as
        training taught (imputed, or the "unknown" code); a missing feature column
        is a ValueError naming it.
        """
        outputs = self.outputs(table, batch_size)
        classes = self.preprocessing.classes
        if self.preprocessing.kind == "regression":
            values = self.preprocessing.output_to_values(outputs).double().numpy()
            return pd.DataFrame({"value": values}, index=table.index)
        probabilities = outputs.softmax(dim=1)
        best = probabilities.max(dim=1)
        predictions = pd.DataFrame({"label": [classes[i] for i in best.indices.tolist()],
                                    "probability": best.values.double().numpy()},
                                   index=table.index)
        for index, name in enumerate(classes):
            predictions[f"probability_{name}"] = probabilities[:, index].double().numpy()
        return predictions
