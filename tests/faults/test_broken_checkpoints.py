"""A checkpoint cut short on disk, and a run killed outright before its first
checkpoint, as a real `kedro run` meets them."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from tests.e2e.conftest import KEDRO, latest_version

pytestmark = pytest.mark.e2e


def command(small_digits: Path, params: str) -> list[str]:
    return [KEDRO, "run", "--pipelines", "training", "--params",
            f"raw_images_path={small_digits},training.progress_bar=false,{params}"]


# Wide enough that no log line wraps: a message reads as the code wrote it.
WIDE = {**os.environ, "COLUMNS": "1000"}


def train(project: Path, small_digits: Path, params: str) -> subprocess.CompletedProcess:
    return subprocess.run(command(small_digits, params), cwd=project, capture_output=True,
                          text=True, timeout=300, env=WIDE)


def folder_of_seed(project: Path, seed: int) -> Path:
    """The checkpoint folder of the configuration trained with ``training.seed``."""
    (found,) = [path.parent for path in
                (project / "data/06_models/checkpoints").glob("*/identity.json")
                if json.loads(path.read_text())["training.seed"] == seed]
    return found


def newest_run(client: MlflowClient):
    experiment = client.get_experiment_by_name("kedro_torch")
    (run,) = client.search_runs([experiment.experiment_id],
                                order_by=["attributes.start_time DESC"], max_results=1)
    return run


def test_a_checkpoint_cut_in_half_is_set_aside_and_auto_continues_the_one_before(
    project, small_digits
):
    params = "training.seed=31,training.epochs=3,training.keep_checkpoints=3"
    first = train(project, small_digits, params)
    assert first.returncode == 0, first.stderr
    history_file = project / "data/08_reporting/training_history.csv"
    expected = pd.read_csv(latest_version(history_file))
    folder = folder_of_seed(project, 31)
    newest = folder / "step-00003-0000000.pt"
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])

    resumed = train(project, small_digits, f"{params},training.resume=auto")
    said = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, said
    assert f"{newest} cannot be read: it is cut short" in said
    assert f"Set aside as {newest}.corrupt" in said
    assert "Resumed from" in said and "after epoch 2" in said
    assert (folder / "step-00003-0000000.pt.corrupt").stat().st_size == len(data) // 2
    # Epoch 3 trained again from epoch 2's checkpoint: the history of the run left alone.
    pd.testing.assert_frame_equal(pd.read_csv(latest_version(history_file)), expected)


def test_a_run_killed_before_its_first_checkpoint_is_closed_by_the_next_one(
    project, small_digits
):
    """SIGKILL to the whole run (as a scheduler or the OOM killer of a container does)
    while its first epoch trains: MLflow can only show it RUNNING, until the next run
    of the same parameters takes the checkpoint folder and finds it gone."""
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    params = "training.seed=41,training.epochs=2,data.batch_size=2"
    checkpoints = project / "data/06_models/checkpoints"
    started = time.time()
    killed = subprocess.Popen(command(small_digits, params), cwd=project,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    deadline = time.monotonic() + 240
    claims: list[Path] = []
    while not claims:
        assert killed.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
        claims = [path for path in checkpoints.glob("*/claim.json")
                  if path.stat().st_mtime > started]
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait(timeout=30)
    while time.monotonic() < deadline:  # its DataLoader workers go with it
        try:
            os.killpg(killed.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    (claim,) = claims
    assert not list(claim.parent.glob("step-*.pt")), "killed after its first checkpoint"
    dead = newest_run(client)
    assert dead.info.status == "RUNNING"  # all MLflow can know of a SIGKILL

    again = train(project, small_digits, params)
    said = again.stdout + again.stderr
    assert again.returncode == 0, said
    finder = newest_run(client)
    assert finder.info.run_id != dead.info.run_id
    closed = client.get_run(dead.info.run_id)
    assert closed.info.status == "KILLED"
    assert closed.data.tags["killed_found_by"] == finder.info.run_id
    assert f"MLflow run {dead.info.run_id} was left RUNNING by process {killed.pid}" in said
    assert not claim.exists()  # the run that finished let its folder go
