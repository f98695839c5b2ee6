"""Which checkpoint a `kedro run` continues, and two runs at once in one project."""

import os
import subprocess

import pandas as pd
import pytest
from mlflow import MlflowClient

from tests.e2e.conftest import KEDRO, latest_version

pytestmark = pytest.mark.e2e


def train(project, small_digits, extra: str) -> subprocess.CompletedProcess:
    """A `kedro run`, its log as wide as its longest line: unwrapped, a message reads
    as the code wrote it."""
    return subprocess.run(
        [KEDRO, "run", "--pipelines", "training", "--params",
         f"raw_images_path={small_digits},training.epochs=2,training.progress_bar=false,{extra}"],
        cwd=project, capture_output=True, text=True, timeout=300,
        env={**os.environ, "COLUMNS": "1000"},
    )


def said(result: subprocess.CompletedProcess) -> str:
    return result.stdout + result.stderr


def history(project) -> pd.DataFrame:
    return pd.read_csv(latest_version(project / "data/08_reporting/training_history.csv"))


def test_resume_continues_only_a_checkpoint_of_the_same_parameters(project, small_digits):
    run_a = "training.seed=11,training.optimizer.kwargs.lr=0.003"
    run_b = "training.seed=99,training.optimizer.kwargs.lr=0.0001"
    assert train(project, small_digits, run_a).returncode == 0

    auto = train(project, small_digits, f"{run_b},training.resume=auto")
    assert auto.returncode == 0, auto.stderr
    assert "made with other parameters" in said(auto)
    resumed_b = history(project)
    alone = train(project, small_digits, run_b)  # B from scratch, nothing to resume
    assert alone.returncode == 0, alone.stderr
    pd.testing.assert_frame_equal(history(project), resumed_b)

    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    runs = len(client.search_runs([client.get_experiment_by_name("kedro_torch").experiment_id]))
    refused = train(project, small_digits,
                    "training.seed=99,training.optimizer.kwargs.lr=0.01,training.resume=true")
    assert refused.returncode != 0
    assert "training.optimizer.kwargs.lr: 0.0001 in the checkpoint, 0.01 now" in said(refused)
    assert "Running node" not in said(refused)  # refused before any work ...
    assert len(client.search_runs(  # ... and before any MLflow run
        [client.get_experiment_by_name("kedro_torch").experiment_id])) == runs


def test_resuming_a_finished_run_for_more_epochs_opens_a_run_with_the_whole_history(
    project, small_digits
):
    """A FINISHED run is a complete record: a resume that trains on from its last
    checkpoint goes into a new run, which holds epochs 1..N and names the earlier."""
    config = "training.seed=21,training.scheduler.name=null"
    assert train(project, small_digits, config).returncode == 0
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("kedro_torch").experiment_id
    (first,) = client.search_runs([experiment], max_results=1,
                                  order_by=["attributes.start_time DESC"])

    more = subprocess.run(
        [KEDRO, "run", "--pipelines", "training", "--params",
         f"raw_images_path={small_digits},training.epochs=3,training.progress_bar=false,"
         f"{config},training.resume=auto"],
        cwd=project, capture_output=True, text=True, timeout=300)
    assert more.returncode == 0, more.stderr
    (second,) = client.search_runs([experiment], max_results=1,
                                   order_by=["attributes.start_time DESC"])
    assert second.info.run_id != first.info.run_id
    assert second.data.tags["resumed_from_run"] == first.info.run_id
    steps = [m.step for m in client.get_metric_history(second.info.run_id, "val_loss")]
    assert sorted(steps) == [1, 2, 3]
    first = client.get_run(first.info.run_id)
    assert first.info.status == "FINISHED"
    assert first.data.tags["resumed_in_run"] == second.info.run_id


def test_two_runs_at_once_are_both_recorded_and_keep_their_checkpoints_apart(
    project, small_digits
):
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("kedro_torch")
    before = {r.info.run_id for r in client.search_runs([experiment.experiment_id])}
    runs = [
        subprocess.Popen(
            [KEDRO, "run", "--pipelines", "training", "--params",
             f"raw_images_path={small_digits},training.epochs=2,training.seed={seed},"
             "training.progress_bar=false"],
            cwd=project, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for seed in (1001, 1002)
    ]
    for run in runs:
        output, _ = run.communicate(timeout=300)
        assert run.returncode == 0, output
    new = [r for r in client.search_runs([experiment.experiment_id])
           if r.info.run_id not in before]
    assert sorted(r.data.params["training.seed"] for r in new) == ["1001", "1002"]
    assert {r.info.status for r in new} == {"FINISHED"}
    folders = {path.parent for path in
               (project / "data/06_models/checkpoints").glob("*/step-*.pt")
               if '"training.seed": 100' in (path.parent / "identity.json").read_text()}
    assert len(folders) == 2
