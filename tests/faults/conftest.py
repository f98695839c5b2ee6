"""A real MLflow tracking server for the tests of what happens when tracking goes
over HTTP and when the server is not there, and a project copy that tracks to it."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

# The same throw-away project copy as the end-to-end tests', one of its own for these.
from tests.e2e.conftest import project  # noqa: F401

MLFLOW = str(Path(sys.executable).with_name("mlflow"))
START_TIMEOUT_S = 120  # a 2-core machine busy with other tests can take a while


def free_port() -> int:
    """A port nothing listens on (the system's pick, released at once)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


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
    folder = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [MLFLOW, "server", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
         "--artifacts-destination", str(folder / "artifacts"),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        cwd=folder, stdout=(folder / "server.log").open("w"), stderr=subprocess.STDOUT,
        # Its job runner would start a dozen worker processes these tests never use.
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        start_new_session=True,  # its own process group: stopping it stops its workers
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not answers(uri):
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start:\n{(folder / 'server.log').read_text()}")
            time.sleep(0.2)
        yield uri
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def answers(uri: str) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=2):
            return True
    except OSError:
        return False
