"""Whole `kedro run`s of the training pipeline, read back from MLflow."""

from pathlib import Path

import mlflow
import numpy as np
import pytest
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project
from mlflow import MlflowClient

from tests.e2e.conftest import kedro

EPOCHS = 6


@pytest.fixture(scope="module")
def finished_run(project, small_digits):
    """One training run through a KedroSession on 200 digits, then its MLflow run."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(project)
        bootstrap_project(project)
        runtime_params = {
            "raw_images_path": str(small_digits),
            "data": {"batch_size": 16},
            "training": {"epochs": EPOCHS, "progress_bar": False},
        }
        with KedroSession.create(project_path=project, runtime_params=runtime_params) as s:
            s.run(pipeline_names=["training"])
        tracking_uri = f"sqlite:///{project / 'mlflow.db'}"
        mlflow.set_tracking_uri(tracking_uri)
        client = MlflowClient(tracking_uri)
        experiment = client.get_experiment_by_name("kedro_torch")
        (run,) = client.search_runs([experiment.experiment_id])
        yield client, run


def test_parameters_are_flattened(finished_run):
    _, run = finished_run
    params = run.data.params
    assert params["training.optimizer.name"] == "AdamW"
    assert params["training.optimizer.kwargs.lr"] == "0.003"
    assert params["training.epochs"] == str(EPOCHS)
    assert params["model.name"] == "small_cnn"


def test_epoch_metrics_have_one_step_per_epoch(finished_run):
    client, run = finished_run
    for name in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr"):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, name)]
        assert sorted(steps) == list(range(1, EPOCHS + 1)), name
    losses = client.get_metric_history(run.info.run_id, "train_loss")
    assert sorted(losses, key=lambda m: m.step)[-1].value < losses[0].value


def test_test_metrics_and_artifacts_are_logged(finished_run, project):
    client, run = finished_run
    metrics = run.data.metrics
    assert 0.5 < metrics["test_accuracy"] <= 1.0
    assert {"test_precision_0", "test_recall_9", "test_f1_5"} <= set(metrics)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"confusion_matrix.png", "learning_curve.png", "evaluation_report.json",
            "label_map.json", "training_history.csv", "data_quality_report.json",
            "normalization.json"} <= artifacts
    png = client.download_artifacts(run.info.run_id, "confusion_matrix.png", str(project))
    assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    versions = list((project / "data/06_models/model_state_dict.pt").iterdir())
    assert len(versions) == 1


@pytest.mark.parametrize("batch", [1, 7])
def test_logged_model_predicts_any_batch_size(finished_run, batch):
    _, run = finished_run
    model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    images = np.random.default_rng(0).normal(size=(batch, 1, 16, 16)).astype(np.float32)
    assert np.asarray(model.predict(images)).shape == (batch, 10)


def test_unknown_optimizer_stops_before_any_work(project):
    result = kedro(project, "run", "--pipeline", "training",
                   "--params", "training.optimizer.name=Adamm")
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "training.optimizer.name" in output
    assert "'Adamm'" in output
    assert "Adam, AdamW" in output
    assert "Running node" not in output
    assert "has started" not in output  # no MLflow run was opened


def test_fine_tunes_from_the_weights_of_an_earlier_run(finished_run, project, small_digits):
    (weights,) = (project / "data/06_models/model_state_dict.pt").glob("*/model_state_dict.pt")
    result = kedro(
        project, "run", "--pipeline", "training", "--params",
        f"raw_images_path={small_digits},model.pretrained_path={weights},"
        "training.epochs=1,training.progress_bar=false",
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "tensors loaded, 0 skipped" in output
    client, _ = finished_run
    runs = client.search_runs(
        [client.get_experiment_by_name("kedro_torch").experiment_id],
        order_by=["start_time DESC"],
    )
    assert runs[0].data.params["model.pretrained_path"] == str(weights)
    # Starting from trained weights, one epoch already beats chance by far.
    assert runs[0].data.metrics["test_accuracy"] > 0.5
