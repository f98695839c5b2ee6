"""`kedro run` against a tracking server that is not there: refused within seconds,
naming the server and the way to run on the local SQLite store, where MLflow's
own retries would take minutes to fail."""

import time

import pytest

from tests.e2e.conftest import kedro
from tests.faults.conftest import write_mlflow_yml
from tests.servers import free_port

pytestmark = pytest.mark.e2e


def test_a_stopped_tracking_server_stops_the_run_within_30_s(project, small_digits):
    uri = f"http://127.0.0.1:{free_port()}"
    write_mlflow_yml(project, "unreachable", uri)
    written = sorted((project / "data").rglob("*"))
    start = time.monotonic()
    result = kedro(project, "run", "--pipelines", "training", "--env", "unreachable",
                   "--params", f"raw_images_path={small_digits}", timeout=120)
    elapsed = time.monotonic() - start
    output = " ".join((result.stdout + result.stderr).split())  # as one line, unwrapped
    assert result.returncode != 0
    assert elapsed < 30
    assert f"The MLflow tracking server {uri}" in output
    assert "Kedro environment 'unreachable'" in output
    assert "sqlite:///mlflow.db" in output
    assert sorted((project / "data").rglob("*")) == written  # nothing ran
