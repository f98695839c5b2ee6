"""The hooks that put a Kedro run into MLflow, as settings.py registers them.

Kedro imports the project's settings, and so these hooks, for every command, even
``kedro --version``; MLflow, kedro-mlflow and torch would add seconds to each. So
this module imports Kedro only, and the hooks import their work
(:mod:`kedro_torch.tracking.runs`, :mod:`kedro_torch.tracking.mlflow_hook`) when
Kedro first calls them.
"""

from __future__ import annotations

import atexit
from typing import TYPE_CHECKING, Any

from kedro.framework.hooks import hook_impl

from kedro_torch.pytorch.distributed import launch_rank
from kedro_torch.pytorch.interrupts import Interrupted, interruption, received

if TYPE_CHECKING:
    from kedro.framework.context import KedroContext
    from kedro.io import DataCatalog
    from kedro.pipeline import Pipeline
    from kedro.pipeline.node import Node
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    from kedro_torch.tracking.mlflow_hook import BatchedParamsMlflowHook


class MlflowHookForwarder:
    """Stands in for kedro-mlflow's hook, as
    :class:`~kedro_torch.tracking.mlflow_hook.BatchedParamsMlflowHook`, and passes
    every call on to it.

    That class cannot be defined without importing kedro-mlflow and MLflow, so it is
    built on the first call. This class has kedro-mlflow's hook implementations, with
    their arguments and options, so Kedro calls it where it would call the plugin's.
    """

    def __init__(self) -> None:
        self._built: BatchedParamsMlflowHook | None = None
        self._untracked = False  # this session's pipelines are not tracked

    def _hook(self) -> BatchedParamsMlflowHook | _Untracked:
        """Imported here, not with the module: defining the class imports MLflow."""
        if self._untracked or launch_rank() != 0:  # torchrun's other ranks log nothing
            return _Untracked()
        if self._built is None:
            from kedro_torch.tracking.mlflow_hook import BatchedParamsMlflowHook  # noqa: PLC0415

            self._built = BatchedParamsMlflowHook()
        return self._built

    @hook_impl
    def after_context_created(self, context: KedroContext) -> None:
        """Checks the tracking server first: kedro-mlflow's set-up here is the run's
        first request to it, which MLflow would retry for minutes if it did not answer.
        For pipelines mlflow.yml does not track (inference, export) kedro-mlflow is left
        out altogether: its set-up would still look up the experiment on that server.
        An SQLite store that SQLite cannot read, there or when kedro-mlflow opens it,
        stops the run naming the file (:class:`~kedro_torch.tracking.store.StoreUnreadable`).

        Imported here, not with the module: the check reads mlflow.yml through kedro-mlflow.
        """
        from kedro_torch.tracking.store import check_tracking_server, store_failure  # noqa: PLC0415

        self._untracked = not check_tracking_server(context)
        try:
            self._hook().after_context_created(context)
        except Exception as error:
            unreadable = store_failure(error)
            if unreadable is None:
                raise
            raise unreadable from error

    @hook_impl
    def after_catalog_created(
        self,
        catalog: DataCatalog,
        conf_catalog: dict[str, Any],
        conf_creds: dict[str, Any],
        parameters: dict[str, Any],
        save_version: str,
        load_versions: dict[str, str],
    ) -> None:
        self._hook().after_catalog_created(
            catalog, conf_catalog, conf_creds, parameters, save_version, load_versions
        )

    @hook_impl
    def before_pipeline_run(
        self, run_params: dict[str, Any], pipeline: Pipeline, catalog: DataCatalog
    ) -> None:
        self._hook().before_pipeline_run(run_params, pipeline, catalog)

    @hook_impl
    def before_node_run(
        self, node: Node, catalog: DataCatalog, inputs: dict[str, Any], is_async: bool
    ) -> None:
        self._hook().before_node_run(node, catalog, inputs, is_async)

    @hook_impl
    def after_pipeline_run(
        self, run_params: dict[str, Any], pipeline: Pipeline, catalog: DataCatalog
    ) -> None:
        self._hook().after_pipeline_run(run_params, pipeline, catalog)

    @hook_impl
    def on_pipeline_error(
        self,
        error: Exception,
        run_params: dict[str, Any],
        pipeline: Pipeline,
        catalog: DataCatalog,
    ) -> None:
        self._hook().on_pipeline_error(error, run_params, pipeline, catalog)


class _Untracked:
    """kedro-mlflow's hook on a rank other than 0: every call does nothing."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


class MlflowArtifactHook:
    """Logs the file of every catalog entry marked ``metadata: {mlflow_artifact: true}``,
    and every table marked ``metadata: {mlflow_dataset_input: true}`` as a dataset
    input of the run (``mlflow.log_input``), so runs on different data are told apart.

    Marking entries in the catalog, rather than wrapping them in kedro-mlflow's
    ``MlflowArtifactDataset``, keeps Kedro's versioning of the local copy: a
    versioned dataset nested in that wrapper gets a save version of its own,
    which Kedro 1.x rejects.
    """

    def __init__(self) -> None:
        self._catalog: DataCatalog | None = None

    @hook_impl
    def after_catalog_created(self, catalog: DataCatalog) -> None:
        self._catalog = catalog

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, data: Any) -> None:
        """Imported here, not with the module: logging imports MLflow."""
        from kedro_torch.tracking import runs  # noqa: PLC0415

        if self._catalog is not None:
            runs.log_saved_dataset(self._catalog, dataset_name, data)


class MlflowRunHook:
    """Makes the run kedro-mlflow opened tell its own story.

    It names the run after the main parameters (``resnet18-AdamW-lr0.001``) unless
    mlflow.yml names it; tags it with the git commit (and whether the tree had
    uncommitted changes), the Kedro environment, the pipeline and the device; logs
    the resolved parameters as ``parameters.yml``; and samples CPU, memory and GPU
    use through MLflow's system-metrics monitor, flushed before the run ends.
    Runs after kedro-mlflow's ``before_pipeline_run`` (``trylast``), which opens
    the run, and before its ``after_pipeline_run`` (``tryfirst``), which closes it.
    """

    def __init__(self) -> None:
        self._context: KedroContext | None = None
        self._monitor: SystemMetricsMonitor | None = None

    @hook_impl
    def after_context_created(self, context: KedroContext) -> None:
        self._context = context

    @hook_impl(trylast=True)
    def before_pipeline_run(
        self, run_params: dict[str, Any], pipeline: Pipeline, catalog: DataCatalog
    ) -> None:
        """Imported here, not with the module: describing the run imports MLflow and torch."""
        from kedro_torch.tracking import runs  # noqa: PLC0415

        if self._context is not None:
            self._monitor = runs.describe_run(self._context, run_params, pipeline, catalog)

    @hook_impl(tryfirst=True)
    def before_node_run(self, inputs: dict[str, Any]) -> None:
        """Before training resumes a checkpoint, continue the run that wrote it
        (:mod:`kedro_torch.tracking.resume`); first, before kedro-mlflow's hook reopens
        the run it opened for this node (``tryfirst``).

        Imported here, not with the module: asking for the run imports MLflow and torch.
        """
        if "training_checkpoints" not in inputs:
            return
        from kedro_torch.tracking import resume  # noqa: PLC0415

        earlier = resume.run_to_continue(inputs)
        if earlier is None:
            return
        monitor = self._monitor
        self._stop_monitor()
        resume.continue_run(earlier)
        if monitor is not None:
            self._monitor = type(monitor)(earlier, monitor.sampling_interval,
                                          resume_logging=True)
            self._monitor.start()

    @hook_impl(tryfirst=True)
    def after_pipeline_run(self) -> None:
        self._stop_monitor()

    @hook_impl(tryfirst=True)
    def on_pipeline_error(self) -> None:
        self._stop_monitor()

    def _stop_monitor(self) -> None:
        """Imported here, not with the module: the outbox imports MLflow."""
        from kedro_torch.tracking import outbox  # noqa: PLC0415

        if self._monitor is not None:
            waiting = outbox.current()
            if waiting is None or not waiting.away:
                self._monitor.finish()  # logs what it holds, while the run is still open
            # else its thread, waiting on the server, would hold the run's end up for
            # minutes: a daemon thread, it ends with the process
            self._monitor = None


class FollowsTheRun:
    """Knows the id of this process's MLflow run (``_run_id``; None on ranks other than
    0 and for untracked pipelines): the one kedro-mlflow opened, then, from the node
    that resumes a checkpoint on, the earlier run a resume continues
    (:mod:`kedro_torch.tracking.resume`)."""

    _run_id: str | None = None

    @hook_impl(trylast=True)
    def before_pipeline_run(self) -> None:
        """Imported here, not with the module: asking for the run imports MLflow."""
        import mlflow  # noqa: PLC0415

        from kedro_torch.pytorch.distributed import is_main_process  # noqa: PLC0415

        run = mlflow.active_run()
        self._run_id = run.info.run_id if run is not None and is_main_process() else None

    @hook_impl
    def before_node_run(self) -> None:
        if self._run_id is not None:
            self.before_pipeline_run()


class InterruptedRunHook(FollowsTheRun):
    """Records a run that SIGTERM or SIGINT stopped as KILLED, with where it stopped,
    and takes back the model version it registered.

    kedro-mlflow marks every run whose pipeline raised FAILED; this runs after it
    (``trylast``) and puts the status right, so no interrupted run passes for a
    failed one, or a finished one. A signal outside the runner's reach (while the
    hooks open or close the run) ends the process instead; MLflow would then close
    the run as FINISHED on its way out, so this hook does it first, as KILLED.
    """

    _at_exit = False

    @hook_impl
    def after_context_created(self) -> None:
        """Before kedro-mlflow can open the run: a signal while its hook opens it ends
        the process before this class's other hooks have run. Registered once MLflow is
        imported, so that it runs before MLflow's own exit handler."""
        import mlflow  # noqa: F401, PLC0415

        if not self._at_exit:
            atexit.register(self._killed_on_the_way_out)
            self._at_exit = True

    @hook_impl(trylast=True)
    def on_pipeline_error(self, error: Exception) -> None:
        """Imported here, not with the module: marking the run imports MLflow."""
        interrupted = interruption(error)
        if self._run_id is not None and interrupted is not None:
            self._mark(self._run_id, interrupted)

    def _killed_on_the_way_out(self) -> None:
        """The run still open as the process leaves on a signal: this process's, or
        the one kedro-mlflow had just opened when the signal came."""
        import mlflow  # noqa: PLC0415

        signum, run = received(), mlflow.active_run()
        if signum is not None and run is not None:
            self._mark(run.info.run_id, Interrupted(signum))
            mlflow.end_run("KILLED")

    @staticmethod
    def _mark(run_id: str, interrupted: Interrupted) -> None:
        from kedro_torch.tracking import outbox, runs  # noqa: PLC0415

        if not outbox.kept(run_id):  # else its end waits with its other records
            runs.mark_interrupted(run_id, interrupted)

