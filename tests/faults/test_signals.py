"""SIGTERM (preemption) and SIGINT (Ctrl-C) sent to a real `kedro run` mid-training:
it exits with the signal's status within seconds, the MLflow run says KILLED and
where it stopped, and a resume from the checkpoint it wrote finishes the job."""

import os
import signal
import subprocess
import sys
import time

import pytest
from mlflow import MlflowClient

from tests.e2e.conftest import KEDRO, kedro

pytestmark = pytest.mark.e2e


def newest_run(project):
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("kedro_torch")
    (run,) = client.search_runs([experiment.experiment_id],
                                order_by=["attributes.start_time DESC"], max_results=1)
    return run


@pytest.mark.parametrize(("signum", "to_group"), [
    (signal.SIGTERM, False),
    (signal.SIGINT, False),
    # Ctrl-C in a terminal: every process of the group, DataLoader workers too.
    (signal.SIGINT, True),
])
def test_a_signal_mid_training_kills_the_run_cleanly_and_it_resumes(
    project, small_digits, signum, to_group
):
    # A configuration of its own (the seed), so its checkpoints are its own.
    params = (f"raw_images_path={small_digits},training.seed={signum + 100 * to_group},"
              "training.progress_bar=false,data.batch_size=8")
    if to_group:  # workers that read the files (no cache), which the signal reaches
        params += ",data.num_workers=2,data.cache=none"
    checkpoints = project / "data" / "06_models" / "checkpoints"
    before = set(checkpoints.glob("*/step-*.pt"))
    training = subprocess.Popen(
        [KEDRO, "run", "--pipelines", "training", "--params", f"{params},training.epochs=500"],
        cwd=project, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=to_group,
    )
    deadline = time.monotonic() + 180
    while not set(checkpoints.glob("*/step-*.pt")) - before:  # an epoch is done
        assert training.poll() is None and time.monotonic() < deadline, training.stdout.read()
        time.sleep(0.1)
    sent = time.monotonic()
    if to_group:
        os.killpg(training.pid, signum)
    else:
        training.send_signal(signum)
    output, _ = training.communicate(timeout=60)
    assert training.returncode == 128 + signum, output
    assert time.monotonic() - sent < 60
    assert "training.resume=auto" in output  # the command that resumes it

    run = newest_run(project)
    assert run.info.status == "KILLED"
    tags = run.data.tags
    assert tags["interrupted_by"] == signal.Signals(signum).name
    epoch = int(tags["interrupted_epoch"])
    assert (project / tags["resume_checkpoint"]).is_file()

    resumed = kedro(project, "run", "--pipelines", "training", "--params",
                    f"{params},training.epochs={epoch},training.resume=auto")
    assert resumed.returncode == 0, resumed.stderr
    assert "Resumed from" in resumed.stdout + resumed.stderr
    continued = newest_run(project)  # the killed run, continued
    assert continued.info.run_id == run.info.run_id
    assert continued.info.status == "FINISHED"
    assert continued.data.tags["resumed_with.training.epochs"] == str(epoch)
    assert continued.data.params["training.epochs"] == "500"  # as its first part ran


# The `kedro` command, with MLflow's start_run sending the process SIGINT as soon as
# the run is open: the moment inside kedro-mlflow's hook, before this project's
# hooks that follow the run have run.
CTRL_C_AS_THE_RUN_OPENS = """
import os, signal, sys
import mlflow
from kedro.framework.cli import main

start_run = mlflow.start_run

def start_run_then_ctrl_c(*args, **kwargs):
    run = start_run(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGINT)
    return run

mlflow.start_run = start_run_then_ctrl_c
sys.argv = ["kedro", "run", "--pipelines", "training", "--params", sys.argv[1]]
main()
"""


def test_ctrl_c_as_kedro_mlflow_opens_the_run_leaves_it_killed(project, small_digits):
    """Without the exit handler registered from the start, MLflow's own closed such a
    run as FINISHED while the command exited 130."""
    result = subprocess.run(
        [sys.executable, "-c", CTRL_C_AS_THE_RUN_OPENS,
         f"raw_images_path={small_digits},training.epochs=1"],
        cwd=project, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 130, result.stdout + result.stderr
    run = newest_run(project)
    assert run.info.status == "KILLED", result.stderr
    assert not MlflowClient(f"sqlite:///{project / 'mlflow.db'}").search_model_versions(
        f"run_id='{run.info.run_id}'")
