"""The Kedro dataset that logs the trained classifier to MLflow and its model registry."""

from __future__ import annotations

from typing import Any

import mlflow
from kedro.io import AbstractDataset, DatasetError
from mlflow import MlflowClient

from kedro_torch.pytorch.distributed import is_main_process
from kedro_torch.pytorch.inference import ModelSpec
from kedro_torch.tracking import model as mlflow_model


class MlflowImageClassifierDataset(AbstractDataset[dict, None]):
    """Logs the trained classifier to the active MLflow run as a model that takes raw
    images (see :mod:`kedro_torch.tracking.model`), registers it, and moves the
    registry alias ``champion_alias`` to it only if it beats the current holder.

    Saves a mapping with ``state_dict``, ``model_spec`` (a dict), ``label_map``,
    ``top_k``, ``batch_size``, ``registered_model_name`` (``None``: log only) and
    ``metrics``, which must hold ``champion_metric``.
    """

    def __init__(
        self,
        *,
        name: str = "model",
        champion_alias: str = "champion",
        champion_metric: str = "test_accuracy",
        metadata: dict[str, Any] | None = None,
    ):
        self._name = name
        self._champion_alias = champion_alias
        self._champion_metric = champion_metric
        self.metadata = metadata

    def save(self, data: dict[str, Any]) -> None:
        if not is_main_process():
            return
        if mlflow.active_run() is None:
            raise DatasetError(f"{type(self).__name__}: no active MLflow run to log to")
        registered_name = data["registered_model_name"]
        info = mlflow_model.log_image_classifier(
            self._name, data["state_dict"], ModelSpec.from_dict(data["model_spec"]),
            data["label_map"], data["top_k"], data["batch_size"], registered_name,
        )
        if registered_name:
            mlflow_model.promote_if_better(
                MlflowClient(), registered_name, str(info.registered_model_version),
                self._champion_metric, data["metrics"][self._champion_metric],
                self._champion_alias,
            )

    def load(self) -> None:
        raise DatasetError(
            f"{type(self).__name__} only logs; load the model with mlflow.pyfunc.load_model"
        )

    def _describe(self) -> dict[str, Any]:
        return {"name": self._name, "champion_alias": self._champion_alias,
                "champion_metric": self._champion_metric}
