"""A training run that tracks to a real MLflow server over HTTP, as a team's
shared server would be used: parameters, metrics, artifacts and the registered
model all reach the server, and the champion model loads back from it."""

from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.entities import Run

from tests.e2e.conftest import kedro
from tests.faults.conftest import write_mlflow_yml

pytestmark = pytest.mark.e2e

EPOCHS = 2


@pytest.fixture(scope="module")
def server_run(project, mlflow_server, small_digits) -> tuple[MlflowClient, Run]:
    """One `kedro run` in the project copy, tracked to the server (``--env server``)."""
    write_mlflow_yml(project, "server", mlflow_server)
    result = kedro(project, "run", "--pipelines", "training", "--env", "server", "--params",
                   f"raw_images_path={small_digits},data.batch_size=16,"
                   f"training.epochs={EPOCHS},training.progress_bar=false")
    assert result.returncode == 0, result.stdout + result.stderr
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("kedro_torch")
    (run,) = client.search_runs([experiment.experiment_id])
    return client, run


def test_the_run_logs_parameters_metrics_and_artifacts_to_the_server(server_run):
    client, run = server_run
    assert run.info.status == "FINISHED"
    assert run.data.params["training.epochs"] == str(EPOCHS)
    assert run.data.tags["pipeline"] == "training"
    history = client.get_metric_history(run.info.run_id, "val_accuracy")
    assert [metric.step for metric in history] == list(range(1, EPOCHS + 1))
    assert "test_accuracy" in run.data.metrics
    # Artifacts go through the server, into its own folder.
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")
    artifacts = {artifact.path for artifact in client.list_artifacts(run.info.run_id)}
    assert {"evaluation_report.json", "plots", "per_class.json", "parameters.yml"} <= artifacts
    assert "plots/confusion_matrix.png" in {
        artifact.path for artifact in client.list_artifacts(run.info.run_id, "plots")}


def test_the_model_is_registered_and_the_champion_predicts_from_the_server(
    server_run, mlflow_server, small_digits
):
    client, run = server_run
    (version,) = client.search_model_versions("name = 'kedro_torch'")
    assert version.run_id == run.info.run_id
    assert client.get_model_version_by_alias("kedro_torch", "champion").version == version.version

    mlflow.set_tracking_uri(mlflow_server)
    model = mlflow.pyfunc.load_model("models:/kedro_torch@champion")
    images = sorted(str(path) for path in Path(small_digits).glob("*/*.png"))[::40]
    predictions = model.predict(pd.DataFrame({"path": images}))
    assert predictions["path"].tolist() == images
    assert predictions["error"].isna().all()
    assert set(predictions["label"]) <= {str(digit) for digit in range(10)}
