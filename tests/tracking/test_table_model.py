"""The table model as MLflow logs, registers and serves it, against a real SQLite store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from kedro.io import DatasetError
from mlflow import MlflowClient
from mlflow.models.model import ModelInfo

from kedro_torch.pytorch import models
from kedro_torch.pytorch.table_inference import TableModelSpec, TablePredictor
from kedro_torch.pytorch.tables import TablePreprocessing
from kedro_torch.tracking.datasets import MlflowServedModelDataset
from kedro_torch.tracking.model import log_table_model
from tests.servers import free_port, serving

MLFLOW = str(Path(sys.executable).with_name("mlflow"))
TABLE = pd.DataFrame({
    "length": [1.0, 2.5, np.nan, 4.0, 5.5, 3.0],
    "colour": ["red", "blue", "red", None, "blue", "red"],
    "legs": [2, 4, 2, 4, 4, 2],  # integers, categorical
    "kind": ["a", "b", "a", "b", "b", "a"],
    "mass": [10.0, 20.0, 15.0, 30.0, 25.0, 12.0],
})
FEATURES = ["length", "colour", "legs"]


@pytest.fixture(scope="module")
def tracking(sqlite_tracking):
    return sqlite_tracking


def trained(kind: str, target: str) -> tuple[dict[str, torch.Tensor], TableModelSpec]:
    preprocessing = TablePreprocessing.fit(TABLE, target, ["length"], ["colour", "legs"], kind)
    spec = TableModelSpec("tabular_mlp", preprocessing.to_dict(), {"hidden": [8]},
                          f"tabular_{kind}")
    torch.manual_seed(0)
    model = models.build(spec.model_name, spec.model_arguments(), spec.model_kwargs)
    return model.state_dict(), spec


@pytest.fixture(scope="module")
def classifier(tracking) -> tuple[ModelInfo, TablePredictor]:
    state_dict, spec = trained("classification", "kind")
    with mlflow.start_run():
        info = log_table_model("model", state_dict, spec, TABLE, batch_size=4)
    return info, TablePredictor.from_state_dict(state_dict, spec)


def test_the_signature_requires_each_feature_column(classifier):
    info, _ = classifier
    inputs = [(column.name, repr(column.type), column.required)
              for column in info.signature.inputs.inputs]
    # An integer column takes any value: MLflow would refuse a null in a "long" one.
    assert inputs == [("length", "double", True), ("colour", "string", True),
                      ("legs", "Any", True)]
    assert info.signature.outputs.input_names() == ["label", "probability", "probability_a",
                                                    "probability_b"]
    example = mlflow.models.Model.load(info.model_uri).load_input_example()
    assert list(example.columns) == FEATURES
    assert example.notna().all(axis=None)  # complete rows first


def test_the_logged_model_predicts_as_the_predictor_does(classifier):
    info, predictor = classifier
    rows = TABLE.drop(columns=["kind", "mass"]).iloc[::-1]
    served = mlflow.pyfunc.load_model(info.model_uri).predict(rows)
    pd.testing.assert_frame_equal(served, predictor.predict(rows).reset_index(drop=True))


def test_a_regression_model_gives_a_value_per_row(tracking):
    state_dict, spec = trained("regression", "mass")
    with mlflow.start_run():
        info = log_table_model("model", state_dict, spec, TABLE, batch_size=4)
    assert info.signature.outputs.input_names() == ["value"]
    values = mlflow.pyfunc.load_model(info.model_uri).predict(TABLE[FEATURES])
    expected = TablePredictor.from_state_dict(state_dict, spec).predict(TABLE[FEATURES])
    assert values["value"].tolist() == pytest.approx(expected["value"].tolist())


def test_the_catalog_dataset_logs_a_table_model_and_makes_it_champion(tracking):
    state_dict, spec = trained("classification", "kind")
    dataset = MlflowServedModelDataset()  # the champion metric: the task's test_accuracy
    with mlflow.start_run():
        dataset.save({"state_dict": state_dict, "model_spec": spec.to_dict(), "label_map": {},
                      "input_example": TABLE, "batch_size": 4,
                      "registered_model_name": "tables", "metrics": {"test_accuracy": 0.5}})
    champion = mlflow.pyfunc.load_model("models:/tables@champion")
    assert list(champion.predict(TABLE[FEATURES]).columns[:2]) == ["label", "probability"]
    assert MlflowClient(tracking).get_model_version_by_alias("tables", "champion").version == 1


def test_the_catalog_dataset_refuses_a_champion_metric_the_model_lacks(tracking):
    dataset = MlflowServedModelDataset(champion_metric="test_accuracy")
    with mlflow.start_run(), pytest.raises(DatasetError, match=r"'test_accuracy'.*test_rmse"):
        dataset.save({"registered_model_name": "tables", "metrics": {"test_rmse": 1.0}})


def invocations(url: str, columns: list[str], rows: list[list]) -> tuple[int, dict]:
    body = {"dataframe_split": {"columns": columns, "data": rows}}
    request = urllib.request.Request(f"{url}/invocations", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.mark.e2e
def test_the_served_model_takes_missing_values_and_names_a_missing_column(classifier,
                                                                         tracking, tmp_path):
    """What a REST client of ``mlflow models serve`` sees."""
    info, predictor = classifier
    command = [MLFLOW, "models", "serve", "-m", info.model_uri, "--env-manager", "local",
               "--host", "127.0.0.1", "--port", "{port}", "--workers", "1"]
    store = {"MLFLOW_TRACKING_URI": tracking}
    with serving(command, tmp_path, tmp_path / "serve.log", "/ping", free_port(), store) as url:
        rows = [[None, "green", None], [2, None, 4], [2.5, "blue", 4]]  # green: never seen
        status, answer = invocations(url, FEATURES, rows)
        assert status == 200, answer
        expected = predictor.predict(pd.DataFrame(rows, columns=FEATURES))
        assert [row["label"] for row in answer["predictions"]] == expected["label"].tolist()
        assert [row["probability"] for row in answer["predictions"]] == pytest.approx(
            expected["probability"].tolist(), abs=1e-6)
        status, answer = invocations(url, ["length", "legs"], [[1.0, 2]])
    assert status == 400
    assert "missing inputs ['colour']" in answer["message"]


OWN_MODEL = '''
import torch
from torch import nn


class Linear(nn.Module):
    def __init__(self, numeric_features, cardinalities, num_outputs):
        super().__init__()
        self.numeric_features = numeric_features
        self.head = nn.Linear(numeric_features + len(cardinalities), num_outputs)

    def forward(self, x):
        return self.head(x)
'''


def test_a_model_class_of_the_users_own_travels_with_the_logged_model(tracking, tmp_path,
                                                                       monkeypatch):
    """The class is importable where the model is logged, not where it is loaded: a
    fresh interpreter without its folder on the path loads and predicts with it."""
    (tmp_path / "own").mkdir()
    (tmp_path / "own" / "my_tables.py").write_text(OWN_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path / "own"))
    preprocessing = TablePreprocessing.fit(TABLE, "kind", ["length"], ["colour"],
                                           "classification")
    spec = TableModelSpec("my_tables:Linear", preprocessing.to_dict(), {},
                          "tabular_classification")
    state_dict = models.build(spec.model_name, spec.model_arguments(), {}).state_dict()
    with mlflow.start_run():
        info = log_table_model("model", state_dict, spec, TABLE, batch_size=4)
    script = ("import sys, mlflow, pandas as pd\n"
              f"rows = pd.DataFrame({{'length': [1.0], 'colour': ['red']}})\n"
              f"print(mlflow.pyfunc.load_model({info.model_uri!r}).predict(rows)['label'][0])")
    loaded = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=tmp_path, env={**os.environ, "MLFLOW_TRACKING_URI": tracking},
                            timeout=120)
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    assert loaded.stdout.strip() in {"a", "b"}
