"""A CSV or Parquet table of image paths and labels, of image paths and mask paths for
segmentation, or of boxes for detection, one row each (the catalog's ``raw_manifest``)."""

from __future__ import annotations

import json

import pandas as pd

from kedro_torch.pytorch import data
from kedro_torch.pytorch.config import DataConfig, ParameterError
from kedro_torch.pytorch.sources.base import Source


class ManifestSource(Source):
    entry = "raw_manifest"

    def ingest(self, loaded: data.ImageTable | None, config: DataConfig) -> pd.DataFrame:
        table = self.given(loaded, config, "images.csv")
        columns = config.manifest
        kind = _samples_kind(config)
        if kind == "segmentation":
            return data.pairs_from_table(table, columns.path_column, columns.mask_column)
        if kind == "detection":
            return data.boxes_from_table(table, columns.path_column, columns.label_column,
                                         columns.box_columns)
        return data.manifest_from_table(table, columns.path_column, columns.label_column)

    def judge(self, loaded: data.ImageTable, config: DataConfig, name: str | None) -> None:
        """A table of pairs or boxes is judged by its columns here, its files by the task's
        check; a detection run without its classes is told the labels to name."""
        kind = _samples_kind(config)
        if kind == "segmentation":
            self.ingest(loaded, config)
        elif kind == "detection":
            manifest = self.ingest(loaded, config)
            if not config.detection.classes:
                labels = sorted({box[0] for boxes in manifest["boxes"]
                                 for box in json.loads(boxes)})
                raise ParameterError(
                    "data.detection.classes is required: the model's classes, in the order "
                    f"it numbers them. The labels of the table: {json.dumps(labels)}")
        else:
            data.judge_table(loaded, config, name)


def _samples_kind(config: DataConfig) -> str:
    from kedro_torch.pytorch import tasks  # noqa: PLC0415 (tasks import the sources)

    return tasks.get(config.task).samples_kind
