"""Project hooks that concern no MLflow run (those are in :mod:`kedro_torch.tracking.hooks`).

Kedro imports them with the settings for every command, so they import Kedro only;
torch comes with the first hook call that needs it.
"""

from __future__ import annotations

import atexit
import gc
from typing import TYPE_CHECKING, Any

from kedro.framework.hooks import hook_impl

if TYPE_CHECKING:
    from kedro.io import DataCatalog
    from kedro.pipeline import Pipeline


class ParameterValidationHook:
    """Validates parameters before the pipeline starts (and before MLflow opens a run).

    ``tryfirst`` puts this ahead of kedro-mlflow's own ``before_pipeline_run``, so
    a typo never leaves an empty MLflow run behind.
    """

    @hook_impl(tryfirst=True)
    def before_pipeline_run(
        self, run_params: dict[str, Any], pipeline: Pipeline, catalog: DataCatalog
    ) -> None:
        """Imported here, not with the module: the checks import torch."""
        from kedro_torch.pytorch import checks  # noqa: PLC0415

        used = {name.removeprefix("params:") for name in pipeline.inputs()}
        sections = used & set(checks.SECTIONS)
        if sections:
            checks.validate_parameters(catalog.load("parameters"), sections)


class GarbageCollectionHook:
    """Takes the objects of start-up out of the garbage collector's scans.

    Kedro, MLflow and torch leave about 750k objects that live until the process
    ends; every full collection walks them again, which costs over a second in a
    short run, and once more when the process exits.
    """

    @hook_impl
    def before_pipeline_run(self) -> None:
        gc.freeze()
        atexit.register(gc.freeze)
