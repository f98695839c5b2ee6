"""The Kedro datasets that log to MLflow: the trained model (and its registry
entry), metrics, and tables."""

from __future__ import annotations

import time
from typing import Any

import mlflow
import pandas as pd
from kedro.io import AbstractDataset, DatasetError
from mlflow import MlflowClient

from kedro_torch.pytorch import tasks
from kedro_torch.pytorch.detection_inference import DetectionSpec
from kedro_torch.pytorch.distributed import is_main_process
from kedro_torch.pytorch.segmentation_inference import SegmentationSpec
from kedro_torch.pytorch.table_inference import TableModelSpec
from kedro_torch.tracking import model as mlflow_model
from kedro_torch.tracking import outbox


class MlflowServedModelDataset(AbstractDataset[dict, None]):
    """Logs the trained model to the active MLflow run as a model that takes raw inputs
    (image files, or a table's rows: see :mod:`kedro_torch.tracking.model`), registers
    it, and moves the registry alias ``champion_alias`` to it only if it beats the
    current holder (higher ``champion_metric`` is better; by default the first of the
    task's headline metrics: test accuracy, or test R² for a regression).

    Saves a mapping with ``state_dict``, ``model_spec`` (a dict, whose ``task`` says
    which model it is), ``label_map``, ``batch_size``, ``registered_model_name``
    (``None``: log only) and ``metrics``, which must hold ``champion_metric``; with
    ``top_k`` for an image classifier, ``input_example`` (rows of the training table,
    a DataFrame) for a table model.
    """

    def __init__(
        self,
        *,
        name: str = "model",
        champion_alias: str = "champion",
        champion_metric: str | None = None,
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
        if data["registered_model_name"] and self._champion(data) not in data["metrics"]:
            raise DatasetError(
                f"champion_metric {self._champion(data)!r} is not among the model's metrics "
                f"({', '.join(sorted(data['metrics']))}); set champion_metric in the "
                "catalog entry to one of them")
        example = data.get("input_example")
        if isinstance(example, pd.DataFrame):  # a spool keeps tensors and plain containers
            data = {**data, "input_example": example.to_dict(orient="list")}
        outbox.send({"kind": "model", "data": data, "dataset": self._describe()})

    def log(self, data: dict[str, Any]) -> None:
        """Log and register the model in the active run; promote it if it is better."""
        registered_name = data["registered_model_name"]
        spec = tasks.load_spec(data["model_spec"])  # its class says which model it is
        if isinstance(spec, (SegmentationSpec, DetectionSpec)):
            info = mlflow_model.log_image_model(
                self._name, data["state_dict"], spec, data["batch_size"], registered_name)
        elif isinstance(spec, TableModelSpec):
            info = mlflow_model.log_table_model(
                self._name, data["state_dict"], spec, pd.DataFrame(data["input_example"]),
                data["batch_size"], registered_name,
            )
        else:
            info = mlflow_model.log_image_classifier(
                self._name, data["state_dict"], spec, data["label_map"], data["top_k"],
                data["batch_size"], registered_name,
            )
        if registered_name:
            mlflow_model.promote_if_better(
                MlflowClient(), registered_name, str(info.registered_model_version),
                self._champion(data), data["metrics"][self._champion(data)],
                self._champion_alias,
            )

    def _champion(self, data: dict[str, Any]) -> str:
        """The metric the champion is chosen by: the entry's, or the task's headline."""
        if self._champion_metric is not None:
            return self._champion_metric
        return tasks.get(tasks.load_spec(data["model_spec"]).task).headline[0]

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


class MlflowTableDataset(AbstractDataset[pd.DataFrame, None]):
    """Logs a table to the active MLflow run with ``mlflow.log_table``, as
    ``artifact_file``, through its outbox: a figure per row (per class, say) reads
    better as one table than as scalar metrics, which MLflow draws one chart each.
    Read it back with ``mlflow.load_table(artifact_file, run_ids=[run_id])``. A table
    without rows (a regression has no classes) is not logged: it would show nothing.
    """

    def __init__(self, *, artifact_file: str, metadata: dict[str, Any] | None = None):
        self._artifact_file = artifact_file
        self.metadata = metadata

    def save(self, data: pd.DataFrame) -> None:
        if not is_main_process() or data.empty:
            return
        if mlflow.active_run() is None:
            raise DatasetError(f"{type(self).__name__}: no active MLflow run to log to")
        outbox.send({"kind": "table", "table": data, "artifact_file": self._artifact_file})

    def load(self) -> None:
        raise DatasetError(f"{type(self).__name__} only logs; read the table with "
                           f"mlflow.load_table({self._artifact_file!r}, run_ids=[<run id>])")

    def _describe(self) -> dict[str, Any]:
        return {"artifact_file": self._artifact_file}
