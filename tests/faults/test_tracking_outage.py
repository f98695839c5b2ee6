"""The tracking server goes away in the middle of a run: training goes on, what the
run records waits in a spool folder, and reaches the server when it is back, during
the run or, if it never comes back in time, later; the run fails only then."""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.docs.blocks import block
from tests.e2e.conftest import KEDRO
from tests.faults.conftest import start_mlflow_server, stop_mlflow_server, write_mlflow_yml
from tests.servers import free_port

pytestmark = pytest.mark.e2e

EPOCHS = 12
SPOOL = Path("data", "08_reporting", "unsent_tracking")


def start_training(project: Path, small_digits: Path, seed: int, extra: str = ""):
    return subprocess.Popen(
        [KEDRO, "run", "--pipelines", "training", "--env", "outage", "--params",
         f"raw_images_path={small_digits},training.seed={seed},training.epochs={EPOCHS},"
         f"training.progress_bar=false,data.batch_size=8{extra}"],
        cwd=project, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "COLUMNS": "300"},
    )


def wait_for_epoch(project: Path, training: subprocess.Popen, epoch: int, since: float) -> None:
    """Until a checkpoint written after ``since`` says ``epoch`` epochs are done."""
    deadline = time.monotonic() + 180
    while True:
        done = [int(path.name.split("-")[1])
                for path in (project / "data" / "06_models" / "checkpoints").glob("*/step-*.pt")
                if path.stat().st_mtime > since]
        if done and max(done) >= epoch:
            return
        assert training.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)


def the_run(uri: str):
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("kedro_torch").experiment_id])
    return client, run


def assert_complete(client: MlflowClient, run) -> None:
    assert run.info.status == "FINISHED"
    for name in ("train_loss", "val_loss"):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, name)]
        assert sorted(steps) == list(range(1, EPOCHS + 1)), name
    assert "test_accuracy" in run.data.metrics
    assert "training_history.csv" in [a.path for a in client.list_artifacts(run.info.run_id)]
    (version,) = client.search_model_versions("name='kedro_torch'")
    assert version.run_id == run.info.run_id


def test_a_server_back_during_the_run_gets_every_record(project, small_digits, tmp_path):
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = start_mlflow_server(tmp_path, port)
    write_mlflow_yml(project, "outage", uri)
    started = time.time()
    training = start_training(project, small_digits, seed=31)
    try:
        wait_for_epoch(project, training, 1, started)
        stop_mlflow_server(server)
        stopped = time.time()
        wait_for_epoch(project, training, 3, stopped)  # training goes on without it
        server = start_mlflow_server(tmp_path, port)
        output, _ = training.communicate(timeout=600)
        assert training.returncode == 0, output
        assert "does not answer" in output
        assert "answers again" in output
        assert_complete(*the_run(uri))
        assert not list((project / SPOOL).glob("*/records.jsonl"))
    finally:
        training.kill()
        stop_mlflow_server(server)


def test_a_server_that_never_comes_back_fails_the_run_and_its_records_go_later(
    project, small_digits, tmp_path
):
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = start_mlflow_server(tmp_path, port)
    write_mlflow_yml(project, "outage", uri)
    started = time.time()
    training = start_training(project, small_digits, seed=32, extra=",mlflow.outage_wait=1")
    try:
        wait_for_epoch(project, training, 1, started)
        stop_mlflow_server(server)
        output, _ = training.communicate(timeout=600)
        assert training.returncode != 0
        assert "did not come back within mlflow.outage_wait (1 s)" in output
        # The pipeline's outputs were saved all the same.
        report = project / "data" / "08_reporting" / "evaluation_report.json"
        assert max(path.stat().st_mtime for path in report.rglob("*.json")) > started
        (spool,) = (project / SPOOL).glob("*/records.jsonl")
        assert str(spool.parent) in re.sub(r"\s+", "", output.replace("\n", ""))

        server = start_mlflow_server(tmp_path, port)
        # The command the docs give, as typed in the project with the environment active.
        command = block("outbox-send").replace("<run id>", spool.parent.name)
        active = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
        sent = subprocess.run(["bash", "-ec", command], cwd=project, env=active,
                              capture_output=True, text=True, timeout=300)
        assert sent.returncode == 0, sent.stderr
        assert_complete(*the_run(uri))
        assert not spool.parent.exists()
    finally:
        training.kill()
        stop_mlflow_server(server)
