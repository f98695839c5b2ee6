"""Fine-tuning with a frozen backbone (``model.freeze_backbone``, ``model.unfreeze_at_epoch``)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from torch import nn

from kedro_torch.pytorch.callbacks.base import Callback

if TYPE_CHECKING:
    from kedro_torch.pytorch.engine import Trainer

logger = logging.getLogger(__name__)


class FreezeBackbone(Callback):
    """Trains only the named (head) parameters until ``unfreeze_at_epoch``, if given.

    Frozen parameters get no gradient, so every optimizer leaves them as they are;
    they stay in the optimizer, so unfreezing needs no new parameter group.
    """

    def __init__(self, model: nn.Module, trainable: set[str], unfreeze_at_epoch: int | None):
        self.model, self.trainable, self.unfreeze_at_epoch = model, trainable, unfreeze_at_epoch

    def setup(self, trainer: Trainer) -> None:
        trainer.find_unused_parameters = True  # DDP must not wait for the frozen ones

    def on_epoch_start(self, epoch: int) -> None:
        frozen = self.unfreeze_at_epoch is None or epoch < self.unfreeze_at_epoch
        for name, parameter in self.model.named_parameters():
            parameter.requires_grad_(not frozen or name in self.trainable)
        if epoch == self.unfreeze_at_epoch:
            logger.info("Epoch %d: backbone unfrozen, every parameter trains", epoch)
