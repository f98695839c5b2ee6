"""What a finished run tells its reader: a Markdown description on the MLflow run (its
``mlflow.note.content``, shown on the run's page) and a few lines at the end of the
console output saying how good the model is and where everything went."""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any

import mlflow
from kedro.framework.context import KedroContext
from kedro.io import AbstractVersionedDataset, DataCatalog
from kedro.pipeline import Pipeline
from mlflow import MlflowClient
from mlflow.entities import Run

from kedro_torch.pytorch import sources, tasks
from kedro_torch.pytorch.config import DataConfig, ModelConfig, TrainingConfig, parse
from kedro_torch.tracking import store

TRAINING_VIEW = "workflowType=machine_learning"


def describe_outcome(
    run_id: str,
    context: KedroContext,
    run_params: dict[str, Any],
    pipeline: Pipeline,
    catalog: DataCatalog,
) -> str:
    """Write the run's description and return the console summary.

    Both are written when the pipeline has finished: the description holds the
    result, and the data's counts are known only once its files were checked.
    """
    client = MlflowClient()
    run = client.get_run(run_id)
    parameters = context.params
    # Loaded from the datasets, not through the catalog, which would log each load.
    outputs = pipeline.all_outputs()
    quality = (catalog.get("data_quality_report").load()
               if "data_quality_report" in outputs else None)
    note = run_note(parameters, run.data.metrics, quality, input_location(catalog, parameters))
    client.set_tag(run_id, "mlflow.note.content", note)
    return console_summary(client, run, context, run_params, pipeline, catalog)


def run_note(parameters: dict[str, Any], metrics: dict[str, float],
             quality: dict[str, Any] | None, source: str | None) -> str:
    """The run in a few Markdown lines: data, model, main parameters, result."""
    data = parse(DataConfig, parameters.get("data"), "data")
    model = parse(ModelConfig, parameters.get("model"), "model")
    training = parse(TrainingConfig, parameters.get("training"), "training")
    task = tasks.create(data.task)
    lines = []
    headline = [name for name in task.headline if name in metrics]
    if headline:
        said = ", ".join(f"{_said(name)} {metrics[name]:.4f}" for name in headline)
        result = f"**{said[0].upper()}{said[1:]}**"
        extras = [f"{_said(name).removeprefix('test ')} {value:.4f}"
                  for name, value in sorted(metrics.items())
                  if name.startswith("test_top") or name == "test_ece"]
        extras += [f"last {_said(name)} {metrics[name]:.4f}"
                   for name in task.monitors() if name.startswith("val_")
                   and name != "val_loss" and name in metrics]
        lines += [result + (f" ({', '.join(extras)})" if extras else ""), ""]
    if quality is not None:
        used, split_sizes, set_aside = task.data_note(quality, data)
        splits = " / ".join(f"{n} {s}" for s, n in split_sizes.items())
        lines.append(f"- **Data:** {used}" + (f" from `{source}`" if source else "")
                     + f" ({splits}); {set_aside}")
    lines.append(f"- **Input:** {task.input_note(data, quality)}, "
                 f"batch size {data.batch_size}")
    kwargs = ", ".join(f"{key}={value}" for key, value in model.kwargs.items())
    pretrained = f", from `{model.pretrained_path}`" if model.pretrained_path else ""
    lines.append(f"- **Model:** `{model.name}`" + (f" ({kwargs})" if kwargs else "")
                 + pretrained)
    optimizer = training.optimizer
    settings = ", ".join(f"{key}={value}" for key, value in optimizer.kwargs.items())
    scheduler = training.scheduler.name or "no scheduler"
    loss = training.loss.name or task.default_loss
    loss = f"`{loss}`" if loss else "the model's own losses"
    lines.append(f"- **Training:** {training.epochs} epochs, `{optimizer.name}` ({settings}), "
                 f"`{scheduler}`, {loss}, seed {training.seed}, "
                 f"precision {training.precision}")
    return "\n".join(lines)


def input_location(catalog: DataCatalog, parameters: dict[str, Any]) -> str | None:
    """Where the samples were read from: the folder, the table or the torchvision dataset
    (``data.source``)."""
    data = parse(DataConfig, parameters.get("data"), "data")
    source = sources.get(data.source)
    entry = source.entry
    if entry is None:
        return source.location(data)
    if entry not in catalog:
        return None
    described = catalog[entry]._describe()
    location = described.get("path") or described.get("filepath")
    return str(location) if location else None


def console_summary(client: MlflowClient, run: Run, context: KedroContext,
                    run_params: dict[str, Any], pipeline: Pipeline, catalog: DataCatalog
                    ) -> str:
    """Test accuracy, the run's name and id, how to open it and the pipeline, where its
    files are."""
    info = run.info
    lines = [f"Run {info.run_name} finished: MLflow run {info.run_id}"]
    task = tasks.create(parse(DataConfig, context.params.get("data"), "data").task)
    for name in task.headline:
        if name in run.data.metrics:
            lines.append(f"  {_said(name):<14} {run.data.metrics[name]:.4f}")
    hint = ui_hint(mlflow.get_tracking_uri(), Path(context.project_path), info.experiment_id,
                   info.run_id)
    lines.append(f"  see it         {hint}")
    lines.append("  pipeline       make viz")
    lines.append(f"  artifacts      {info.artifact_uri}")
    for version in client.search_model_versions(f"run_id = '{info.run_id}'"):
        champion = client.get_registered_model(version.name).aliases.get("champion")
        lines.append(f"  model          models:/{version.name}/{version.version} "
                     f"(models:/{version.name}@champion is version {champion})")
    folders = saved_folders(pipeline, catalog, Path(run_params.get("project_path") or "."))
    if folders:
        lines.append(f"  files          {', '.join(folders)} "
                     f"(version {run_params.get('run_id')})")
    return "\n".join(lines)


def _said(metric: str) -> str:
    """``test_accuracy`` as a reader says it: ``test accuracy``; R², RMSE, MAE, mIoU and
    mAP (``map50``: mAP@50) as they are written."""
    written = {"r2": "R²", "rmse": "RMSE", "mae": "MAE", "miou": "mIoU", "map": "mAP",
               "map50": "mAP@50", "map75": "mAP@75"}
    return " ".join(written.get(w, w) for w in metric.split("_"))


def ui_hint(tracking_uri: str, project: Path, experiment_id: str, run_id: str) -> str:
    """Where to see the run: its page on the tracking server, or the command that starts
    the MLflow UI on the store and the page it will serve.

    Commands use the project's virtualenv by path: after ``make run`` none is activated,
    and ``kedro mlflow ui`` starts ``mlflow`` from PATH. ``make ui`` opens the project's
    ``mlflow.db`` only, so another store gets the command that names it. Both listen on
    MLflow's port, 5000 unless ``MLFLOW_PORT`` says otherwise. The page asks for the
    UI's model-training view: MLflow 3.17's UI otherwise shows the GenAI view it last
    showed, whatever the experiment's kind.
    """
    page = f"#/experiments/{experiment_id}/runs/{run_id}?{TRAINING_VIEW}"
    if tracking_uri.startswith(("http://", "https://")):
        return f"{tracking_uri.rstrip('/')}/{page}"
    database = store.sqlite_file(tracking_uri)
    if database is not None and database.resolve() == (project / "mlflow.db").resolve():
        command = "make ui"
    else:
        command = f".venv/bin/mlflow ui --backend-store-uri {shlex.quote(tracking_uri)}"
    port = os.environ.get("MLFLOW_PORT") or "5000"
    return f"{command}, then http://127.0.0.1:{port}/{page}"


def saved_folders(pipeline: Pipeline, catalog: DataCatalog, project: Path) -> list[str]:
    """The folders of the versioned files this run wrote, relative to the project."""
    folders = set()
    for name in pipeline.all_outputs():
        dataset = catalog.get(name) if name in catalog else None
        if isinstance(dataset, AbstractVersionedDataset) and dataset._version is not None:
            folder = Path(str(dataset._filepath)).parent
            folders.add(str(folder.relative_to(project) if folder.is_relative_to(project)
                            else folder))
    return sorted(folders)
