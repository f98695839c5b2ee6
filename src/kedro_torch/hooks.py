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


START_UP_THRESHOLDS = (100_000, 20, 100)
_THRESHOLDS = gc.get_threshold()


def collect_rarely_during_start_up() -> None:
    """Kedro, MLflow and torch create about 750k objects while they are imported, all
    of which live until the process ends. With Python's default thresholds the
    collector walks the growing heap about seven times while they load: about a
    second of every kedro command (0.7 s of ``import mlflow`` alone). Collecting
    150 times less often until :class:`GarbageCollectionHook` freezes them saves
    most of it; the settings call this first thing."""
    gc.set_threshold(*START_UP_THRESHOLDS)


class GarbageCollectionHook:
    """Takes the objects of start-up out of the garbage collector's scans.

    Every full collection would walk them again, which costs over a second in a
    short run, and once more when the process exits. Once they are frozen, the
    collector goes back to its usual thresholds for what the run creates.
    """

    @hook_impl
    def before_pipeline_run(self) -> None:
        gc.freeze()
        gc.set_threshold(*_THRESHOLDS)
        atexit.register(gc.freeze)
