"""The run of a process killed outright while it trained is closed by the next run of
its configuration (:func:`kedro_torch.tracking.resume.close_abandoned`)."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time

import mlflow
import pytest
from mlflow import MlflowClient

from kedro_torch.pytorch.checkpoints import CheckpointStore
from kedro_torch.tracking.resume import close_abandoned
from tests.servers import free_port

CLAIMANT = """
import sys
from kedro_torch.pytorch.checkpoints import CheckpointStore
CheckpointStore(sys.argv[1]).claim({"mlflow_run_id": sys.argv[2]})
print("held", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def client(tmp_path):
    """A client of a SQLite store of this test's own, MLflow's tracking URI for now."""
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        yield MlflowClient()
    finally:
        mlflow.set_tracking_uri(previous)


def running_run(client: MlflowClient) -> str:
    experiment = client.get_experiment_by_name("abandoned") or client.get_experiment(
        client.create_experiment("abandoned"))
    return client.create_run(experiment.experiment_id).info.run_id


def killed_while_training(folder, run_id: str) -> None:
    """A real process that claims ``folder`` for ``run_id``, then is SIGKILLed."""
    process = subprocess.Popen([sys.executable, "-c", CLAIMANT, str(folder), run_id],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline() == "held\n"
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)


def test_the_run_of_a_killed_claimant_is_closed_as_killed_by_the_one_that_finds_it(
    client, tmp_path, caplog
):
    killed, finder = running_run(client), running_run(client)
    store = CheckpointStore(str(tmp_path / "checkpoints" / "abc"))
    killed_while_training(store.directory, killed)
    assert client.get_run(killed).info.status == "RUNNING"

    with caplog.at_level(logging.WARNING, logger="kedro_torch.tracking.resume"):
        close_abandoned(store, finder)
    run = client.get_run(killed)
    assert run.info.status == "KILLED"
    assert run.data.tags["killed_found_by"] == finder
    assert f"MLflow run {killed} was left RUNNING" in caplog.text
    assert client.get_run(finder).info.status == "RUNNING"


def test_a_run_the_finder_continues_or_that_ended_is_left_as_it_is(client, tmp_path):
    store = CheckpointStore(str(tmp_path / "checkpoints" / "abc"))
    continued = running_run(client)
    killed_while_training(store.directory, continued)
    close_abandoned(store, running_run(client), keep=continued)
    assert client.get_run(continued).info.status == "RUNNING"

    ended = running_run(client)
    client.set_terminated(ended, "FAILED")
    killed_while_training(store.directory, ended)
    close_abandoned(store, running_run(client))
    run = client.get_run(ended)
    assert run.info.status == "FAILED"
    assert "killed_found_by" not in run.data.tags


def test_a_claimant_that_still_trains_keeps_its_run(client, tmp_path):
    store = CheckpointStore(str(tmp_path / "checkpoints" / "abc"))
    training = running_run(client)
    holder = subprocess.Popen([sys.executable, "-c", CLAIMANT, store.directory, training],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        close_abandoned(store, running_run(client))
        assert client.get_run(training).info.status == "RUNNING"
    finally:
        holder.communicate("", timeout=30)


def test_a_tracking_server_that_does_not_answer_leaves_the_run_and_says_so(tmp_path, caplog):
    store = CheckpointStore(str(tmp_path / "checkpoints" / "abc"))
    killed_while_training(store.directory, "0123abcd")
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"http://127.0.0.1:{free_port()}")  # nothing listens there
    started = time.monotonic()
    try:
        with caplog.at_level(logging.WARNING, logger="kedro_torch.tracking.resume"):
            close_abandoned(store, "finder")
    finally:
        mlflow.set_tracking_uri(previous)
    assert time.monotonic() - started < 30  # no minutes of MLflow's retries
    assert "MLflow run 0123abcd was left RUNNING" in caplog.text
    assert "could not be closed" in caplog.text
    assert "set_terminated('0123abcd', 'KILLED')" in caplog.text
