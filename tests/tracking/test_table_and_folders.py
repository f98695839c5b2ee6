"""A table logged with ``mlflow.log_table`` and a saved folder logged as a folder of
artifacts, against a real SQLite store: straight to MLflow, and through the outbox's
spool while the tracking server is away."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import matplotlib.pyplot as plt
import mlflow
import pandas as pd
import pytest
from kedro.io import DataCatalog, DatasetError, Version
from kedro_datasets.matplotlib import MatplotlibDataset
from mlflow import MlflowClient

from kedro_torch.tracking import outbox
from kedro_torch.tracking.datasets import MlflowTableDataset
from kedro_torch.tracking.runs import log_saved_dataset
from tests.servers import free_port

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def client(tmp_path):
    """A client of a SQLite store of this test's own, MLflow's tracking URI for now; its
    experiment ``tables`` (artifacts in ``tmp_path`` too) the active one."""
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = MlflowClient()
    mlflow.set_experiment(experiment_id=client.create_experiment(
        "tables", artifact_location=(tmp_path / "artifacts").as_uri()))
    try:
        yield client
    finally:
        mlflow.set_tracking_uri(previous)


def per_class() -> pd.DataFrame:
    return pd.DataFrame({"class": ["cat", "dog"], "precision": [0.75, 0.5],
                         "recall": [0.6, 2 / 3], "f1": [2 / 3, 4 / 7], "support": [5, 3]})


def figures() -> dict[str, plt.Figure]:
    result = {}
    for name in ("confusion_matrix.png", "learning_curve.png"):
        figure, axes = plt.subplots()
        axes.plot([0, 1], [1, 0])
        result[name] = figure
    return result


def test_the_table_dataset_logs_a_table_mlflow_loads_back(client):
    with mlflow.start_run() as run:
        MlflowTableDataset(artifact_file="per_class.json").save(per_class())
    logged = mlflow.load_table("per_class.json", run_ids=[run.info.run_id])
    pd.testing.assert_frame_equal(logged, per_class())
    tables = json.loads(client.get_run(run.info.run_id).data.tags["mlflow.loggedArtifacts"])
    assert tables == [{"path": "per_class.json", "type": "table"}]  # the UI shows it as one


def test_a_table_without_rows_is_not_logged(client):
    with mlflow.start_run() as run:
        MlflowTableDataset(artifact_file="per_class.json").save(pd.DataFrame())
    assert client.list_artifacts(run.info.run_id) == []
    assert "mlflow.loggedArtifacts" not in client.get_run(run.info.run_id).data.tags


def test_the_table_dataset_needs_an_active_run_and_only_logs():
    assert mlflow.active_run() is None  # precondition: nothing left a run open
    dataset = MlflowTableDataset(artifact_file="per_class.json")
    with pytest.raises(DatasetError, match="no active MLflow run"):
        dataset.save(per_class())
    assert mlflow.active_run() is None  # and it did not start one
    with pytest.raises(DatasetError, match=r"mlflow\.load_table\('per_class\.json'"):
        dataset.load()


def test_a_saved_folder_of_figures_is_logged_as_a_folder_of_its_name(client, tmp_path):
    """A versioned MatplotlibDataset saves a dict to ``plots/<version>/plots/<key>``; the
    run gets ``plots/<key>``."""
    catalog = DataCatalog({"evaluation_plots": MatplotlibDataset(
        filepath=str(tmp_path / "plots"), version=Version(None, None),
        metadata={"mlflow_artifact": True})})
    plots = figures()
    with mlflow.start_run() as run:
        catalog.save("evaluation_plots", plots)
        log_saved_dataset(catalog, "evaluation_plots", plots)
    run_id = run.info.run_id
    assert [a.path for a in client.list_artifacts(run_id)] == ["plots"]
    assert [a.path for a in client.list_artifacts(run_id, "plots")] == [
        "plots/confusion_matrix.png", "plots/learning_curve.png"]
    png = client.download_artifacts(run_id, "plots/confusion_matrix.png", str(tmp_path))
    assert Path(png).read_bytes()[:8] == PNG


def test_a_table_and_a_folder_wait_in_the_spool_while_the_server_is_away(client, tmp_path):
    """The spool keeps its own copies: the records it holds reach the run later even
    when the table is gone from memory and the folder from disk."""
    folder = tmp_path / "version" / "plots"
    folder.mkdir(parents=True)
    for name, figure in figures().items():
        figure.savefig(folder / name)
    run_id = client.create_run(client.get_experiment_by_name("tables").experiment_id).info.run_id
    box = outbox.Outbox(run_id, f"http://127.0.0.1:{free_port()}", tmp_path / "spool")
    box.send({"kind": "table", "table": per_class(), "artifact_file": "per_class.json"})
    box.send({"kind": "artifact", "file": str(folder)})
    assert box.away
    shutil.rmtree(tmp_path / "version")
    lines = (box.folder / outbox.RECORDS_FILE).read_text().splitlines()
    spooled = [json.loads(line) for line in lines[1:]]
    assert [record["kind"] for record in spooled] == ["table", "artifact"]

    for record in spooled:  # as a later replay sends them, the server back
        outbox.apply(run_id, record)
    pd.testing.assert_frame_equal(mlflow.load_table("per_class.json", run_ids=[run_id]),
                                  per_class())
    assert [a.path for a in client.list_artifacts(run_id, "plots")] == [
        "plots/confusion_matrix.png", "plots/learning_curve.png"]
