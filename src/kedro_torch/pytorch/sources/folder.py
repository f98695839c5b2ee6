"""A folder of images, one subfolder per class (the catalog's ``raw_images``)."""

from __future__ import annotations

import pandas as pd

from kedro_torch.pytorch import data
from kedro_torch.pytorch.config import DataConfig
from kedro_torch.pytorch.sources.base import Source


class FolderSource(Source):
    entry = "raw_images"

    def ingest(self, loaded: pd.DataFrame, config: DataConfig) -> pd.DataFrame:
        return data.manifest_from_listing(loaded)

    def judge(self, loaded: pd.DataFrame, config: DataConfig, name: str | None) -> None:
        data.judge_folder(loaded, config)
