"""The export pipeline: the trained model as TorchScript and as a torch.export program."""

from kedro_torch.pipelines.export.pipeline import create_pipeline

__all__ = ["create_pipeline"]
