"""Each trial of a study in an MLflow run of its own, nested under the active run, read
back from a real SQLite store: parent, sampled parameters, per-epoch metrics, state."""

from __future__ import annotations

import mlflow
import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from kedro_torch.pytorch import api, data, tuning
from kedro_torch.pytorch.config import DataConfig, TuningConfig, parse
from kedro_torch.tracking.tuning import in_nested_runs

LR = "training.optimizer.kwargs.lr"
EPOCHS = 3
DATA = {"batch_size": 8}


@pytest.fixture
def tracking(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("tuning")
    yield MlflowClient(uri)
    mlflow.set_tracking_uri(previous)


def test_each_trial_is_a_child_run_with_its_values_metrics_and_state(
        small_digits, tracking, one_thread):
    manifest = data.manifest_from_listing(data.list_folder(str(small_digits)))
    prepared = api.prepare_data(manifest, parse(DataConfig, DATA, "data"))
    config = parse(TuningConfig, {
        "space": {LR: {"type": "float", "low": -1.0, "high": 1.0},
                  "data.batch_size": {"type": "categorical", "choices": [8]}},
        "n_trials": 3,
        "pruner": {"name": "ThresholdPruner", "kwargs": {"lower": 0.4, "n_warmup_steps": 2}},
    }, "tuning")
    training = {"epochs": EPOCHS, "progress_bar": False,
                "optimizer": {"kwargs": {"lr": 0.003, "weight_decay": 0.0001}}}
    objective = tuning.Objective({"data": DATA, "model": {}, "training": training}, config,
                                 prepared.model_input, prepared.label_map,
                                 prepared.preprocessing, prepared.images)
    study = optuna.create_study(direction="maximize", pruner=tuning.build_pruner(config))
    for lr in (0.01, 0.0, -1.0):  # learns; learns nothing (pruned); refused by AdamW
        study.enqueue_trial({LR: lr, "data.batch_size": 8})
    with mlflow.start_run(run_name="study") as parent:
        tuning.optimize(study, config, in_nested_runs(objective))
        assert mlflow.active_run().info.run_id == parent.info.run_id  # back to the parent

    children = tracking.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
        order_by=["attributes.start_time ASC"])
    assert [run.info.run_name for run in children] == ["trial-0", "trial-1", "trial-2"]
    assert tracking.get_run(parent.info.run_id).data.tags["optuna_study"] == study.study_name
    for trial, run in zip(study.trials, children, strict=True):
        assert trial.user_attrs["mlflow_run_id"] == run.info.run_id
        assert run.data.params == {LR: str(trial.params[LR]), "data.batch_size": "8"}
        assert run.data.tags["trial_state"] == trial.state.name
        assert run.data.tags["trial_number"] == str(trial.number)
        history = tracking.get_metric_history(run.info.run_id, "val_accuracy")
        assert {m.step: m.value for m in history} == trial.intermediate_values

    learns, still, refused = children
    assert study.trials[0].state == TrialState.COMPLETE
    assert learns.info.status == "FINISHED"
    assert learns.data.metrics["final_val_accuracy"] == study.trials[0].value
    assert still.data.tags["trial_state"] == "PRUNED" and still.info.status == "FINISHED"
    assert "final_val_accuracy" not in still.data.metrics
    assert len(tracking.get_metric_history(still.info.run_id, "train_loss")) == 2
    assert refused.data.tags["trial_state"] == "FAIL" and refused.info.status == "FAILED"
    assert "Invalid learning rate: -1.0" in refused.data.tags["error"]


def test_without_an_active_run_trials_are_not_tracked(small_digits, tracking, one_thread):
    config = parse(TuningConfig, {"space": {LR: {"type": "float", "low": 0.0, "high": 1.0}},
                                  "n_trials": 1, "pruner": {"name": None}}, "tuning")
    manifest = data.manifest_from_listing(data.list_folder(str(small_digits)))
    prepared = api.prepare_data(manifest, parse(DataConfig, DATA, "data"))
    objective = tuning.Objective({"data": DATA, "model": {},
                                  "training": {"epochs": 1, "progress_bar": False}},
                                 config, prepared.model_input, prepared.label_map,
                                 prepared.preprocessing, prepared.images)
    study = optuna.create_study(direction="maximize")
    tuning.optimize(study, config, in_nested_runs(objective))
    assert study.trials[0].state == TrialState.COMPLETE
    assert "mlflow_run_id" not in study.trials[0].user_attrs
    assert tracking.search_runs([tracking.get_experiment_by_name("tuning").experiment_id]) == []
