"""A ``torchvision.datasets`` class read from a local root (``data.torchvision``)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from kedro_torch.pytorch.config import DataConfig
from kedro_torch.pytorch.sources.base import Source
from kedro_torch.pytorch.torchvision_data import TorchvisionSamples


class TorchvisionSource(Source):
    def ingest(self, loaded: None, config: DataConfig) -> pd.DataFrame:
        return self.samples(config).manifest()

    def samples(self, config: DataConfig) -> TorchvisionSamples:
        from kedro_torch.pytorch import tasks  # noqa: PLC0415 (tasks import the sources)

        return TorchvisionSamples(config.torchvision, tasks.get(config.task).samples_kind)

    def describe(self, config: DataConfig) -> dict[str, Any]:
        return self.samples(config).describe()

    def open(self, config: DataConfig) -> None:
        self.samples(config).open()  # its root and splits, read once

    def location(self, config: DataConfig) -> str:
        dataset = f"torchvision.datasets.{config.torchvision.name}"
        root = config.torchvision.root
        return f"{dataset} in {root}" if root else dataset
