"""Whole training runs on torchvision datasets by name: FakeData through the kedro CLI,
and a CIFAR-10 root written in torchvision's own format, whose test split is the run's."""

import json
import os
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from torchvision.datasets import CIFAR10

from tests.e2e.conftest import kedro, latest_run, latest_version, run_pipeline

# A project copy of this module's own: its runs must not become the latest model or run
# of the shared copy, which other end-to-end tests read.
from tests.e2e.conftest import project as torchvision_project  # noqa: F401
from tests.torchvision_roots import CIFAR10_CLASSES, trust_cifar10_files, write_cifar10

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def project(request) -> Path:
    """The copy, tracking to its store by absolute path: MLflow keeps one store per
    tracking URI in a process, so the relative ``sqlite:///mlflow.db`` would reach the
    store of the first copy that ran a session in this process."""
    copy = request.getfixturevalue("torchvision_project")
    (copy / "conf" / "local" / "mlflow.yml").write_text(
        f"server:\n  mlflow_tracking_uri: sqlite:///{copy / 'mlflow.db'}\n")
    return copy


@pytest.fixture
def tracking_uri_kept(monkeypatch):
    """A run in this process points MLflow's tracking URI (and MLFLOW_TRACKING_URI, which
    kedro subprocesses inherit) at its project's store; the other tests read theirs
    through it, so both are put back."""
    tracking = mlflow.get_tracking_uri()
    if "MLFLOW_TRACKING_URI" in os.environ:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", os.environ["MLFLOW_TRACKING_URI"])
    else:
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield
    mlflow.set_tracking_uri(tracking)


def quality_report(project: Path) -> dict:
    return json.loads(latest_version(project / "data/08_reporting/data_quality_report.json")
                      .read_text())


def test_fakedata_trains_evaluates_and_logs_a_run_like_a_folder(project, tmp_path):
    # The image folder, an input of the ingest node, is not read: it need not exist.
    result = kedro(project, "run", "--pipelines", "training", "--params", ",".join([
        "data.source=torchvision", "data.torchvision.name=FakeData",
        "data.torchvision.kwargs.size=60", "data.torchvision.kwargs.num_classes=2",
        "data.image_size=8", "data.batch_size=16", "training.epochs=2",
        "training.progress_bar=false", f"raw_images_path={tmp_path / 'no_such_folder'}",
    ]))
    assert result.returncode == 0, result.stderr[-3000:]
    client, run = latest_run(project)
    assert run.info.status == "FINISHED"
    assert run.data.params["data.torchvision.name"] == "FakeData"
    assert run.data.params["data.torchvision.kwargs.size"] == "60"
    assert "60 images in 2 classes from `torchvision.datasets.FakeData`" in run.data.tags[
        "mlflow.note.content"]
    assert 0 <= run.data.metrics["test_accuracy"] <= 1
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")]
    assert sorted(steps) == [1, 2]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"data_quality_report.json", "test_predictions.csv"} <= artifacts
    assert client.search_model_versions(f"run_id = '{run.info.run_id}'")
    report = quality_report(project)
    assert report["source"] == {"type": "torchvision", "dataset": "FakeData", "root": None,
                                "kwargs": {"size": 60, "num_classes": 2},
                                "splits": {"all": "the whole dataset"}, "test_split": None}
    assert report["split_rule"].startswith("content hash")
    assert report["images_used"] == 60
    predictions = pd.read_csv(latest_version(project / "data/07_model_output/"
                                             "test_predictions.csv"))
    assert predictions["path"].str.match(r"torchvision://FakeData/all/\d+$").all()
    assert len(predictions) == report["images_per_split"]["test"]


def test_a_cifar10_root_trains_with_its_own_test_split(project, tmp_path, monkeypatch,
                                                       tracking_uri_kept):
    root = tmp_path / "cifar10"
    md5s, _, _ = write_cifar10(root, train_per_class=10, test_per_class=3)
    trust_cifar10_files(monkeypatch, md5s)
    run_pipeline(project, "training", {
        "data": {"source": "torchvision", "torchvision": {"name": "CIFAR10", "root": str(root)},
                 "channels": 3, "image_size": 8, "batch_size": 16},
        "training": {"epochs": 3, "progress_bar": False},
    })
    _, run = latest_run(project)
    assert run.info.status == "FINISHED"
    assert run.data.params["data.torchvision.name"] == "CIFAR10"
    model_input = pd.read_parquet(latest_version(project / "data/05_model_input" /
                                                 "model_input.parquet"))
    in_test = model_input["split"] == "test"
    assert sorted(model_input.loc[in_test, "relative_path"]) == sorted(
        f"test/{i}" for i in range(30))
    assert model_input.loc[~in_test, "relative_path"].str.startswith("train/").all()
    assert (~in_test).sum() == 100
    report = quality_report(project)
    assert report["source"]["dataset"] == "CIFAR10"
    assert report["source"]["splits"] == {"train": "train=True", "test": "train=False"}
    assert report["split_rule"].startswith("own test split")
    assert report["images_per_class"] == dict.fromkeys(CIFAR10_CLASSES, 13)
    predictions = pd.read_csv(latest_version(project / "data/07_model_output/"
                                             "test_predictions.csv"))
    assert len(predictions) == 30
    # A test image exported to PNG predicts through the logged MLflow model as the
    # test split did: the model spec holds the preprocessing.
    row = predictions.iloc[0]
    png = tmp_path / "exported.png"
    CIFAR10(str(root), train=False)[int(row["path"].rsplit("/", 1)[1])][0].save(png)
    model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    predicted = model.predict(pd.DataFrame({"path": [str(png)]}))
    assert predicted.loc[0, "label"] == row["predicted"]
    assert predicted.loc[0, "probability"] == pytest.approx(row["probability"], abs=1e-5)
