"""The training pipeline's nodes: parameters to config objects, config objects to the
plain training API (:mod:`kedro_torch.pytorch.api`), results to the catalog.

Each node reads only the parameter sections it needs, through
:func:`~kedro_torch.pytorch.config.parse`, so a mistyped key fails with its YAML name.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from kedro_torch.pytorch import api, data, sources, tasks
from kedro_torch.pytorch.cache import ImageStore
from kedro_torch.pytorch.checkpoints import CheckpointStore
from kedro_torch.pytorch.config import (
    DataConfig,
    EvaluationConfig,
    InferenceConfig,
    MlflowConfig,
    ModelConfig,
    TrainingConfig,
    parse,
)
from kedro_torch.tracking.callbacks import MlflowEpochLogger


def ingest(
    image_folder: pd.DataFrame, image_table: data.ImageTable | None,
    raw_table: pd.DataFrame | None, data_params: dict[str, Any]
) -> pd.DataFrame:
    """Folder listing, image table, torchvision dataset or a table of samples
    (``data.source``) -> the manifest of images, or the table."""
    config = parse(DataConfig, data_params, "data")
    source = sources.get(config.source)
    loaded = {"raw_images": image_folder, "raw_manifest": image_table, "raw_table": raw_table}
    return source.ingest(loaded.get(source.entry), config)


def prepare_model_input(
    manifest: pd.DataFrame, previous_image_cache: ImageStore, data_params: dict[str, Any]
) -> tuple[pd.DataFrame, dict[str, int], dict, dict, ImageStore, ImageStore]:
    """Check every sample once, set unusable ones aside, encode targets, split, and fit
    the preprocessing on the training split.

    Returns the model input, the label map, the preprocessing (images' normalization,
    a table's coding), the data-quality report, the decoded images for the DataLoaders
    (``data.cache``) and the on-disk cache to save (left as it was unless
    ``data.cache`` is disk).
    """
    prepared = api.prepare_data(manifest, parse(DataConfig, data_params, "data"),
                                previous_image_cache)
    return (prepared.model_input, prepared.label_map, prepared.preprocessing, prepared.report,
            prepared.images, prepared.on_disk)


def build_dataloaders(
    model_input: pd.DataFrame,
    preprocessing: dict,
    decoded_images: ImageStore,
    data_params: dict[str, Any],
    training_params: dict[str, Any],
) -> dict[str, DataLoader]:
    """One loader per split; image loaders read decoded images from the store where it
    has them."""
    training = parse(TrainingConfig, training_params, "training")
    return api.build_loaders(model_input, preprocessing, parse(DataConfig, data_params, "data"),
                             training.seed, images=decoded_images, device=training.device)


def build_model(
    label_map: dict[str, int],
    preprocessing: dict,
    data_params: dict[str, Any],
    model_params: dict[str, Any],
    training_params: dict[str, Any],
    pretrained_state_dict: dict[str, torch.Tensor] | None,
) -> nn.Module:
    """A fresh model by name, seeded, with pretrained tensors loaded where they fit."""
    config = parse(ModelConfig, model_params, "model")
    if config.pretrained_path and pretrained_state_dict is None:
        raise ValueError(
            "model.pretrained_path is set but the catalog entry 'pretrained_state_dict' "
            "loaded nothing: pass the path at run time (--params model.pretrained_path=...) "
            "or set the entry's filepath in conf/local/catalog.yml"
        )
    return api.build_model(config, parse(DataConfig, data_params, "data"), label_map,
                           preprocessing, parse(TrainingConfig, training_params, "training").seed,
                           pretrained_state_dict)


def train_model(
    model: nn.Module,
    dataloaders: dict[str, DataLoader],
    checkpoints: CheckpointStore,
    model_input: pd.DataFrame,
    label_map: dict[str, int],
    preprocessing: dict,
    data_params: dict[str, Any],
    model_params: dict[str, Any],
    training_params: dict[str, Any],
) -> tuple[dict[str, torch.Tensor], pd.DataFrame, dict]:
    """Fit the model; return the weights to keep, the per-epoch history, and the spec
    that rebuilds the model and its eval preprocessing, saved beside the weights."""
    data_config = parse(DataConfig, data_params, "data")
    model_config = parse(ModelConfig, model_params, "model")
    training = parse(TrainingConfig, training_params, "training")
    identity = api.training_identity(data_config, model_config, training, model_input)
    tracker = MlflowEpochLogger()
    task = tasks.create(data_config.task, preprocessing)
    result = api.fit(model, dataloaders, training, num_classes=len(label_map),
                     model_config=model_config, callbacks=[tracker],
                     checkpoints=api.checkpoints_for(checkpoints, identity, training),
                     checkpoint_tags=tracker.checkpoint_tags, task=task)
    spec = task.spec(model_config, data_config, preprocessing)
    return result.state_dict, pd.DataFrame(result.history), spec.to_dict()


def evaluate_model(
    state_dict: dict[str, torch.Tensor],
    model_spec: dict[str, Any],
    model_input: pd.DataFrame,
    label_map: dict[str, int],
    history: pd.DataFrame,
    image_cache: ImageStore,
    data_params: dict[str, Any],
    training_params: dict[str, Any],
    evaluation_params: dict[str, Any],
) -> dict[str, Any]:
    """The saved weights on the test split: the task's report, metrics, tables and
    figures. All read from saved files: ``--from-nodes evaluate`` reruns it."""
    evaluation = api.evaluate(
        state_dict, tasks.load_spec(model_spec), model_input, label_map,
        parse(EvaluationConfig, evaluation_params, "evaluation"),
        data_config=parse(DataConfig, data_params, "data"), history=history.to_dict("records"),
        images=image_cache, device=parse(TrainingConfig, training_params, "training").device,
    )
    metrics = {name: {"value": value, "step": 0} for name, value in evaluation.metrics.items()}
    return {"report": evaluation.report, "metrics": metrics,
            "predictions": evaluation.predictions, "per_class": evaluation.per_class,
            "plots": {f"{name}.png": figure for name, figure in evaluation.figures.items()}}


def package_model(
    state_dict: dict[str, torch.Tensor],
    model_spec: dict[str, Any],
    label_map: dict[str, int],
    evaluation_report: dict,
    model_input: pd.DataFrame,
    inference_params: dict[str, Any],
    mlflow_params: dict[str, Any],
) -> dict[str, Any]:
    """The saved model with what serving it needs, for the MLflow model registry."""
    inference = parse(InferenceConfig, inference_params, "inference")
    spec = tasks.load_spec(model_spec)
    task = tasks.create(spec.task, getattr(spec, "preprocessing", None))
    return {
        "state_dict": state_dict,
        "model_spec": model_spec,
        "label_map": label_map,
        "top_k": inference.top_k,
        "batch_size": inference.batch_size,
        "registered_model_name": parse(MlflowConfig, mlflow_params, "mlflow")
        .registered_model_name,
        "metrics": task.test_metrics(evaluation_report),
        "input_example": task.input_example(model_input),
    }
