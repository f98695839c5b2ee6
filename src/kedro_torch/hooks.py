"""Project hooks."""

from __future__ import annotations

import atexit
import gc
import logging
import subprocess
import warnings
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import torch
from kedro.framework.context import KedroContext
from kedro.framework.hooks import hook_impl
from kedro.io import AbstractVersionedDataset, DataCatalog
from kedro.pipeline import Pipeline
from kedro.pipeline.node import Node
from kedro_mlflow.framework.hooks import MlflowHook
from mlflow import MlflowClient
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

from kedro_torch.pytorch import engine, loaders, models
from kedro_torch.pytorch import optimizers as optimization
from kedro_torch.pytorch.config import (
    DataConfig,
    EvaluationConfig,
    ExportConfig,
    InferenceConfig,
    MlflowConfig,
    ModelConfig,
    TrainingConfig,
    parse,
)
from kedro_torch.pytorch.distributed import is_main_process

logger = logging.getLogger(__name__)

SECTIONS = {"data": DataConfig, "model": ModelConfig, "training": TrainingConfig}
SECTIONS |= {"evaluation": EvaluationConfig, "mlflow": MlflowConfig,
             "inference": InferenceConfig, "export": ExportConfig}


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
        names = [
            (training.optimizer.name, optimization.optimizer_classes(), "optimizer.name"),
            (training.optimizer.fallback.name, optimization.optimizer_classes(),
             "optimizer.fallback.name"),
            (training.scheduler.name, optimization.scheduler_classes(), "scheduler.name"),
            (training.loss.name, optimization.loss_classes(), "loss.name"),
        ]
        for name, registry, key in names:
            if name is not None:
                optimization.resolve(name, registry, f"training.{key}")


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


class BatchedParamsMlflowHook(MlflowHook):
    """kedro-mlflow's hook, logging the parameters of each node in one batch.

    kedro-mlflow logs each flattened parameter a node takes with a
    ``mlflow.log_param`` call of its own, a database transaction each, and again
    for every node that takes the same section: about 280 transactions, 0.4 s,
    for the training pipeline. Here a node's parameters go in one ``log_params``
    call, without those the run already holds. Everything else, including how
    over-long values are treated (``long_params_strategy``), is kedro-mlflow's.
    settings.py registers this hook in place of the plugin's own.
    """

    def __init__(self) -> None:
        super().__init__()
        self._pending: dict[str, Any] | None = None
        self._logged: dict[str, str] = {}

    @hook_impl
    def before_pipeline_run(
        self, run_params: dict[str, Any], pipeline: Pipeline, catalog: DataCatalog
    ) -> None:
        self._logged = {}
        super().before_pipeline_run(run_params, pipeline, catalog)

    @hook_impl
    def before_node_run(
        self, node: Node, catalog: DataCatalog, inputs: dict[str, Any], is_async: bool
    ) -> None:
        self._pending = {}
        try:
            super().before_node_run(node, catalog, inputs, is_async)
            new = {name: value for name, value in self._pending.items()
                   if self._logged.get(name) != str(value)}
        finally:
            self._pending = None
        if new:
            mlflow.log_params(new)
            self._logged.update({name: str(value) for name, value in new.items()})

    def _log_param(self, name: str, value: Any) -> None:
        if self._pending is None or len(str(value)) > MAX_PARAM_VAL_LENGTH:
            super()._log_param(name, value)
        else:
            self._pending[name] = value


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
        if self._catalog is None or mlflow.active_run() is None or not is_main_process():
            return
        dataset = self._catalog.get(dataset_name)
        metadata = getattr(dataset, "metadata", None) or {}
        if metadata.get("mlflow_dataset_input"):
            log_dataset_input(dataset_name, data, str(getattr(dataset, "_filepath", "")))
        if not metadata.get("mlflow_artifact"):
            return
        if isinstance(dataset, AbstractVersionedDataset):
            path = dataset._get_load_path()  # the version just written
        else:
            path = dataset._filepath
        mlflow.log_artifact(str(path))


def log_dataset_input(name: str, table: pd.DataFrame, source: str) -> None:
    """Log a table as the run's training data, its digest computed without ``path``.

    Absolute paths say where the data sits, not what it is: the same images
    copied elsewhere keep their digest; other files, labels or splits change it.
    """
    content = table.drop(columns=["path"], errors="ignore")
    with warnings.catch_warnings():
        # MLflow's dataset helpers warn that a local path is ambiguous (they register
        # its source type twice), that integer columns cannot hold missing values and
        # about pandas 4 call styles: none of it concerns this table.
        warnings.filterwarnings("ignore", module="mlflow")
        dataset = mlflow.data.from_pandas(content, source=source, name=name)
        mlflow.log_input(dataset, context="training")


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
        run = mlflow.active_run()
        if run is None or self._context is None or not is_main_process():
            return
        parameters = catalog.load("parameters")
        mlflow_config = getattr(self._context, "mlflow", None)
        if mlflow_config is None or mlflow_config.tracking.run.name is None:
            MlflowClient().update_run(run.info.run_id, name=run_name(parameters))
        commit, dirty = git_state(Path(run_params["project_path"]))
        pipelines = run_params.get("pipeline_names") or ["__default__"]
        tags = {
            "git_commit": commit,
            "git_dirty": dirty,
            "kedro_env": run_params.get("env") or self._context.config_loader.default_run_env,
            "pipeline": "+".join(pipelines),
        }
        if commit != "unknown":
            tags["mlflow.source.git.commit"] = commit  # shown in the run's overview
        if {"params:training", "params:model"} & pipeline.inputs():
            tags.update(device_tags(parameters.get("training")))
        mlflow.set_tags(tags)
        mlflow.log_dict(parameters, "parameters.yml")
        interval = parse(MlflowConfig, parameters.get("mlflow"), "mlflow").system_metrics_interval
        if interval is not None:
            self._monitor = SystemMetricsMonitor(run.info.run_id, sampling_interval=interval)
            self._monitor.start()

    @hook_impl(tryfirst=True)
    def after_pipeline_run(self) -> None:
        self._stop_monitor()

    @hook_impl(tryfirst=True)
    def on_pipeline_error(self) -> None:
        self._stop_monitor()

    def _stop_monitor(self) -> None:
        if self._monitor is not None:
            self._monitor.finish()  # logs what it holds, while the run is still open
            self._monitor = None


def run_name(parameters: dict[str, Any]) -> str:
    """``<model>-<optimizer>-lr<lr>``, from the parameters that differ most between runs."""
    model = parse(ModelConfig, parameters.get("model"), "model")
    optimizer = parse(TrainingConfig, parameters.get("training"), "training").optimizer
    parts = [model.name, optimizer.name]
    if "lr" in optimizer.kwargs:
        parts.append(f"lr{optimizer.kwargs['lr']}")
    return "-".join(str(part) for part in parts)


def git_state(project_path: Path) -> tuple[str, str]:
    """The commit checked out and whether the tree differs from it ("true"/"false");
    ``("unknown", "unknown")`` outside a git repository or without git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project_path, check=True,
                                capture_output=True, text=True, timeout=10).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain"], cwd=project_path, check=True,
                                capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown", "unknown"
    return commit, str(bool(status.strip())).lower()


def device_tags(training_params: dict[str, Any] | None) -> dict[str, str]:
    """The device ``training.device`` resolves to here, and the GPU's name if one."""
    device = engine.resolve_device(parse(TrainingConfig, training_params, "training").device)
    tags = {"device": device.type}
    if device.type == "cuda":
        tags["device_name"] = torch.cuda.get_device_name(device)
    return tags
