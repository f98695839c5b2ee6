"""The best epoch by a monitored metric: kept (``training.keep_best``), and with
``training.early_stopping.patience`` the point to stop after."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Literal

import torch

from kedro_torch.pytorch.callbacks.base import Callback
from kedro_torch.pytorch.checkpoints import BEST_FILE

if TYPE_CHECKING:
    from kedro_torch.pytorch.engine import Trainer

logger = logging.getLogger(__name__)


class EarlyStopping(Callback):
    """Keeps the weights of the epoch whose ``monitor`` was best and hands them back at
    the end instead of the last epoch's; with ``patience``, stops training once that
    many epochs in a row have not improved on it by more than ``min_delta``.

    Keeping the best and stopping early share one tracking of the best epoch, and
    stopping early always hands back the best, so they are one callback: without
    ``patience`` it only keeps the best. The best weights are saved as ``best.pt`` in
    the checkpoint folder each time they improve, so that a resumed run that never
    beats them still ends with them.
    """

    def __init__(self, monitor: str, mode: Literal["min", "max"], patience: int | None = None,
                 min_delta: float = 0.0):
        self.monitor, self.mode, self.patience, self.min_delta = monitor, mode, patience, min_delta
        self.best_metric: float | None = None
        self.best_epoch: int | None = None
        self.stale_epochs = 0
        self.best_weights: dict[str, torch.Tensor] | None = None

    def setup(self, trainer: Trainer) -> None:
        self.trainer = trainer

    def on_validation_end(self, epoch: int, metrics: dict[str, float]) -> None:
        value, best = metrics[self.monitor], self.best_metric
        improved = best is None or (
            value < best - self.min_delta if self.mode == "min" else value > best + self.min_delta
        )
        if not improved:
            self.stale_epochs += 1
            return
        self.best_metric, self.best_epoch, self.stale_epochs = value, epoch, 0
        self.best_weights = {name: tensor.detach().cpu().clone()
                             for name, tensor in self.trainer.eval_model.state_dict().items()}
        if self.trainer.checkpoints is not None:
            self.trainer.checkpoints.save(self.best_weights, BEST_FILE)

    def should_stop(self) -> bool:
        if self.patience is None or self.stale_epochs < self.patience:
            return False
        logger.info("Early stopping after epoch %d: %s has not improved for %d epochs",
                    self.trainer.state.epoch, self.monitor, self.patience)
        return True

    def on_fit_end(self) -> None:
        if self.best_weights is None:
            return
        logger.info("Keeping epoch %d, best %s = %.5f", self.best_epoch, self.monitor,
                    self.best_metric)
        self.trainer.eval_model.load_state_dict(self.best_weights)

    def state_dict(self) -> dict[str, Any]:
        return {"best_metric": self.best_metric, "best_epoch": self.best_epoch,
                "stale_epochs": self.stale_epochs}

    def load_state_dict(self, checkpoint: dict[str, Any]) -> None:
        self.best_metric = checkpoint.get("best_metric")
        self.best_epoch = checkpoint.get("best_epoch")
        self.stale_epochs = checkpoint.get("stale_epochs", 0)
        self.best_weights = self.trainer.checkpoints.load(BEST_FILE)
