"""Parameters checked as a whole before any work starts: the sections' keys and types,
and every name that a registry resolves (transforms, models, optimizers, schedulers,
losses), so a typo fails in a second rather than after the data is read."""

from __future__ import annotations

from typing import Any

from kedro_torch.pytorch import loaders, models
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
