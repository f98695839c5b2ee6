"""An exponential moving average of the weights (``training.ema_decay``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch.optim.swa_utils import AveragedModel

from kedro_torch.pytorch.callbacks.base import Callback

if TYPE_CHECKING:
    from kedro_torch.pytorch.engine import Trainer


def ema_with_warmup(decay: float):
    """An EMA update whose decay grows as ``(1 + n) / (10 + n)`` up to ``decay``.

    A fixed decay such as 0.999 would keep most of the random initial weights for
    the first thousands of steps; warming it up (as timm does) lets the average
    follow the model from the start and still smooth it later.
    """

    def update(averaged: torch.Tensor, current: torch.Tensor, steps: torch.Tensor
               ) -> torch.Tensor:
        rate = ((1 + steps) / (10 + steps)).clamp(max=decay)
        return averaged + (current - averaged) * (1 - rate)

    return update


class EMA(Callback):
    """Validates, saves and hands back an average of the weights over the optimizer
    steps, as timm and torchvision's reference scripts train: it smooths out the last
    steps' noise. Buffers (batch norm's statistics) are averaged too."""

    def __init__(self, decay: float):
        self.decay = decay

    def setup(self, trainer: Trainer) -> None:
        self.model = trainer.model
        self.averaged = AveragedModel(trainer.model, avg_fn=ema_with_warmup(self.decay),
                                      use_buffers=True)
        trainer.eval_model = self.averaged.module

    def on_optimizer_step(self) -> None:
        self.averaged.update_parameters(self.model)

    def state_dict(self) -> dict[str, Any]:
        return {"ema": self.averaged.state_dict()}

    def load_state_dict(self, checkpoint: dict[str, Any]) -> None:
        if checkpoint.get("ema") is not None:
            self.averaged.load_state_dict(checkpoint["ema"])
