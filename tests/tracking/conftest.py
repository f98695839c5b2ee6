"""MLflow's request bounds as they were before each test: the start-up check puts the
project's in the environment, where they would stay for the rest of the session. And
a tracking store of a module's own."""

import os

import mlflow
import pytest

from kedro_torch.tracking.store import REQUEST_BOUNDS


@pytest.fixture(scope="module")
def sqlite_tracking(tmp_path_factory):
    """A fresh SQLite tracking store and registry, set for this module only: its URI."""
    folder = tmp_path_factory.mktemp("mlflow")
    previous = mlflow.get_tracking_uri()
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("tests")
    yield uri
    mlflow.set_tracking_uri(previous)


@pytest.fixture(autouse=True)
def mlflow_request_bounds_restored():
    saved = {name: os.environ.get(name) for name in REQUEST_BOUNDS}
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
