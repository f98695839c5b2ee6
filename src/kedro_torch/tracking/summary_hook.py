"""The hook that ends a tracked run by saying what came of it (see
:mod:`kedro_torch.tracking.summary`). Kedro imports it with the settings for every
command, so it imports Kedro only; MLflow comes with its first call."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from kedro.framework.hooks import hook_impl

from kedro_torch.tracking.hooks import FollowsTheRun

if TYPE_CHECKING:
    from kedro.framework.context import KedroContext
    from kedro.io import DataCatalog
    from kedro.pipeline import Pipeline

logger = logging.getLogger(__name__)


class RunSummaryHook(FollowsTheRun):
    """Gives the MLflow run a Markdown description (data, model, main parameters,
    result) and prints, as the run's last lines, the test accuracy, the run's name and
    id, the commands that show it in the MLflow UI and its pipeline in kedro-viz, and
    where its artifacts, model and files are.

    Runs after kedro-mlflow has closed the run (``trylast``), so the summary comes
    last; pipelines without an MLflow run (inference, export) print nothing.
    """

    def __init__(self) -> None:
        self._context: KedroContext | None = None

    @hook_impl
    def after_context_created(self, context: KedroContext) -> None:
        self._context = context

    @hook_impl(trylast=True)
    def after_pipeline_run(
        self, run_params: dict[str, Any], pipeline: Pipeline, catalog: DataCatalog
    ) -> None:
        if self._run_id is None or self._context is None:
            return
        from mlflow.exceptions import MlflowException  # noqa: PLC0415

        from kedro_torch.tracking.summary import describe_outcome  # noqa: PLC0415

        try:
            summary = describe_outcome(self._run_id, self._context, run_params, pipeline,
                                       catalog)
        except MlflowException as error:  # the results are saved; only the summary is lost
            logger.warning("Could not describe MLflow run %s: %s", self._run_id, error)
            return
        # Printed, not logged: the log wraps long lines, and these are for copying.
        print(summary)
