"""What a data source is to the pipeline."""

from __future__ import annotations

from typing import Any, ClassVar

import pandas as pd

from kedro_torch.pytorch import images


class Source:
    """Where a run's samples come from; override what differs."""

    # The catalog entry the source reads (None: it reads none), and the one the
    # inference pipeline predicts for data of its kind.
    entry: ClassVar[str | None] = None
    inference_entry: ClassVar[str] = "inference_images"

    def ingest(self, loaded: Any, config: Any) -> pd.DataFrame:
        """What the catalog entry loaded -> the table of samples the task prepares."""
        raise NotImplementedError

    def given(self, loaded: Any, config: Any, example: str) -> Any:
        """What the source's catalog entry loaded; an entry whose path nobody set loads
        None, refused with the two ways to set it (``example``: a file name to show)."""
        if loaded is None:
            raise ValueError(
                f"data.source is {config.source!r} but the catalog entry {self.entry!r} loaded "
                f"nothing: pass it at run time (--params {self.entry}_path={example}) or set "
                "the entry in conf/local/catalog.yml"
            )
        return loaded

    def samples(self, config: Any) -> images.ImageSource:
        """What reads the images a manifest names: files by default."""
        return images.FILES

    def describe(self, config: Any) -> dict[str, Any]:
        """Where the samples came from, for the data-quality report."""
        return {"type": config.source}

    def judge(self, loaded: Any, config: Any, name: str | None) -> None:
        """Refuse, before the run starts, what the run could not use (a
        :class:`~kedro_torch.pytorch.data.DataError` naming every problem); ``name`` is
        where it was read from, as the user would write it."""

    def open(self, config: Any) -> None:
        """Check, before the run, that what the source reads by itself (not through a
        catalog entry) is there."""

    def location(self, config: Any) -> str | None:
        """Where the samples are read from, when no catalog entry says it."""
        return None
