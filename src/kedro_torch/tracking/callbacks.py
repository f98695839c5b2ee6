"""The training loop's link to MLflow: each epoch's metrics, logged as it ends."""

from __future__ import annotations

import os

import mlflow

from kedro_torch.pytorch.distributed import is_main_process
from kedro_torch.pytorch.engine import Callback


class MlflowEpochLogger(Callback):
    """Logs each epoch's metrics to the active MLflow run as it ends (step = epoch).

    Logging is asynchronous so the store's latency never holds up training; the
    queue is flushed when training ends.
    """

    def __init__(self) -> None:
        # Without a buffering interval, MLflow's logging thread waits on its queue in
        # 1 s polls that stopping it cannot cut short: flushing at the end of training
        # and closing the run each lose up to a second. With one, the thread sleeps on
        # an event that stopping sets. A value the user set is kept.
        os.environ.setdefault("MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS", "1")

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        if mlflow.active_run() is not None and is_main_process():
            mlflow.log_metrics(
                {name: value for name, value in metrics.items() if name != "epoch"},
                step=epoch, synchronous=False,
            )

    def on_fit_end(self) -> None:
        mlflow.flush_async_logging()
