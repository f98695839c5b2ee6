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

A run killed outright while it trained (SIGKILL, the OOM killer, a power cut) can
close nothing: MLflow shows it RUNNING. The next run of its configuration finds the
claim it left on the checkpoint folder
(:meth:`~kedro_torch.pytorch.checkpoints.CheckpointStore.abandoned_claim`) and closes
it as KILLED, tagged ``killed_found_by`` with its own id, unless it continues it.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from kedro_torch.pytorch import api
from kedro_torch.pytorch.checkpoints import CheckpointStore
from kedro_torch.pytorch.config import DataConfig, ModelConfig, TrainingConfig, parse
from kedro_torch.tracking.store import unreachable

logger = logging.getLogger(__name__)

# Statuses of a run that stopped before its last epoch and so can take more.
CONTINUABLE = frozenset({"RUNNING", "KILLED", "FAILED"})


def run_to_continue(inputs: Mapping[str, Any]) -> str | None:
    """The earlier run to continue, given the train node's inputs; None to keep this one.
    Closes the run of a process killed outright while it trained this configuration,
    if it is not that one.

    The inputs name the checkpoint the node will resume exactly as it does: the
    same parameters and model input make the same identity, so the same folder, and
    the same checkpoint (:meth:`CheckpointStore.resume_point`, asked to change nothing).
    """
    active = mlflow.active_run()
    if active is None:
        return None
    training = parse(TrainingConfig, inputs["params:training"], "training")
    identity = api.training_identity(parse(DataConfig, inputs["params:data"], "data"),
                                     parse(ModelConfig, inputs["params:model"], "model"),
                                     training, inputs["model_input"])
    root: CheckpointStore = inputs["training_checkpoints"]
    store = root.for_identity(identity)
    mode = api.resume_mode(training)
    earlier = _continuable(store, mode, training.restores_best, active) if mode else None
    close_abandoned(store, active.info.run_id, keep=earlier)
    return earlier


def _continuable(store: CheckpointStore, mode: bool | str, with_best: bool,
                 active: mlflow.ActiveRun) -> str | None:
    name = store.resume_point(strict=mode is True, with_best=with_best, set_aside=False)
    earlier = store.tags(name).get("mlflow_run_id") if name is not None else None
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


def close_abandoned(store: CheckpointStore, found_by: str, keep: str | None = None) -> None:
    """Close as KILLED the run of a process that claimed ``store`` and was killed
    outright, tagged ``killed_found_by`` = ``found_by``; not ``keep`` (the run this one
    continues), nor a run that is not RUNNING.

    A tracking server that does not answer leaves it as it is, saying so: closing an
    earlier run is never worth holding this one up.
    """
    claim = store.abandoned_claim()
    killed = (claim or {}).get("tags", {}).get("mlflow_run_id")
    if killed is None or killed in (keep, found_by):
        return
    why = unreachable(mlflow.get_tracking_uri())
    try:
        if why is not None:
            raise ConnectionError(why)
        client = MlflowClient()
        if client.get_run(killed).info.status != "RUNNING":
            return
        client.set_tag(killed, "killed_found_by", found_by)
        client.set_terminated(killed, "KILLED")
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":  # deleted for good, or elsewhere
            return
        _not_closed(killed, store, error)
    except OSError as error:  # ConnectionError is one; MLflow's requests raise others
        _not_closed(killed, store, error)
    else:
        logger.warning("MLflow run %s was left RUNNING by process %s on %s, killed while it "
                       "trained into %s: closed as KILLED", killed, claim.get("pid"),
                       claim.get("host"), store.directory)


def _not_closed(run_id: str, store: CheckpointStore, error: Exception) -> None:
    logger.warning("MLflow run %s was left RUNNING by a process killed while it trained into "
                   "%s, and could not be closed (%s): MlflowClient().set_terminated(%r, "
                   "'KILLED') closes it", run_id, store.directory, error, run_id)
