"""Data-parallel `kedro run`s with two CPU processes (Gloo): launched by torchrun, where
every rank runs the Kedro session, and by `training.devices=2`, where the train stage
starts the workers. Each job leaves one MLflow run and one set of catalog outputs,
and both launches train the same model; a worker killed under `torchrun
--max-restarts 1` is restarted and the job resumes from its last checkpoint, in the
same MLflow run."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
from mlflow import MlflowClient

from tests.e2e.conftest import KEDRO, copy_project, kedro, latest_version
from tests.servers import free_port

pytestmark = pytest.mark.e2e

TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
EPOCHS = 3
OUTPUTS = ("06_models/model_state_dict.pt", "08_reporting/training_history.csv",
           "08_reporting/evaluation_report.json", "08_reporting/data_quality_report.json")


def params(digits: Path) -> str:
    return (f"raw_images_path={digits},training.epochs={EPOCHS},data.num_workers=0,"
            "training.progress_bar=false,data.batch_size=8")


def torchrun(project: Path, *args: str) -> list[str]:
    return [TORCHRUN, "--standalone", "--nproc-per-node", "2", *args, "-m", "kedro", "run",
            "--pipelines", "training", "--params"]


def runs(project: Path) -> list:
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("kedro_torch")
    return client.search_runs([experiment.experiment_id],
                              order_by=["attributes.start_time ASC"])


def history(project: Path) -> pd.DataFrame:
    return pd.read_csv(latest_version(project / "data" / "08_reporting" /
                                      "training_history.csv"))


@pytest.fixture(scope="module")
def torchrun_job(tmp_path_factory, small_digits):
    """One `torchrun --standalone --nproc-per-node 2 -m kedro run` in a project of its own."""
    project = copy_project(tmp_path_factory.mktemp("project"))
    result = subprocess.run([*torchrun(project), params(small_digits)], cwd=project,
                            capture_output=True, text=True, timeout=600,
                            env={**os.environ, "COLUMNS": "200"})
    return project, result


def test_torchrun_leaves_one_mlflow_run_and_one_set_of_outputs(torchrun_job):
    project, result = torchrun_job
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = runs(project)
    assert run.info.status == "FINISHED"
    assert {key: run.data.tags[key] for key in ("world_size", "strategy", "backend", "nodes",
                                                "processes_per_node", "global_batch_size")} == {
        "world_size": "2", "strategy": "ddp", "backend": "gloo", "nodes": "1",
        "processes_per_node": "2", "global_batch_size": "16"}
    for output in OUTPUTS:
        assert len(list((project / "data" / output).iterdir())) == 1, output
    steps = [m.step for m in MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
             .get_metric_history(run.info.run_id, "train_loss")]
    assert sorted(steps) == list(range(1, EPOCHS + 1))
    assert "Rank 0 of 2 joined the gloo process group" in result.stdout + result.stderr


def test_training_devices_2_trains_what_torchrun_trains(torchrun_job, small_digits):
    project, _ = torchrun_job
    expected = history(project)
    result = kedro(project, "run", "--pipelines", "training", "--params",
                   f"{params(small_digits)},training.devices=2")
    assert result.returncode == 0, result.stderr[-3000:]
    first, second = runs(project)
    assert second.data.tags["world_size"] == "2"
    assert second.data.tags["strategy"] == "ddp"
    pd.testing.assert_frame_equal(history(project), expected, atol=1e-5)
    assert second.data.metrics["test_accuracy"] == pytest.approx(
        first.data.metrics["test_accuracy"])
    for output in OUTPUTS:
        assert len(list((project / "data" / output).iterdir())) == 2, output


def test_two_machines_meeting_at_a_rendezvous_train_one_job(tmp_path_factory, small_digits,
                                                            torchrun_job):
    """Two torchrun agents of one process each, joined by a c10d rendezvous as on two
    machines that share the project's folder: one job, one MLflow run with 2 nodes,
    and the training of the one-machine job of two processes."""
    project = copy_project(tmp_path_factory.mktemp("project"))
    agent = [TORCHRUN, "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
             "--rdzv-endpoint", f"127.0.0.1:{free_port()}", "--rdzv-id", "two-machines",
             "-m", "kedro", "run", "--pipelines", "training", "--params", params(small_digits)]
    # One thread per process, as torchrun sets it for several processes on a machine, so
    # that the kernels sum in the same order as in the one-machine job.
    agents = [subprocess.Popen(agent, cwd=project, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"}) for _ in range(2)]
    outputs = [agent.communicate(timeout=600)[0] for agent in agents]
    assert [agent.returncode for agent in agents] == [0, 0], outputs[0][-3000:]
    (run,) = runs(project)
    assert run.info.status == "FINISHED"
    assert {key: run.data.tags[key] for key in ("world_size", "nodes", "processes_per_node",
                                                "global_batch_size")} == {
        "world_size": "2", "nodes": "2", "processes_per_node": "1", "global_batch_size": "16"}
    for output in OUTPUTS:
        assert len(list((project / "data" / output).iterdir())) == 1, output
    pd.testing.assert_frame_equal(history(project), history(torchrun_job[0]), atol=1e-5)


def wait_for_a_checkpoint(job: subprocess.Popen, checkpoints: Path) -> None:
    deadline = time.monotonic() + 300
    while not list(checkpoints.glob("*/step-*.pt")):
        assert job.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)


def worker_of_rank(agent: psutil.Process, rank: str) -> psutil.Process | None:
    for child in agent.children(recursive=True):
        try:
            if child.environ().get("RANK") == rank and "kedro" in " ".join(child.cmdline()):
                return child
        except psutil.Error:
            continue
    return None


def test_a_killed_worker_is_restarted_and_the_job_resumes(tmp_path_factory, small_digits,
                                                          torchrun_job):
    project = copy_project(tmp_path_factory.mktemp("project"))
    checkpoints = project / "data" / "06_models" / "checkpoints"
    job = subprocess.Popen([*torchrun(project, "--max-restarts", "1"), params(small_digits)],
                           cwd=project, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True)
    wait_for_a_checkpoint(job, checkpoints)
    victim = worker_of_rank(psutil.Process(job.pid), "1")
    assert victim is not None
    os.kill(victim.pid, signal.SIGKILL)
    output, _ = job.communicate(timeout=600)
    assert job.returncode == 0, output[-3000:]
    assert "Resumed from" in output
    pd.testing.assert_frame_equal(history(project), history(torchrun_job[0]), atol=1e-6)
    (run,) = runs(project)  # the restarted attempt continued the run of the failed one
    assert run.info.status == "FINISHED"
    steps = [m.step for m in MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
             .get_metric_history(run.info.run_id, "val_loss")]
    assert sorted(steps) == list(range(1, EPOCHS + 1))


def test_sigterm_stops_the_workers_of_training_devices_with_a_checkpoint(
        tmp_path_factory, small_digits, torchrun_job):
    """The signal reaches the parent only, as a scheduler sends it: the workers stop at
    the same step, rank 0 checkpoints, and a resume ends where the torchrun job ended."""
    for _ in range(3):  # on a loaded machine the signal may come once training has ended
        project = copy_project(tmp_path_factory.mktemp("project"))
        checkpoints = project / "data" / "06_models" / "checkpoints"
        job = subprocess.Popen([KEDRO, "run", "--pipelines", "training", "--params",
                                f"{params(small_digits)},training.devices=2"],
                               cwd=project, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
        wait_for_a_checkpoint(job, checkpoints)
        job.send_signal(signal.SIGTERM)
        output, _ = job.communicate(timeout=300)
        assert job.returncode == 143, output[-3000:]
        if "training stopped by SIGTERM" in output:
            break
    assert "training stopped by SIGTERM" in output
    (stopped,) = runs(project)
    assert stopped.info.status == "KILLED"
    resumed = kedro(project, "run", "--pipelines", "training", "--params",
                    f"{params(small_digits)},training.devices=2,training.resume=auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resumed from" in resumed.stdout + resumed.stderr
    pd.testing.assert_frame_equal(history(project), history(torchrun_job[0]), atol=1e-6)
