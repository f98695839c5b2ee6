"""A CSV or Parquet table of image paths and labels, or of image paths and mask paths
for segmentation (the catalog's ``raw_manifest``)."""

from __future__ import annotations

import pandas as pd

from kedro_torch.pytorch import data
from kedro_torch.pytorch.config import DataConfig
from kedro_torch.pytorch.sources.base import Source


class ManifestSource(Source):
    entry = "raw_manifest"

    def ingest(self, loaded: data.ImageTable | None, config: DataConfig) -> pd.DataFrame:
        table = self.given(loaded, config, "images.csv")
        columns = config.manifest
        if _of_pairs(config):
            return data.pairs_from_table(table, columns.path_column, columns.mask_column)
        return data.manifest_from_table(table, columns.path_column, columns.label_column)

    def judge(self, loaded: data.ImageTable, config: DataConfig, name: str | None) -> None:
        """A table of pairs is judged by its columns here, its files by the pair check."""
        if _of_pairs(config):
            self.ingest(loaded, config)
        else:
            data.judge_table(loaded, config, name)


def _of_pairs(config: DataConfig) -> bool:
    from kedro_torch.pytorch import tasks  # noqa: PLC0415 (tasks import the sources)

    return tasks.get(config.task).samples_kind == "segmentation"
