"""The training pipeline: raw images to a trained, evaluated, tracked model."""

from kedro_torch.pipelines.training.pipeline import create_pipeline

__all__ = ["create_pipeline"]
