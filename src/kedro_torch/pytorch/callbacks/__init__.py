"""The training loop's features, one file each, as Lightning keeps its callbacks.

The loop (:class:`~kedro_torch.pytorch.engine.Trainer`) knows none of them: it calls
the hooks of :class:`Callback` (``base.py``), and each feature overrides the ones it
needs. :func:`from_settings` is the one place where the parameters become callbacks;
``api.fit`` runs them after the caller's own.

A new loop feature is one new file in this folder, a :class:`Callback` subclass, plus
a line in :func:`from_settings` when a parameter switches it on (and its export
below). Its hooks say when it acts; ``setup(trainer)`` gives it the model, the
checkpoint folder and the loop's state; ``state_dict``/``load_state_dict`` carry what
a resume needs; ``should_stop`` ends training. ``ema.py`` is a short example.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kedro_torch.pytorch import distributed, models
from kedro_torch.pytorch.callbacks.base import Callback
from kedro_torch.pytorch.callbacks.early_stopping import EarlyStopping
from kedro_torch.pytorch.callbacks.ema import EMA
from kedro_torch.pytorch.callbacks.freeze_backbone import FreezeBackbone
from kedro_torch.pytorch.callbacks.progress import RichProgressBar

if TYPE_CHECKING:
    from torch import nn

    from kedro_torch.pytorch.config import ModelConfig, TrainingConfig

__all__ = ["EMA", "Callback", "EarlyStopping", "FreezeBackbone", "RichProgressBar",
           "from_settings"]


def from_settings(training: TrainingConfig, model_config: ModelConfig | None,
                  model: nn.Module) -> list[Callback]:
    """The callbacks that ``training`` and ``model_config`` switch on, for ``model``.

    Their order is the order of their hooks: the best epoch is kept last, once the
    others are done with the weights."""
    callbacks: list[Callback] = []
    if training.progress_bar and distributed.is_main_process():
        callbacks.append(RichProgressBar())
    if model_config is not None and model_config.freeze_backbone:
        callbacks.append(FreezeBackbone(model, models.head_parameter_names(model),
                                        model_config.unfreeze_at_epoch))
    if training.ema_decay is not None:
        callbacks.append(EMA(training.ema_decay))
    if training.restores_best:
        callbacks.append(EarlyStopping(training.monitor, training.mode,
                                       training.early_stopping.patience,
                                       training.early_stopping.min_delta))
    return callbacks
