"""The run's description and the experiment's kind, against a real SQLite store."""

from __future__ import annotations

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
               "val_accuracy": 0.9, "test_macro_f1": 0.5}
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


def test_the_project_store_is_opened_with_make_ui(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_PORT", raising=False)
    page = f"/#/experiments/1/runs/abc?{TRAINING_VIEW}"
    expected = f"make ui, then http://127.0.0.1:5000{page}"
    assert ui_hint("sqlite:///mlflow.db", tmp_path, "1", "abc") == expected
    assert ui_hint(f"sqlite:///{tmp_path}/mlflow.db", tmp_path, "1", "abc") == expected
    # MLflow's CLI reads MLFLOW_PORT: `make ui` then listens there.
    monkeypatch.setenv("MLFLOW_PORT", "5123")
    assert ui_hint("sqlite:///mlflow.db", tmp_path, "1", "abc") == (
        f"make ui, then http://127.0.0.1:5123{page}")


def test_another_store_gets_the_command_that_opens_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_PORT", raising=False)
    then = f", then http://127.0.0.1:5000/#/experiments/1/runs/abc?{TRAINING_VIEW}"
    command = ".venv/bin/mlflow ui --backend-store-uri "
    assert ui_hint("sqlite:///data/runs.db", tmp_path, "1", "abc") == (
        command + "sqlite:///data/runs.db" + then)
    assert ui_hint("file:///srv/mlruns", tmp_path, "1", "abc") == (
        command + "file:///srv/mlruns" + then)
    # Quoted where the shell would read the URI otherwise.
    assert ui_hint("postgresql://db.example/mlflow?sslmode=require", tmp_path, "1", "abc") == (
        command + "'postgresql://db.example/mlflow?sslmode=require'" + then)


def test_a_tracking_server_is_its_own_ui(tmp_path):
    assert ui_hint("http://mlflow.example:5000/", tmp_path, "1", "abc") == (
        f"http://mlflow.example:5000/#/experiments/1/runs/abc?{TRAINING_VIEW}")
    assert ui_hint("https://mlflow.example/team", tmp_path, "1", "abc") == (
        f"https://mlflow.example/team/#/experiments/1/runs/abc?{TRAINING_VIEW}")


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
