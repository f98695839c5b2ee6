"""The callbacks package: the parameters become callbacks in one place, and the
Callback API a new loop feature uses (stopping, checkpointed state, a watched metric,
the progress bar) works through the real loop. The features themselves are tested in
test_training_features.py (EMA, early stopping, freezing) and test_resume.py."""

from __future__ import annotations

import pytest

from kedro_torch.pytorch.callbacks import (
    EMA,
    Callback,
    EarlyStopping,
    FreezeBackbone,
    RichProgressBar,
    from_settings,
)
from kedro_torch.pytorch.checkpoints import CheckpointStore
from kedro_torch.pytorch.config import EarlyStoppingConfig, ModelConfig, TrainingConfig
from kedro_torch.pytorch.engine import seed_everything
from kedro_torch.pytorch.models import SmallCNN, head_parameter_names
from tests.docs.blocks import block
from tests.pytorch.test_resume import make_trainer

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_settings_switch_on_their_callbacks_and_nothing_else():
    model = SmallCNN(in_channels=1, num_classes=2, width=4)
    assert from_settings(TrainingConfig(progress_bar=False), ModelConfig(), model) == []

    training = TrainingConfig(ema_decay=0.9, monitor="val_accuracy", early_stopping=(
        EarlyStoppingConfig(patience=3, min_delta=0.01)))
    built = from_settings(training, ModelConfig(freeze_backbone=True, unfreeze_at_epoch=2),
                          model)
    assert [type(c) for c in built] == [RichProgressBar, FreezeBackbone, EMA, EarlyStopping]
    _, freeze, ema, stopping = built
    assert (freeze.trainable, freeze.unfreeze_at_epoch) == (head_parameter_names(model), 2)
    assert ema.decay == 0.9
    assert (stopping.monitor, stopping.mode, stopping.patience, stopping.min_delta) == (
        "val_accuracy", "max", 3, 0.01)

    (keep_best,) = from_settings(TrainingConfig(progress_bar=False, keep_best=True), None, model)
    assert (keep_best.monitor, keep_best.mode, keep_best.patience) == ("val_loss", "min", None)


class StepBudget(Callback):
    """Ends training once ``steps`` optimizer steps are taken, counting across a resume."""

    def __init__(self, steps: int):
        self.steps, self.taken = steps, 0

    def on_optimizer_step(self):
        self.taken += 1

    def should_stop(self):
        return self.taken >= self.steps

    def state_dict(self):
        return {"step_budget_taken": self.taken}

    def load_state_dict(self, checkpoint):
        self.taken = checkpoint["step_budget_taken"]


def with_budget(store: CheckpointStore, epochs: int, steps: int):
    trainer, train, val = make_trainer(store, epochs)
    budget = StepBudget(steps)
    trainer.callbacks.append(budget)
    return trainer, budget, train, val


def test_a_callback_stops_training_and_its_state_survives_a_resume(tmp_path):
    """5 steps an epoch: a budget of 12 ends training after epoch 3, and a resumed run
    knows the 15 steps taken, so it trains no more; a budget of 20 trains one epoch more."""
    store = CheckpointStore(str(tmp_path / "checkpoints"))
    seed_everything(0)
    trainer, budget, train, val = with_budget(store, 5, 12)
    assert [row["epoch"] for row in trainer.fit(train, val)] == [1, 2, 3]
    assert store.load()["step_budget_taken"] == budget.taken == 15

    again, budget, train, val = with_budget(store, 5, 12)
    assert len(again.fit(train, val, resume=True)) == 3
    assert budget.taken == 15

    more, budget, train, val = with_budget(store, 5, 20)
    assert [row["epoch"] for row in more.fit(train, val, resume=True)] == [1, 2, 3, 4]
    assert budget.taken == 20


def test_a_callback_state_key_the_loop_uses_is_refused():
    class Clobbers(Callback):
        def state_dict(self):
            return {"model": {}}

    trainer, train, val = make_trainer(None, 1)
    trainer.callbacks.append(Clobbers())
    with pytest.raises(ValueError, match=r"^Clobbers\.state_dict: \['model'\] are keys of the "
                                         r"loop or of another callback"):
        trainer.fit(train, val)


def test_a_checkpoint_with_the_old_loops_keys_still_resumes(tmp_path):
    """Checkpoints once held every feature's keys, off or not; keys no callback takes
    are left alone."""
    store = CheckpointStore(str(tmp_path / "checkpoints"))
    seed_everything(0)
    first, train, val = make_trainer(store, 1)
    history = first.fit(train, val)
    store.save(store.load() | {"best_metric": None, "best_epoch": None, "stale_epochs": 0,
                               "ema": None})
    resumed, train, val = make_trainer(store, 2)
    assert resumed.fit(train, val, resume=True)[:1] == history


class Watcher(Callback):
    monitor = "val_loss"

    def __init__(self):
        self.batches = 0

    def on_batch_end(self):
        self.batches += 1


def test_a_callbacks_monitor_is_checked_before_any_batch():
    trainer, train, _ = make_trainer(None, 1)
    watcher = Watcher()
    trainer.callbacks.append(watcher)
    with pytest.raises(ValueError, match=r"^training\.monitor: Watcher needs val_loss, but "
                                         r"there is no validation split"):
        trainer.fit(train)
    watcher.monitor = "val_f1"
    with pytest.raises(ValueError, match=r"^training\.monitor: unknown metric 'val_f1'"):
        trainer.fit(train)
    assert watcher.batches == 0


def test_the_progress_bar_counts_epochs_and_batches(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # room for every column
    trainer, train, val = make_trainer(None, 2)
    trainer.callbacks.append(RichProgressBar())
    history = trainer.fit(train, val)
    shown = capsys.readouterr().out
    assert "epochs" in shown and "2/2" in shown
    assert "batches" in shown and f"val_loss={history[-1]['val_loss']:.4f}" in shown



def test_the_docs_loop_feature_stops_training_and_resumes_with_its_state(tmp_path):
    """The recipe's TimeLimit (docs/architecture.md), through the real loop: a limit
    shorter than an epoch ends training after the first, and the time spent is in its
    checkpoint."""
    namespace: dict = {}
    exec(block("new-loop-feature"), namespace)
    store = CheckpointStore(str(tmp_path / "checkpoints"))
    trainer, train, val = make_trainer(store, 3)
    trainer.callbacks.append(namespace["TimeLimit"](1e-6))
    assert len(trainer.fit(train, val)) == 1
    assert store.load()["time_limit_spent"] > 0

    resumed, train, val = make_trainer(store, 3)
    resumed.callbacks.append(namespace["TimeLimit"](1e-6))
    assert len(resumed.fit(train, val, resume=True)) == 1
