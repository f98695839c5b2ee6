"""MLflow's request bounds as they were before each test: the start-up check puts the
project's in the environment, where they would stay for the rest of the session."""

import os

import pytest

from kedro_torch.tracking.store import REQUEST_BOUNDS


@pytest.fixture(autouse=True)
def mlflow_request_bounds_restored():
    saved = {name: os.environ.get(name) for name in REQUEST_BOUNDS}
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
