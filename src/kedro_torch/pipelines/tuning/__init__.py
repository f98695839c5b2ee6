"""The tuning pipeline: the training pipeline's data stages, then an Optuna study."""

from kedro_torch.pipelines.tuning.pipeline import create_pipeline

__all__ = ["create_pipeline"]
