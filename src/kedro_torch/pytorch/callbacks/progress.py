"""A rich progress bar over epochs and batches, as a training callback."""

from __future__ import annotations

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from kedro_torch.pytorch.callbacks.base import Callback


class RichProgressBar(Callback):
    """Two bars: epochs, and batches within the current epoch.

    The bar advances every few batches rather than every batch, so drawing it
    costs nothing measurable next to a training step.
    """

    def __init__(self, refresh_per_second: float = 4):
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[metrics]}"),
            refresh_per_second=refresh_per_second,
            transient=False,
        )
        self._epochs = self._batches = None

    def on_fit_start(self, epochs: int, batches_per_epoch: int, first_epoch: int) -> None:
        self._progress.start()
        self._epochs = self._progress.add_task(
            "epochs", total=epochs, completed=first_epoch - 1, metrics=""
        )
        self._batches = self._progress.add_task(
            "batches", total=batches_per_epoch, metrics=""
        )

    def on_batch_end(self) -> None:
        self._progress.advance(self._batches)

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        shown = " ".join(
            f"{name}={value:.4f}" for name, value in metrics.items() if name != "epoch"
        )
        self._progress.update(self._epochs, advance=1, metrics=shown)
        self._progress.reset(self._batches)

    def on_fit_end(self) -> None:
        self._progress.stop()
