"""A real MLflow tracking server for the tests of what happens when tracking goes
over HTTP and when the server is not there, and a project copy that tracks to it.
Every fault test runs without the switch that prints tracebacks, as a user does."""

import sys
from pathlib import Path

import pytest

from kedro_torch import errors

# The same throw-away project copy as the end-to-end tests', one of its own for these.
from tests.e2e.conftest import project  # noqa: F401
from tests.servers import free_port, start, stop

MLFLOW = str(Path(sys.executable).with_name("mlflow"))


@pytest.fixture(autouse=True)
def no_traceback_switch(monkeypatch):
    """As a user runs it: without the switch that prints tracebacks above the message."""
    monkeypatch.delenv(errors.TRACEBACK_SWITCH, raising=False)


def write_mlflow_yml(root: Path, env: str, tracking_uri: str) -> None:
    """conf/<env>/mlflow.yml in the project at ``root``, tracking to ``tracking_uri``."""
    (root / "conf" / env).mkdir(exist_ok=True)
    (root / "conf" / env / "mlflow.yml").write_text(
        f"server:\n  mlflow_tracking_uri: {tracking_uri}\n"
    )


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> str:
    """``mlflow server`` on a free local port, its SQLite store and artifacts in a
    temporary folder; its URI, once it answers. Stopped with its workers at the end."""
    port = free_port()
    server = start_mlflow_server(tmp_path_factory.mktemp("mlflow_server"), port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_mlflow_server(server)


def start_mlflow_server(folder: Path, port: int):
    """``mlflow server`` on ``port``, its store and artifacts in ``folder`` (a server
    started again on the same folder and port is the same server, back); once it answers."""
    return start(
        [MLFLOW, "server", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
         "--artifacts-destination", str(folder / "artifacts"),
         "--host", "127.0.0.1", "--port", "{port}", "--workers", "1"],
        folder, folder / "server.log", "/health", port,
        # Its job runner would start a dozen worker processes these tests never use.
        env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )


stop_mlflow_server = stop
