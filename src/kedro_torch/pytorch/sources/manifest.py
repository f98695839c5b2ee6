"""A CSV or Parquet table of image paths and labels (the catalog's ``raw_manifest``)."""

from __future__ import annotations

import pandas as pd

from kedro_torch.pytorch import data
from kedro_torch.pytorch.config import DataConfig
from kedro_torch.pytorch.sources.base import Source


class ManifestSource(Source):
    entry = "raw_manifest"

    def ingest(self, loaded: data.ImageTable | None, config: DataConfig) -> pd.DataFrame:
        return data.manifest_from_table(self.given(loaded, config, "images.csv"),
                                        config.manifest.path_column,
                                        config.manifest.label_column)

    def judge(self, loaded: data.ImageTable, config: DataConfig, name: str | None) -> None:
        data.judge_table(loaded, config, name)
