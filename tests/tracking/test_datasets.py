"""The dataset that logs the classifier to MLflow, used directly as the catalog would.
Logging and promoting the model is tested in test_model.py."""

from __future__ import annotations

import mlflow
import pytest
from kedro.io import DatasetError

from kedro_torch.tracking.datasets import MlflowServedModelDataset


def test_mlflow_model_save_without_active_run_raises():
    assert mlflow.active_run() is None  # precondition: nothing left a run open
    dataset = MlflowServedModelDataset(name="model")
    with pytest.raises(DatasetError, match="no active MLflow run"):
        dataset.save({"state_dict": {}})
    assert mlflow.active_run() is None  # and it did not start one


def test_mlflow_model_dataset_cannot_load():
    with pytest.raises(DatasetError, match="only logs"):
        MlflowServedModelDataset().load()
