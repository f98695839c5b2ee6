"""Project hooks."""

from __future__ import annotations

from typing import Any

import mlflow
from kedro.framework.hooks import hook_impl
from kedro.io import AbstractVersionedDataset, DataCatalog
from kedro.pipeline import Pipeline

from kedro_torch import loaders, models, optimisation
from kedro_torch.config import DataConfig, ModelConfig, TrainingConfig, parse
from kedro_torch.distributed import is_main_process

SECTIONS = {"data": DataConfig, "model": ModelConfig, "training": TrainingConfig}


def validate_parameters(parameters: dict[str, Any], sections: set[str]) -> None:
    """Check the named sections' keys, types and registry names; raise on the first error."""
    configs = {
        name: parse(SECTIONS[name], parameters.get(name), name) for name in sorted(sections)
    }
    if "data" in configs:
        specs = configs["data"].transforms
        for stage in ("train", "eval", "train_batch"):
            pairs = [(spec.name, spec.kwargs) for spec in getattr(specs, stage)]
            loaders.build_transforms(pairs, f"data.transforms.{stage}")
    if "model" in configs:
        models.check_model_name(configs["model"].name)
    if "training" in configs:
        training = configs["training"]
        optimisation.resolve(
            training.optimizer.name, optimisation.optimizer_classes(), "training.optimizer.name"
        )
        if training.scheduler.name is not None:
            optimisation.resolve(
                training.scheduler.name, optimisation.scheduler_classes(),
                "training.scheduler.name",
            )
        optimisation.resolve(training.loss.name, optimisation.loss_classes(), "training.loss.name")


class ParameterValidationHook:
    """Validates parameters before the pipeline starts (and before MLflow opens a run).

    ``tryfirst`` puts this ahead of kedro-mlflow's own ``before_pipeline_run``, so
    a typo never leaves an empty MLflow run behind.
    """

    @hook_impl(tryfirst=True)
    def before_pipeline_run(
        self, run_params: dict[str, Any], pipeline: Pipeline, catalog: DataCatalog
    ) -> None:
        used = {name.removeprefix("params:") for name in pipeline.inputs()}
        sections = used & set(SECTIONS)
        if sections:
            validate_parameters(catalog.load("parameters"), sections)


class MlflowArtifactHook:
    """Logs the file of every catalog entry marked ``metadata: {mlflow_artifact: true}``.

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
        if self._catalog is None or mlflow.active_run() is None or not is_main_process():
            return
        dataset = self._catalog.get(dataset_name)
        if not (getattr(dataset, "metadata", None) or {}).get("mlflow_artifact"):
            return
        if isinstance(dataset, AbstractVersionedDataset):
            path = dataset._get_load_path()  # the version just written
        else:
            path = dataset._filepath
        mlflow.log_artifact(str(path))
