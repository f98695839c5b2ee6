"""A table of samples: any catalog entry that loads a pandas DataFrame (``raw_table``)."""

from __future__ import annotations

import pandas as pd

from kedro_torch.pytorch import tables
from kedro_torch.pytorch.config import DataConfig
from kedro_torch.pytorch.data import DataError
from kedro_torch.pytorch.sources.base import Source


class TableSource(Source):
    entry = "raw_table"
    inference_entry = "inference_table"

    def ingest(self, loaded: pd.DataFrame | None, config: DataConfig) -> pd.DataFrame:
        loaded = self.given(loaded, config, "table.csv")
        if not isinstance(loaded, pd.DataFrame):
            raise ValueError(f"data.source is 'table' but the catalog entry 'raw_table' "
                             f"loaded a {type(loaded).__name__}, not a pandas DataFrame")
        return loaded

    def judge(self, loaded: pd.DataFrame | None, config: DataConfig, name: str | None) -> None:
        """The columns the parameters name must be in the table, before the run starts."""
        table = self.ingest(loaded, config)
        columns = config.table
        tables.infer_columns(table, columns.target, columns.drop, columns.numeric,
                             columns.categorical)
        group = config.split.group_column
        if group is not None and group not in table.columns:
            raise DataError(f"data.split.group_column: the table has no column {group!r}")
