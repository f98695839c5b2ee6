"""The hooks the training loop calls, which a loop feature or a listener overrides."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kedro_torch.pytorch.engine import Trainer


class Callback:
    """Hooks into :meth:`Trainer.fit <kedro_torch.pytorch.engine.Trainer.fit>`; override
    only what you need. The loop calls them in this order::

        setup(trainer)                      when the Trainer is built
        load_state_dict(checkpoint)         fit continues a checkpoint: first the state,
        on_resume(history, tags)            then the epochs it holds
        on_fit_start(epochs, batches_per_epoch, first_epoch)
        should_stop()                       before each epoch: one True ends training
          on_epoch_start(epoch)
            on_optimizer_step()             after each optimizer step
            on_batch_end()                  after each training batch
          on_validation_end(epoch, row)     the epoch's row is complete
          state_dict()                      into the epoch's checkpoint (and a signal's)
          on_epoch_end(epoch, row)          the checkpoint is written
        on_fit_end()                        also when a signal stops training

    With ``training.devices: N`` the callbacks passed to ``api.fit`` stay in the parent
    process and receive rank 0's events (the ``on_`` hooks) only: a feature that needs
    the trainer is built in every worker, as
    :func:`~kedro_torch.pytorch.callbacks.from_settings` builds the project's own.
    """

    monitor: str | None = None
    """The metric of the epoch rows this callback watches, if any: before any work the
    loop checks that the task reports it and, for a ``val_`` metric, that there is a
    validation loader, so that a wrong name fails at once rather than after an epoch."""

    def setup(self, trainer: Trainer) -> None:
        """Once, when the Trainer is built, before DDP and ``torch.compile`` wrap its
        model: keep the trainer to reach its model, checkpoints and state later. A
        feature may change how the trainer is built here: ``trainer.eval_model`` (the
        module validated, saved and handed back) and
        ``trainer.find_unused_parameters`` (some parameters get no gradient)."""

    def load_state_dict(self, checkpoint: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved, from the checkpoint being continued
        (all of it: take your own keys)."""

    def state_dict(self) -> dict[str, Any]:
        """What a resume needs of this callback, added to each checkpoint. Its keys sit
        beside the loop's own (``epoch``, ``model``, …), so they must be the callback's
        own; values are tensors, numbers, strings and containers of them
        (checkpoints load with ``weights_only=True``)."""
        return {}

    def on_resume(self, history: list[dict[str, float]], tags: dict[str, str]) -> None:
        """Training continues a checkpoint: the epochs it holds and the tags it carries
        (``Trainer(checkpoint_tags=...)`` of the run that wrote it)."""

    def on_fit_start(self, epochs: int, batches_per_epoch: int, first_epoch: int) -> None: ...

    def should_stop(self) -> bool:
        """Asked before each epoch (the first included, as a resumed run may already be
        done): True ends training there, as early stopping does."""
        return False

    def on_epoch_start(self, epoch: int) -> None: ...

    def on_optimizer_step(self) -> None:
        """After each optimizer step: every ``accumulate_grad_batches`` batches, and
        once at the end of an epoch whose last group of batches is shorter."""

    def on_batch_end(self) -> None: ...

    def on_validation_end(self, epoch: int, metrics: dict[str, float]) -> None:
        """The epoch's row is complete (its train metrics, validation's if there is a
        validation loader, the lr); called every epoch. The epoch's checkpoint is
        written next, so what changes here is saved with it."""

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None: ...

    def on_fit_end(self) -> None: ...
