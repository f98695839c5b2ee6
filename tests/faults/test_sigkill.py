"""A `kedro run` killed with SIGKILL mid-epoch (nothing can be saved or recorded at
that moment) and resumed with `training.resume=auto` ends exactly where the run left
alone ends, in the same MLflow run: the killed run, which MLflow still showed as
RUNNING, is continued, holds every epoch once and ends FINISHED; the run the resume
opened hands over to it and is deleted."""

import signal
import subprocess
import time

import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.entities import ViewType

from tests.e2e.conftest import KEDRO, kedro, latest_version

pytestmark = pytest.mark.e2e

EPOCHS = 3


def newest_run(client: MlflowClient):
    experiment = client.get_experiment_by_name("kedro_torch")
    (run,) = client.search_runs([experiment.experiment_id],
                                order_by=["attributes.start_time DESC"], max_results=1)
    return run


def test_killed_mid_epoch_and_resumed_ends_as_the_run_left_alone(project, small_digits):
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    params = (f"raw_images_path={small_digits},training.seed=5,training.epochs={EPOCHS},"
              "training.progress_bar=false,data.batch_size=8")
    history_file = project / "data" / "08_reporting" / "training_history.csv"

    alone = kedro(project, "run", "--pipelines", "training", "--params", params)
    assert alone.returncode == 0, alone.stderr
    expected_history = pd.read_csv(latest_version(history_file))
    expected = newest_run(client).data.metrics["test_accuracy"]

    checkpoints = project / "data" / "06_models" / "checkpoints"
    started = time.time()
    killed = subprocess.Popen([KEDRO, "run", "--pipelines", "training", "--params", params],
                              cwd=project, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while not any(path.stat().st_mtime > started for path in checkpoints.glob("*/step-*.pt")):
        assert killed.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.2)  # into the next epoch
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
    dead = newest_run(client)
    assert dead.info.status == "RUNNING"  # all MLflow can know of a SIGKILL
    experiment = client.get_experiment_by_name("kedro_torch")
    runs_before = len(client.search_runs([experiment.experiment_id]))

    resumed = kedro(project, "run", "--pipelines", "training", "--params",
                    f"{params},training.resume=auto")
    assert resumed.returncode == 0, resumed.stderr
    assert "Resumed from" in resumed.stdout + resumed.stderr
    pd.testing.assert_frame_equal(pd.read_csv(latest_version(history_file)), expected_history)
    run = client.get_run(dead.info.run_id)
    assert run.data.metrics["test_accuracy"] == expected
    assert run.info.status == "FINISHED"
    assert run.data.tags["resumed_with.training.resume"] == "auto"
    assert run.data.params["training.resume"] == "False"  # as its first part ran
    for name in ("train_loss", "val_loss", "lr"):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, name)]
        assert sorted(steps) == list(range(1, EPOCHS + 1)), name
    assert client.get_metric_history(run.info.run_id, "test_accuracy")[0].step == 0
    assert len(client.search_runs([experiment.experiment_id])) == runs_before  # no new run
    (handed_over,) = client.search_runs(  # the one the resume opened, deleted
        [experiment.experiment_id], f"tags.resumed_in_run = '{run.info.run_id}'",
        run_view_type=ViewType.DELETED_ONLY)
    assert handed_over.info.lifecycle_stage == "deleted"
