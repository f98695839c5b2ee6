"""The Kedro datasets that log to MLflow: the trained classifier (and its registry
entry), and metrics."""

from __future__ import annotations

import time
from typing import Any

import mlflow
from kedro.io import AbstractDataset, DatasetError
from mlflow import MlflowClient

from kedro_torch.pytorch.distributed import is_main_process
from kedro_torch.pytorch.inference import ModelSpec
from kedro_torch.tracking import model as mlflow_model
from kedro_torch.tracking import outbox


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
        """Through the run's outbox (:mod:`kedro_torch.tracking.outbox`): with the
        tracking server away, the model waits in the spool with the run's other records."""
        if not is_main_process():
            return
        if mlflow.active_run() is None:
            raise DatasetError(f"{type(self).__name__}: no active MLflow run to log to")
        outbox.send({"kind": "model", "data": data, "dataset": self._describe()})

    def log(self, data: dict[str, Any]) -> None:
        """Log and register the model in the active run; promote it if it is better."""
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


class MlflowMetricsDataset(AbstractDataset[dict, None]):
    """Logs metrics to the active MLflow run through its outbox, as
    ``{name: {"value": v, "step": s}}`` (the form of kedro-mlflow's
    ``MlflowMetricsHistoryDataset``, which would wait minutes on a server that went away).
    """

    def __init__(self, *, metadata: dict[str, Any] | None = None):
        self.metadata = metadata

    def save(self, data: dict[str, dict[str, float]]) -> None:
        if not is_main_process():
            return
        if mlflow.active_run() is None:
            raise DatasetError(f"{type(self).__name__}: no active MLflow run to log to")
        now = int(time.time() * 1000)
        for step in sorted({int(metric["step"]) for metric in data.values()}):
            outbox.send({"kind": "metrics", "step": step, "timestamp": now, "metrics": {
                name: float(metric["value"]) for name, metric in data.items()
                if int(metric["step"]) == step}})

    def load(self) -> None:
        raise DatasetError(f"{type(self).__name__} only logs; read the metrics from MLflow")

    def _describe(self) -> dict[str, Any]:
        return {}
