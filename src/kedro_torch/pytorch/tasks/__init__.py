"""The tasks, by the name ``data.task`` gives them.

A task is one module with a :class:`~kedro_torch.pytorch.tasks.base.Task` subclass:
what a sample, a target, a step and the metrics are (for the loop), and how its data
is prepared and fed, its model built, evaluated and described for inference. Adding
one is a new module and one line in :data:`REGISTRY`. Modules are imported when
their task is asked for, so the loop, which knows only the base class, imports none.
"""

from __future__ import annotations

import importlib

from kedro_torch.pytorch.config import ParameterError
from kedro_torch.pytorch.tasks.base import Spec, Task

REGISTRY: dict[str, str] = {
    "image_classification": "kedro_torch.pytorch.tasks.image_classification:ImageClassification",
    "tabular_classification": "kedro_torch.pytorch.tasks.tabular:TabularClassification",
    "tabular_regression": "kedro_torch.pytorch.tasks.tabular:TabularRegression",
    "semantic_segmentation": "kedro_torch.pytorch.tasks.segmentation:SemanticSegmentation",
    "object_detection": "kedro_torch.pytorch.tasks.detection:ObjectDetection",
}


def get(name: str, key: str = "data.task") -> type[Task]:
    """The task class registered as ``name``."""
    if name not in REGISTRY:
        raise ParameterError(f"{key}: unknown task {name!r}. Valid: {', '.join(REGISTRY)}")
    module, cls = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)


def create(name: str, preprocessing: dict | None = None) -> Task:
    """The task, knowing the fitted preprocessing where its figures need it (a
    regression reports errors in the target's own units)."""
    return get(name)(preprocessing or {})


def load_spec(values: dict) -> Spec:
    """A saved ``model_spec.json`` as its task's spec (image classification's when it
    names no task, as specs written before tasks existed do)."""
    return get(values.get("task", "image_classification"), "model_spec.task").spec_type.from_dict(
        values)


def monitors() -> tuple[str, ...]:
    """Every metric some task's epoch rows hold (``training.monitor``, ``tuning.metric``)."""
    return tuple(dict.fromkeys(m for name in REGISTRY for m in get(name).monitors()))


def mode(metric: str) -> str:
    """Whether ``metric`` (``val_accuracy``, ``train_rmse``, ...) is better low or high."""
    name = metric.split("_", 1)[-1]
    for task in REGISTRY:
        if name in get(task).epoch_metrics:
            return get(task).epoch_metrics[name]
    return "min"  # losses
