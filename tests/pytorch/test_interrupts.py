"""SIGTERM and SIGINT stop training at the next step boundary with a checkpoint, and a
resume from it ends exactly where the run left alone ends; a checkpoint of other
parameters is never continued."""

from __future__ import annotations

import os
import signal

import pandas as pd
import pytest

from kedro_torch.pytorch.api import checkpoints_for, refuse_unresumable, training_identity
from kedro_torch.pytorch.checkpoints import CheckpointStore
from kedro_torch.pytorch.config import DataConfig, ModelConfig, OptimizerConfig, TrainingConfig
from kedro_torch.pytorch.engine import Callback, seed_everything
from kedro_torch.pytorch.interrupts import Interrupted, TrainingInterrupted, stop_on_signals
from tests.pytorch.test_resume import assert_identical, make_trainer

pytestmark = pytest.mark.usefixtures("one_thread")


class SendSignal(Callback):
    """Sends ``signum`` to this process after the ``at``-th batch of the whole run, as
    an operator or a scheduler would."""

    def __init__(self, signum: int, at: int):
        self.signum, self.at, self.batches = signum, at, 0

    def on_batch_end(self):
        self.batches += 1
        if self.batches == self.at:
            os.kill(os.getpid(), self.signum)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("at", [7, 10], ids=["mid-epoch", "at-an-epoch-end"])
def test_a_signal_checkpoints_and_the_resume_is_bit_identical(tmp_path, signum, at):
    """5 batches an epoch: batch 7 is inside epoch 2, batch 10 ends it."""
    seed_everything(0)
    whole, train, val = make_trainer(None, 3, ema_decay=0.8)
    expected = whole.fit(train, val)

    store = CheckpointStore(str(tmp_path / "checkpoints"))
    seed_everything(0)
    stopped, train, val = make_trainer(store, 3, ema_decay=0.8)
    stopped.callbacks.append(SendSignal(signum, at))
    with pytest.raises(TrainingInterrupted) as caught:
        stopped.fit(train, val)
    assert caught.value.exit_code == 128 + signum
    assert (caught.value.epoch, caught.value.batch) == (2, 2 if at == 7 else 5)
    assert caught.value.checkpoint == store.path(store.steps()[-1])
    assert signal.getsignal(signum) is not None  # the handlers were put back

    seed_everything(123)  # a new process starts elsewhere
    resumed, train, val = make_trainer(store, 3, ema_decay=0.8)
    assert resumed.fit(train, val, resume=True) == expected
    assert_identical(resumed.model.state_dict(), whole.model.state_dict())
    assert_identical(resumed.eval_model.state_dict(), whole.eval_model.state_dict())


def test_a_second_sigint_stops_at_once():
    with stop_on_signals() as request, pytest.raises(Interrupted, match="second SIGINT"):
        os.kill(os.getpid(), signal.SIGINT)
        assert request.signum == signal.SIGINT
        os.kill(os.getpid(), signal.SIGINT)


# --- which checkpoint a resume may continue -------------------------------------------


MODEL_INPUT = pd.DataFrame({"content_hash": ["a", "b", "c"], "target": [0, 1, 0],
                            "split": ["train", "train", "test"]})


def identity(model_input=MODEL_INPUT, **training):
    return training_identity(DataConfig(), ModelConfig(), TrainingConfig(**training),
                             model_input)


def saved_under(root: CheckpointStore, made_with: dict) -> CheckpointStore:
    store = root.for_identity(made_with)
    store.save({"epoch": 1})
    return store


def test_the_identity_leaves_out_what_a_resume_may_change_and_digests_the_data():
    first = identity(epochs=4, resume=False, progress_bar=True, device="cpu")
    assert first == identity(epochs=9, resume="auto", progress_bar=False, device="auto")
    assert "training.epochs" not in first
    assert first["training.optimizer.kwargs.lr"] == 0.003
    assert first != identity(seed=99)
    other_split = MODEL_INPUT.assign(split=["train", "test", "test"])
    assert identity(other_split)["model_input"] != first["model_input"]
    moved = MODEL_INPUT.iloc[::-1].reset_index(drop=True)
    assert identity(moved) == first  # the same images listed in another order


def test_resume_continues_the_checkpoint_of_the_same_parameters(tmp_path):
    root = CheckpointStore(str(tmp_path))
    store = saved_under(root, identity())
    chosen = checkpoints_for(root, identity(epochs=20), TrainingConfig(resume=True))
    assert chosen.directory == store.directory and chosen.load()["epoch"] == 1


def test_resume_true_refuses_a_checkpoint_of_other_parameters_naming_each_key(tmp_path):
    root = CheckpointStore(str(tmp_path))
    saved_under(root, identity(seed=11))
    changed = identity(seed=99, optimizer=OptimizerConfig(kwargs={"lr": 0.0001}))
    with pytest.raises(ValueError, match=r"^training\.resume: the latest checkpoint") as caught:
        checkpoints_for(root, changed, TrainingConfig(resume=True))
    message = str(caught.value)
    assert "training.seed: 11 in the checkpoint, 99 now" in message
    assert "training.optimizer.kwargs.lr: 0.003 in the checkpoint, 0.0001 now" in message
    assert "training.optimizer.kwargs.weight_decay: 0.0001 in the checkpoint, None now" in (
        message)


def test_resume_auto_starts_afresh_beside_a_checkpoint_of_other_parameters(tmp_path, caplog):
    root = CheckpointStore(str(tmp_path))
    other = saved_under(root, identity(seed=11))
    with caplog.at_level("WARNING"):
        chosen = checkpoints_for(root, identity(seed=99), TrainingConfig(resume="auto"))
    assert "training.seed: 11 in the checkpoint, 99 now" in caplog.text
    assert chosen.directory != other.directory and chosen.load() is None
    chosen.save({"epoch": 1})
    assert other.load() == {"epoch": 1} and len(root.identities()) == 2  # both kept


def test_resume_true_is_checked_before_any_work_on_the_parameters_alone(tmp_path):
    root = CheckpointStore(str(tmp_path))
    parameters = (DataConfig(), ModelConfig(), TrainingConfig(resume=True))
    with pytest.raises(FileNotFoundError, match="no checkpoint below"):
        refuse_unresumable(root, *parameters)
    saved_under(root, identity(MODEL_INPUT.assign(split="train")))  # other data, same rest
    refuse_unresumable(root, *parameters)  # the data is compared once it is known
    changed = TrainingConfig(resume=True, optimizer=OptimizerConfig(kwargs={"lr": 0.01}))
    with pytest.raises(ValueError, match=r"training\.optimizer\.kwargs\.lr: 0\.003 in the "
                                         r"checkpoint, 0\.01 now"):
        refuse_unresumable(root, DataConfig(), ModelConfig(), changed)

