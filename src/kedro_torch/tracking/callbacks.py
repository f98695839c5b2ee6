"""The training loop's link to MLflow: each epoch's metrics, logged as it ends, and
the history of the run a resume continues."""

from __future__ import annotations

import time

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException

from kedro_torch.pytorch.callbacks import Callback
from kedro_torch.pytorch.distributed import is_main_process
from kedro_torch.tracking import outbox


class MlflowEpochLogger(Callback):
    """Logs each epoch's metrics to the active MLflow run as it ends (step = epoch),
    through the run's outbox (:mod:`kedro_torch.tracking.outbox`): a tracking server
    that goes away never holds training up, and what it missed is sent when it is back.
    """

    def __init__(self) -> None:
        run = mlflow.active_run() if is_main_process() else None
        self.run_id = run.info.run_id if run is not None else None

    @property
    def checkpoint_tags(self) -> dict[str, str]:
        """What checkpoints carry for a resume: the run that holds their epochs."""
        return {"mlflow_run_id": self.run_id} if self.run_id else {}

    def on_resume(self, history: list[dict[str, float]], tags: dict[str, str]) -> None:
        """Log the checkpoint's epochs this run lacks, at their steps, so that it holds
        the whole history (1..N, each epoch once): none when it is the run that trained
        them, continued (:mod:`kedro_torch.tracking.resume`); all when it is a new one,
        then linked with that run, which a SIGKILL would otherwise leave RUNNING for ever."""
        if self.run_id is None:
            return
        client, now = MlflowClient(), int(time.time() * 1000)
        names = {name for row in history for name in row if name != "epoch"}
        held = {(name, metric.step) for name in names
                for metric in client.get_metric_history(self.run_id, name)}
        client.log_batch(self.run_id, metrics=[
            Metric(name, value, now, int(row["epoch"]))
            for row in history for name, value in row.items()
            if name != "epoch" and (name, int(row["epoch"])) not in held
        ])
        earlier = tags.get("mlflow_run_id")
        if earlier is None or earlier == self.run_id:
            return
        client.set_tag(self.run_id, "resumed_from_run", earlier)
        try:
            status = client.get_run(earlier).info.status
        except MlflowException:  # deleted, or in another store: the tag above is all
            return
        client.set_tag(earlier, "resumed_in_run", self.run_id)
        if status == "RUNNING":
            client.set_terminated(earlier, "KILLED")

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        if self.run_id is not None:
            outbox.send({"kind": "metrics", "step": epoch, "timestamp": int(time.time() * 1000),
                         "metrics": {name: value for name, value in metrics.items()
                                     if name != "epoch"}})
