"""What the project's hooks (:mod:`kedro_torch.tracking.hooks`) write to the run
kedro-mlflow opened: its name, tags, resolved parameters and system metrics, the
files of catalog entries marked for it and the run's dataset input."""

from __future__ import annotations

import logging
import signal
import subprocess
import warnings
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import torch
from kedro.framework.context import KedroContext
from kedro.io import AbstractVersionedDataset, DataCatalog
from kedro.pipeline import Pipeline
from mlflow import MlflowClient
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

from kedro_torch.pytorch import distributed, engine
from kedro_torch.pytorch.config import (
    DataConfig,
    MlflowConfig,
    ModelConfig,
    TrainingConfig,
    parse,
)
from kedro_torch.pytorch.distributed import is_main_process
from kedro_torch.pytorch.interrupts import Interrupted, TrainingInterrupted
from kedro_torch.tracking import outbox

logger = logging.getLogger(__name__)


def describe_run(
    context: KedroContext,
    run_params: dict[str, Any],
    pipeline: Pipeline,
    catalog: DataCatalog,
) -> SystemMetricsMonitor | None:
    """Name and tag the active run, log ``parameters.yml`` and start sampling system
    metrics; returns the monitor to finish before the run ends, if one was started.

    Only the main process writes, and only to a run kedro-mlflow opened.
    """
    run = mlflow.active_run()
    if run is None or not is_main_process():
        return None
    parameters = catalog.load("parameters")
    mlflow_config = getattr(context, "mlflow", None)
    client = MlflowClient()
    if mlflow_config is None or mlflow_config.tracking.run.name is None:
        client.update_run(run.info.run_id, name=run_name(parameters, run.info.run_id[:6]))
    mark_experiment_kind(client, run.info.experiment_id)
    commit, dirty = git_state(Path(run_params["project_path"]))
    pipelines = run_params.get("pipeline_names") or ["__default__"]
    tags = {
        "git_commit": commit,
        "git_dirty": dirty,
        "kedro_env": run_params.get("env") or context.config_loader.default_run_env,
        "pipeline": "+".join(pipelines),
    }
    if commit != "unknown":
        tags["mlflow.source.git.commit"] = commit  # shown in the run's overview
    if {"params:training", "params:model"} & pipeline.inputs():
        tags.update(device_tags(parameters.get("training"), parameters.get("data")))
    mlflow.set_tags(tags)
    mlflow.log_dict(parameters, "parameters.yml")
    interval = parse(MlflowConfig, parameters.get("mlflow"), "mlflow").system_metrics_interval
    if interval is None:
        return None
    monitor = SystemMetricsMonitor(run.info.run_id, sampling_interval=interval)
    monitor.start()
    return monitor


def log_saved_dataset(catalog: DataCatalog, dataset_name: str, data: Any) -> None:
    """Log what a save wrote, as its catalog entry's metadata asks: the file
    (``mlflow_artifact``; a folder, such as a dict of figures, as a folder of its name),
    the table as the run's dataset input (``mlflow_dataset_input``); through the run's
    outbox (:mod:`kedro_torch.tracking.outbox`)."""
    if mlflow.active_run() is None or not is_main_process():
        return
    dataset = catalog.get(dataset_name)
    metadata = getattr(dataset, "metadata", None) or {}
    if metadata.get("mlflow_dataset_input"):
        source = str(getattr(dataset, "_filepath", ""))
        outbox.send({"kind": "dataset_input", "name": dataset_name, "table": data,
                     "file": source, "source": source})
    if not metadata.get("mlflow_artifact"):
        return
    if isinstance(dataset, AbstractVersionedDataset):
        path = dataset._get_load_path()  # the version just written
    else:
        path = dataset._filepath
    outbox.send({"kind": "artifact", "file": str(path)})


def log_dataset_input(name: str, table: pd.DataFrame, source: str) -> None:
    """Log a table as the active run's training data, its digest computed without ``path``.

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


def run_name(parameters: dict[str, Any], suffix: str = "") -> str:
    """``<model>-<optimizer>-lr<lr>-<epochs>ep-<suffix>``: the parameters that differ most
    between runs, then ``suffix`` (the start of the run id), which tells apart runs
    that differ elsewhere (a seed, the data) in the runs table."""
    model = parse(ModelConfig, parameters.get("model"), "model")
    training = parse(TrainingConfig, parameters.get("training"), "training")
    parts = [model.name, training.optimizer.name]
    if "lr" in training.optimizer.kwargs:
        parts.append(f"lr{training.optimizer.kwargs['lr']}")
    parts.append(f"{training.epochs}ep")
    if suffix:
        parts.append(suffix)
    return "-".join(str(part) for part in parts)


# The MLflow UI opens an experiment without this tag on its GenAI overview (traces,
# token usage); with it, on the table of training runs.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


def mark_experiment_kind(client: MlflowClient, experiment_id: str) -> None:
    """Tag the experiment as one of model training, unless it already says what it is."""
    key, value = EXPERIMENT_KIND
    if key not in client.get_experiment(experiment_id).tags:
        client.set_experiment_tag(experiment_id, key, value)


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


def device_tags(training_params: dict[str, Any] | None,
                data_params: dict[str, Any] | None = None) -> dict[str, str]:
    """The device ``training.device`` resolves to here, and the GPU's name if one; how
    many processes train and how (strategy, world_size, backend, nodes,
    processes_per_node), and the global batch they take together."""
    training = parse(TrainingConfig, training_params, "training")
    device = engine.resolve_device(training.device)
    tags = {"device": device.type}
    if device.type == "cuda":
        tags["device_name"] = torch.cuda.get_device_name(device)
    plan = distributed.plan(training, device)
    batch_size = parse(DataConfig, data_params, "data").batch_size
    return tags | plan.tags() | {"global_batch_size": str(batch_size * plan.world_size)}


def ending(error: Exception) -> list[dict[str, Any]]:
    """How a run that ``error`` stopped ended, as outbox records: KILLED, with where it
    stopped and what resumes it, for a signal (SIGTERM, SIGINT); FAILED otherwise."""
    if not isinstance(error, Interrupted):
        return [{"kind": "end", "status": "FAILED"}]
    tags = {"interrupted_by": signal.Signals(error.signum).name}
    if isinstance(error, TrainingInterrupted):
        tags |= {"interrupted_epoch": str(error.epoch), "interrupted_batch": str(error.batch),
                 "resume_checkpoint": str(error.checkpoint)}
    return [{"kind": "tags", "values": tags}, {"kind": "end", "status": "KILLED"}]


def mark_interrupted(run_id: str, error: Interrupted) -> None:
    """Record a run stopped by a signal as KILLED, with where it stopped and what
    resumes it; kedro-mlflow, which sees only an error, has just marked it FAILED.
    A model version the run registered before the signal came is deleted: a stopped
    run's model is no candidate for serving."""
    for record in ending(error):
        outbox.apply(run_id, record)
    client = MlflowClient()
    for version in client.search_model_versions(f"run_id = '{run_id}'"):
        client.delete_model_version(version.name, version.version)
        logger.warning("Deleted version %s of model %s: the run that registered it was "
                       "interrupted", version.version, version.name)
