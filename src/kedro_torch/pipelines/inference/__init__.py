"""The inference pipeline: every image in a folder, predicted by the trained model."""

from kedro_torch.pipelines.inference.pipeline import create_pipeline

__all__ = ["create_pipeline"]
