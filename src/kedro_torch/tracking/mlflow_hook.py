"""kedro-mlflow's hook, logging the parameters of each node in one batch, to the run
a resume continues."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
from kedro.framework.hooks import hook_impl
from kedro.io import DataCatalog
from kedro.pipeline import Pipeline
from kedro.pipeline.node import Node
from kedro_mlflow.framework.hooks import MlflowHook
from mlflow import MlflowClient
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

from kedro_torch.pytorch.config import MlflowConfig, parse
from kedro_torch.pytorch.distributed import is_main_process
from kedro_torch.tracking import outbox, runs


class BatchedParamsMlflowHook(MlflowHook):
    """kedro-mlflow's hook, logging the parameters of each node in one batch.

    kedro-mlflow logs each flattened parameter a node takes with a
    ``mlflow.log_param`` call of its own, a database transaction each, and again
    for every node that takes the same section: about 280 transactions, 0.4 s,
    for the training pipeline. Here a node's parameters go in one ``log_params``
    call, without those the run already holds. Everything else, including how
    over-long values are treated (``long_params_strategy``), is kedro-mlflow's.
    When a resume continues an earlier run (:mod:`kedro_torch.tracking.resume`), it
    follows: later parameters go to that run.
    Kedro calls it through :class:`kedro_torch.tracking.hooks.MlflowHookForwarder`,
    which settings.py registers in place of the plugin's own hook.
    """

    def __init__(self) -> None:
        super().__init__()
        self._pending: dict[str, Any] | None = None
        self._logged: dict[str, str] = {}

    @hook_impl
    def before_pipeline_run(
        self, run_params: dict[str, Any], pipeline: Pipeline, catalog: DataCatalog
    ) -> None:
        """Opens the run's outbox (:mod:`kedro_torch.tracking.outbox`) once the run is
        open, first sending what earlier runs kept while the server was away."""
        self._logged = {}
        super().before_pipeline_run(run_params, pipeline, catalog)
        if mlflow.active_run() is not None and is_main_process():
            project, uri = Path(run_params["project_path"]), mlflow.get_tracking_uri()
            outbox.replay_waiting(project, uri)
            outbox.open_outbox(mlflow.active_run().info.run_id, uri, project)

    @hook_impl
    def after_pipeline_run(
        self, run_params: dict[str, Any], pipeline: Pipeline, catalog: DataCatalog
    ) -> None:
        """Waits up to ``mlflow.outage_wait`` seconds for a server that went away; the
        run fails, its records kept, if it does not come back."""
        outbox.finish(parse(MlflowConfig, catalog.load("parameters").get("mlflow"),
                            "mlflow").outage_wait)
        super().after_pipeline_run(run_params, pipeline, catalog)

    @hook_impl
    def on_pipeline_error(
        self, error: Exception, run_params: dict[str, Any], pipeline: Pipeline,
        catalog: DataCatalog,
    ) -> None:
        """With the server away, how the run failed is kept with its other records."""
        if not outbox.abandon(runs.ending(error)):
            super().on_pipeline_error(error, run_params, pipeline, catalog)

    @hook_impl
    def before_node_run(
        self, node: Node, catalog: DataCatalog, inputs: dict[str, Any], is_async: bool
    ) -> None:
        self._follow_active_run()
        self._pending = {}
        try:
            super().before_node_run(node, catalog, inputs, is_async)
            new = {name: str(value) for name, value in self._pending.items()
                   if self._logged.get(name) != str(value)}
        finally:
            self._pending = None
        self._log(new)

    def _follow_active_run(self) -> None:
        """Log to the run a resume continues (:mod:`kedro_torch.tracking.resume`),
        which holds the parameters of its first part."""
        run = mlflow.active_run()
        if self.run_id is None or run is None or run.info.run_id == self.run_id:
            return
        self.run_id = run.info.run_id
        logged, self._logged = self._logged, dict(MlflowClient().get_run(self.run_id).data.params)
        self._log({name: value for name, value in logged.items()
                   if self._logged.get(name) != value})

    def _log(self, params: dict[str, str]) -> None:
        """MLflow keeps a parameter's first value; one that a resume changed (such as
        ``training.epochs``) is recorded as the tag ``resumed_with.<name>``."""
        changed = {name: value for name, value in params.items() if name in self._logged}
        if changed:
            outbox.send({"kind": "tags", "values": {f"resumed_with.{name}": value
                                                    for name, value in changed.items()}})
        fresh = {name: value for name, value in params.items() if name not in self._logged}
        if fresh:
            outbox.send({"kind": "params", "values": fresh})
        self._logged.update(fresh)

    def _log_param(self, name: str, value: Any) -> None:
        if self._pending is None or len(str(value)) > MAX_PARAM_VAL_LENGTH:
            super()._log_param(name, value)
        else:
            self._pending[name] = value
