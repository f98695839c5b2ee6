"""SIGTERM (preemption) and SIGINT (Ctrl-C) sent to a real `kedro run` mid-training:
it exits with the signal's status within seconds, the MLflow run says KILLED and
where it stopped, and a resume from the checkpoint it wrote finishes the job."""

import os
import signal
import subprocess
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
