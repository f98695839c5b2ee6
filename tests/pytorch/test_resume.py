"""Checkpoints at the end of every epoch, and exact resume from them, on the CPU."""

from __future__ import annotations

import logging
import pathlib
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from kedro_torch.pytorch.callbacks import EMA, EarlyStopping, from_settings
from kedro_torch.pytorch.checkpoints import CheckpointStore, UnsafeCheckpointError
from kedro_torch.pytorch.config import (
    EarlyStoppingConfig,
    OptimizerConfig,
    SchedulerConfig,
    TrainingConfig,
)
from kedro_torch.pytorch.engine import Callback, Trainer, seed_everything
from kedro_torch.pytorch.models import SmallCNN
from kedro_torch.pytorch.optimizers import build_optimizers, build_schedulers
from kedro_torch.pytorch.tasks import image_classification

CLASSIFIER = image_classification.ImageClassification()  # what the loop is given

CPU = torch.device("cpu")


# Tiny tensors: one thread is quicker (see tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


def dataset(n: int, seed: int) -> TensorDataset:
    """1x8x8 noise images; the class is whether the top half is brighter."""
    generator = torch.Generator().manual_seed(seed)
    targets = torch.arange(n) % 2
    images = torch.randn(n, 1, 8, 8, generator=generator)
    images[:, :, :4] += targets.view(n, 1, 1, 1).float()
    return TensorDataset(images, targets)


def make_trainer(store: CheckpointStore | None, epochs: int, scheduler: str = "StepLR",
                 device: torch.device = CPU, **settings) -> tuple[Trainer, DataLoader, DataLoader]:
    """A run with everything random that resume must restore: dropout and batch norm, a
    shuffled loader with its own generator, AdamW's moments, the scheduler's count; and
    the callbacks the settings switch on, as ``api.fit`` runs them."""
    model = SmallCNN(in_channels=1, num_classes=2, width=4, dropout=0.5)
    train = DataLoader(dataset(20, seed=1), batch_size=4, shuffle=True,
                       generator=torch.Generator().manual_seed(5))
    val = DataLoader(dataset(8, seed=2), batch_size=4)
    optimizers = build_optimizers(model, OptimizerConfig("AdamW", {"lr": 0.02,
                                                                   "weight_decay": 0.01}))
    kwargs = {"StepLR": {"step_size": 1, "gamma": 0.7},
              "ReduceLROnPlateau": {"patience": 0, "factor": 0.5}}[scheduler]
    schedulers = build_schedulers(optimizers, SchedulerConfig(scheduler, kwargs), epochs,
                                  len(train), monitor_mode="min")
    config = TrainingConfig(epochs=epochs, progress_bar=False, **settings)
    trainer = Trainer(model, optimizers, nn.CrossEntropyLoss(), device, config, schedulers,
                      from_settings(config, None, model), checkpoints=store, task=CLASSIFIER)
    return trainer, train, val


def callback(trainer: Trainer, kind: type) -> Any:
    """The trainer's callback of that kind."""
    return next(c for c in trainer.callbacks if isinstance(c, kind))


def assert_identical(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> None:
    assert first.keys() == second.keys()
    different = [name for name in first if not torch.equal(first[name], second[name])]
    assert different == []


VARIANTS = {
    "plain": {},
    "ema": {"ema_decay": 0.8},
    "ema, keep_best, plateau": {"ema_decay": 0.8, "keep_best": True,
                                "scheduler": "ReduceLROnPlateau"},
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_resumed_run_is_bit_identical_to_an_uninterrupted_one(variant, tmp_path):
    """4 epochs in one go, or 2 epochs then a resumed run to 4: the same weights, bit for
    bit, and the same history. The resumed run starts in another random state (as a new
    process would), so only what the checkpoint restores can make them agree."""
    settings = VARIANTS[variant]
    seed_everything(0)
    whole, train, val = make_trainer(CheckpointStore(str(tmp_path / "whole")), 4, **settings)
    whole_history = whole.fit(train, val)

    store = CheckpointStore(str(tmp_path / "interrupted"))
    seed_everything(0)
    first, train, val = make_trainer(store, 2, **settings)
    first.fit(train, val)
    seed_everything(1234)
    resumed, train, val = make_trainer(store, 4, **settings)
    resumed_history = resumed.fit(train, val, resume=True)

    assert resumed_history == whole_history
    assert len(resumed_history) == 4
    assert_identical(resumed.model.state_dict(), whole.model.state_dict())
    assert_identical(resumed.eval_model.state_dict(), whole.eval_model.state_dict())
    if "ema_decay" in settings:
        assert_identical(callback(resumed, EMA).averaged.state_dict(),
                         callback(whole, EMA).averaged.state_dict())


CUDA_VARIANTS = {
    "fp32": {"deterministic": True},
    "fp16, ema": {"deterministic": True, "precision": "16", "ema_decay": 0.8},
}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("variant", list(CUDA_VARIANTS))
def test_resume_on_cuda_is_bit_identical_in_deterministic_mode(variant, tmp_path):
    """On CUDA the checkpoint holds the CUDA generators and the gradient scaler too."""
    settings = {**CUDA_VARIANTS[variant], "device": torch.device("cuda")}
    seed_everything(0)
    whole, train, val = make_trainer(None, 4, **settings)
    whole_history = whole.fit(train, val)

    store = CheckpointStore(str(tmp_path / "interrupted"))
    seed_everything(0)
    first, train, val = make_trainer(store, 2, **settings)
    first.fit(train, val)
    assert store.load()["rng"]["cuda"]
    seed_everything(1234)
    resumed, train, val = make_trainer(store, 4, **settings)
    assert resumed.fit(train, val, resume=True) == whole_history
    assert_identical(resumed.eval_model.state_dict(), whole.eval_model.state_dict())
    assert resumed.scaler.state_dict() == whole.scaler.state_dict()


def test_resume_without_restoring_the_random_state_would_differ(tmp_path):
    """Control for the test above: the same model and optimizer state in another random
    state (dropout masks, shuffle order) trains to other weights, so the bit-identical
    result really depends on the restored RNG."""
    seed_everything(0)
    whole, train, val = make_trainer(None, 4)
    whole.fit(train, val)

    store = CheckpointStore(str(tmp_path / "interrupted"))
    seed_everything(0)
    first, train, val = make_trainer(store, 2)
    first.fit(train, val)
    saved = store.load()
    saved["rng"]["torch"] = torch.manual_seed(99).get_state()
    store.save(saved)
    seed_everything(1234)
    resumed, train, val = make_trainer(store, 4)
    resumed.fit(train, val, resume=True)

    assert not torch.equal(resumed.model.classifier[1].weight, whole.model.classifier[1].weight)


class CheckpointReader(Callback):
    """Reads the newest checkpoint back at the end of every epoch (written just before)."""

    def __init__(self, store: CheckpointStore):
        self.store, self.epochs = store, []

    def on_epoch_end(self, epoch, metrics):
        self.epochs.append(self.store.load()["epoch"])


def test_a_checkpoint_is_written_every_epoch_and_holds_the_whole_state(tmp_path):
    """The loop's state, and beside it its callbacks' (here the EMA's)."""
    store = CheckpointStore(str(tmp_path / "checkpoints"))
    seed_everything(0)
    trainer, train, val = make_trainer(store, 3, ema_decay=0.8)
    reader = CheckpointReader(store)
    trainer.callbacks.append(reader)
    history = trainer.fit(train, val)

    assert reader.epochs == [1, 2, 3]
    # What load uses, and what a user would call: both with weights_only=True.
    assert store.steps() == ["step-00003-0000000.pt"]  # keep: 1, the newest only
    saved = torch.load(store.path(store.steps()[-1]), weights_only=True)
    assert set(saved) == {"epoch", "planned_epochs", "history", "model", "optimizers",
                          "schedulers", "scaler", "rng", "tags", "ema"}
    assert saved["epoch"] == 3
    assert saved["history"] == history
    assert_identical(saved["model"], trainer.model.state_dict())
    assert_identical(saved["ema"], callback(trainer, EMA).averaged.state_dict())
    assert saved["ema"]["n_averaged"] == 3 * len(train)
    assert saved["optimizers"][0]["state"][0]["exp_avg"].shape == \
        trainer.model.features[0].weight.shape
    assert saved["schedulers"][0]["last_epoch"] == 3
    assert saved["scaler"] == trainer.scaler.state_dict()
    rng = saved["rng"]
    assert set(rng) == {"python", "numpy", "torch", "cuda", "generators"}
    assert torch.equal(rng["torch"], torch.get_rng_state())
    assert [torch.equal(s, g) for s, g in zip(rng["generators"], [train.generator.get_state()],
                                              strict=True)] == [True]


def test_resume_true_without_a_checkpoint_says_so_and_points_at_auto(tmp_path):
    trainer, train, val = make_trainer(CheckpointStore(str(tmp_path / "empty")), 2)
    with pytest.raises(FileNotFoundError) as error:
        trainer.fit(train, val, resume=True)
    message = str(error.value)
    assert message.startswith("training.resume is true but there is no checkpoint in "
                              "CheckpointStore(")
    assert "empty" in message
    assert "training.resume: auto" in message


def test_resume_true_without_a_checkpoint_store_says_so():
    trainer, train, val = make_trainer(None, 2)
    with pytest.raises(FileNotFoundError, match=r"no checkpoint in \(no checkpoint folder\)"):
        trainer.fit(train, val, resume=True)


def test_resume_auto_without_a_checkpoint_starts_afresh(tmp_path, caplog):
    store = CheckpointStore(str(tmp_path / "empty"))
    trainer, train, val = make_trainer(store, 2)
    with caplog.at_level(logging.INFO, logger="kedro_torch.pytorch.engine"):
        history = trainer.fit(train, val, resume="auto")
    assert [row["epoch"] for row in history] == [1, 2]
    assert "no checkpoint" in caplog.text
    assert "starting afresh" in caplog.text
    assert store.load()["epoch"] == 2


def test_resume_auto_with_a_checkpoint_resumes(tmp_path):
    store = CheckpointStore(str(tmp_path / "checkpoints"))
    first, train, val = make_trainer(store, 1)
    history = first.fit(train, val)
    resumed, train, val = make_trainer(store, 2)
    assert resumed.fit(train, val, resume="auto")[:1] == history
    assert store.load()["epoch"] == 2


class RunsCodeWhenUnpickled:
    """Stands for a malicious object: full unpickling would create ``marker``."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_resume_from_a_checkpoint_holding_python_objects_is_refused(tmp_path):
    """A tampered checkpoint is refused without running its payload (weights_only=True)."""
    directory, marker = tmp_path / "checkpoints", tmp_path / "marker"
    directory.mkdir()
    torch.save({"epoch": 1, "payload": RunsCodeWhenUnpickled(marker)},
               directory / "step-00001-0000000.pt")
    trainer, train, val = make_trainer(CheckpointStore(str(directory)), 2)
    with pytest.raises(UnsafeCheckpointError, match=r"step-00001-0000000\.pt: refused to load"):
        trainer.fit(train, val, resume=True)
    assert not marker.exists()


class BatchCounter(Callback):
    def __init__(self):
        self.batches, self.first_epoch = 0, None

    def on_fit_start(self, epochs, batches_per_epoch, first_epoch):
        self.first_epoch = first_epoch

    def on_batch_end(self):
        self.batches += 1


def test_resume_continues_from_the_next_epoch_and_a_finished_run_trains_no_more(tmp_path):
    store = CheckpointStore(str(tmp_path / "checkpoints"))
    seed_everything(0)
    first, train, val = make_trainer(store, 2)
    first.fit(train, val)

    counter = BatchCounter()
    resumed, train, val = make_trainer(store, 3)
    resumed.callbacks.append(counter)
    history = resumed.fit(train, val, resume=True)
    assert counter.first_epoch == 3
    assert counter.batches == len(train)
    assert [row["epoch"] for row in history] == [1, 2, 3]

    again = BatchCounter()
    finished, train, val = make_trainer(store, 3)
    finished.callbacks.append(again)
    assert finished.fit(train, val, resume=True) == history
    assert again.batches == 0
    assert_identical(finished.model.state_dict(), resumed.model.state_dict())


def test_resume_with_different_data_settings_says_so(tmp_path):
    """A checkpoint of a shuffled loader holds its generator's state; a loader without one
    cannot continue the same order."""
    store = CheckpointStore(str(tmp_path / "checkpoints"))
    first, train, val = make_trainer(store, 1)
    first.fit(train, val)
    resumed, train, val = make_trainer(store, 2)
    unshuffled = DataLoader(train.dataset, batch_size=4)
    with pytest.raises(ValueError, match=r"were the data settings changed\?"):
        resumed.fit(unshuffled, val, resume=True)


def test_a_save_interrupted_before_the_rename_leaves_the_last_checkpoint_intact(
    tmp_path, monkeypatch
):
    """The checkpoint of epoch 1 survives a crash while epoch 2's is written: same bytes,
    no temporary file left beside it, and it still resumes."""
    directory = tmp_path / "checkpoints"
    store = CheckpointStore(str(directory))
    seed_everything(0)
    first, train, val = make_trainer(store, 1)
    first.fit(train, val)
    good_bytes = (directory / "step-00001-0000000.pt").read_bytes()

    def crash(*args, **kwargs):
        raise OSError("power cut before the rename")

    monkeypatch.setattr(store.fs, "mv", crash)
    interrupted, train, val = make_trainer(store, 2)
    with pytest.raises(OSError, match="power cut"):
        interrupted.fit(train, val, resume=True)
    monkeypatch.undo()

    assert (directory / "step-00001-0000000.pt").read_bytes() == good_bytes
    assert [p.name for p in directory.iterdir()] == ["step-00001-0000000.pt"]
    resumed, train, val = make_trainer(store, 2)
    assert [row["epoch"] for row in resumed.fit(train, val, resume=True)] == [1, 2]


def test_keep_best_resumes_with_the_best_weights_of_the_first_run(tmp_path):
    """best.pt is written when the monitored metric improves and read back on resume, so
    a resumed run that never beats it still hands back the earlier best."""
    store = CheckpointStore(str(tmp_path / "checkpoints"))
    seed_everything(0)
    first, train, val = make_trainer(store, 2, keep_best=True)
    history = first.fit(train, val)
    best_epoch = callback(first, EarlyStopping).best_epoch
    assert history[best_epoch - 1]["val_loss"] == callback(first, EarlyStopping).best_metric
    saved = store.load()
    assert (saved["best_metric"], saved["best_epoch"], saved["stale_epochs"]) == (
        history[best_epoch - 1]["val_loss"], best_epoch, 2 - best_epoch)
    best = store.load("best.pt")
    assert_identical(best, first.model.state_dict())

    resumed, train, val = make_trainer(store, 3, keep_best=True,
                                      early_stopping=EarlyStoppingConfig(min_delta=1e9))
    resumed.fit(train, val, resume=True)
    assert callback(resumed, EarlyStopping).best_epoch == best_epoch
    assert_identical(resumed.model.state_dict(), best)


def test_resuming_one_cycle_past_its_planned_length_is_refused(tmp_path):
    """OneCycleLR cannot stretch: say so instead of torch's 'stepped too many times'."""
    store = CheckpointStore(str(tmp_path))

    def trainer(epochs: int) -> Trainer:
        seed_everything(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
        (optimizer,) = build_optimizers(model, OptimizerConfig("SGD", {"lr": 0.1}))
        schedulers = build_schedulers([optimizer], SchedulerConfig("OneCycleLR"), epochs,
                                      steps_per_epoch=2, monitor_mode="min")
        return Trainer(model, [optimizer], nn.CrossEntropyLoss(), torch.device("cpu"),
                       TrainingConfig(epochs=epochs), schedulers, checkpoints=store,
                       task=CLASSIFIER)

    images = torch.randn(8, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    loader = DataLoader(TensorDataset(images, torch.arange(8) % 2), batch_size=4)
    trainer(2).fit(loader)
    with pytest.raises(ValueError, match=r"training\.epochs: the checkpoint's OneCycleLR"):
        trainer(3).fit(loader, resume=True)
