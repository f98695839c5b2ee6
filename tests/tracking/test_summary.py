"""The run's description and the experiment's kind, against a real SQLite store."""

from __future__ import annotations

import mlflow
import pytest
from mlflow import MlflowClient

from kedro_torch.tracking.runs import EXPERIMENT_KIND, mark_experiment_kind
from kedro_torch.tracking.summary import TRAINING_VIEW, run_note, ui_hint

QUALITY = {"images_used": 1797, "images_per_class": {str(d): 180 for d in range(10)},
           "images_per_split": {"train": 1277, "val": 264, "test": 256}, "bad_files": []}


def test_the_note_gives_the_result_first_then_data_model_and_training():
    parameters = {"model": {"name": "resnet18", "kwargs": {"dropout": 0.2}},
                  "training": {"epochs": 3, "optimizer": {"name": "SGD", "kwargs": {"lr": 0.1}}}}
    metrics = {"test_accuracy": 0.91234, "test_top3_accuracy": 0.99, "test_ece": 0.05,
               "val_accuracy": 0.9, "test_per_class/f1_3": 0.5}
    note = run_note(parameters, metrics, QUALITY, "data/01_raw/digits")
    lines = note.splitlines()
    assert lines[0] == ("**Test accuracy 0.9123** (ece 0.0500, top3 accuracy 0.9900, "
                        "last val accuracy 0.9000)")
    assert "1797 images in 10 classes from `data/01_raw/digits` (1277 train / 264 val / " \
           "256 test); 0 unreadable files set aside" in note
    assert "- **Model:** `resnet18` (dropout=0.2)" in lines
    assert "3 epochs, `SGD` (lr=0.1), `CosineAnnealingLR`" in note


def test_a_run_without_evaluation_or_data_check_still_says_what_it_trained():
    note = run_note({}, {}, None, None)
    assert "Test accuracy" not in note and "Data" not in note
    assert note.startswith("- **Input:** 16x16 px, grey, batch size 32")


def test_the_ui_hint_opens_the_training_view_of_a_local_store_or_a_server(monkeypatch):
    monkeypatch.setattr(mlflow, "get_tracking_uri", lambda: "sqlite:///mlflow.db")
    assert ui_hint(None, "1", "abc") == ("kedro mlflow ui (or make ui), then "
                                         f"http://127.0.0.1:5000/#/experiments/1/runs/abc?{TRAINING_VIEW}")
    monkeypatch.setattr(mlflow, "get_tracking_uri", lambda: "http://mlflow.example:5000/")
    assert ui_hint(None, "1", "abc") == (
        f"http://mlflow.example:5000/#/experiments/1/runs/abc?{TRAINING_VIEW}")


@pytest.fixture
def client(tmp_path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")


def test_the_experiment_is_marked_as_model_training(client):
    experiment = client.create_experiment("plain")
    mark_experiment_kind(client, experiment)
    key, value = EXPERIMENT_KIND
    assert client.get_experiment(experiment).tags[key] == value == "custom_model_development"


def test_an_experiment_that_has_a_kind_keeps_it(client):
    experiment = client.create_experiment("tuned", tags={EXPERIMENT_KIND[0]: "finetuning"})
    mark_experiment_kind(client, experiment)
    assert client.get_experiment(experiment).tags[EXPERIMENT_KIND[0]] == "finetuning"
