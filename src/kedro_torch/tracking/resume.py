"""One MLflow run for a training interrupted and resumed any number of times.

Every checkpoint carries the id of the run that wrote it. kedro-mlflow opens a new
run for each ``kedro run``; when the train node is about to resume a checkpoint
whose run is still open to more epochs (RUNNING after a SIGKILL, KILLED after a
signal, FAILED after a crash) in this store and experiment, the new run hands over
to it: its tags and files go to the earlier run, which is reopened, and the new
run, which holds nothing else, is deleted. A resume of a FINISHED run, of a
deleted one or of one in another store keeps its new run, which then holds the
whole history and is tagged with the earlier id
(:class:`~kedro_torch.tracking.callbacks.MlflowEpochLogger`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from kedro_torch.pytorch import api
from kedro_torch.pytorch.checkpoints import CheckpointStore
from kedro_torch.pytorch.config import DataConfig, ModelConfig, TrainingConfig, parse

# Statuses of a run that stopped before its last epoch and so can take more.
CONTINUABLE = frozenset({"RUNNING", "KILLED", "FAILED"})


def run_to_continue(inputs: Mapping[str, Any]) -> str | None:
    """The earlier run to continue, given the train node's inputs; None to keep this one.

    The inputs name the checkpoint the node will resume exactly as it does: the
    same parameters and model input make the same identity, so the same folder.
    """
    active = mlflow.active_run()
    training = parse(TrainingConfig, inputs["params:training"], "training")
    if active is None or not api.resume_mode(training):
        return None
    identity = api.training_identity(parse(DataConfig, inputs["params:data"], "data"),
                                     parse(ModelConfig, inputs["params:model"], "model"),
                                     training, inputs["model_input"])
    root: CheckpointStore = inputs["training_checkpoints"]
    earlier = root.for_identity(identity).tags().get("mlflow_run_id")
    if earlier is None or earlier == active.info.run_id:
        return None
    try:
        run = MlflowClient().get_run(earlier)
    except MlflowException:  # deleted for good, or in another store
        return None
    same_experiment = run.info.experiment_id == active.info.experiment_id
    if run.info.lifecycle_stage != "active" or not same_experiment:
        return None
    return earlier if run.info.status in CONTINUABLE else None


def continue_run(earlier: str) -> None:
    """Make ``earlier`` the active run in place of the one just opened."""
    client = MlflowClient()
    opened = mlflow.active_run().info.run_id
    tags = client.get_run(opened).data.tags
    client.log_batch(earlier, tags=[mlflow.entities.RunTag(key, value)
                                    for key, value in tags.items() if key != "mlflow.runName"])
    with tempfile.TemporaryDirectory() as folder:
        if client.list_artifacts(opened):
            client.log_artifacts(earlier, mlflow.artifacts.download_artifacts(
                run_id=opened, dst_path=folder))
    client.set_tag(opened, "resumed_in_run", earlier)
    mlflow.end_run("KILLED")
    client.delete_run(opened)
    mlflow.start_run(run_id=earlier)
