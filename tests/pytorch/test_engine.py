"""The training loop on tiny synthetic problems, on the CPU."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from kedro_torch.pytorch.callbacks import Callback
from kedro_torch.pytorch.config import TrainingConfig
from kedro_torch.pytorch.engine import (
    Trainer,
    predict,
    resolve_device,
    seed_everything,
)
from kedro_torch.pytorch.models import SmallCNN
from kedro_torch.pytorch.optimizers import ScheduledLR
from kedro_torch.pytorch.tasks import image_classification

CLASSIFIER = image_classification.ImageClassification()  # what the loop is given

CPU = torch.device("cpu")
HISTORY_KEYS = ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr"]


def separable(n: int, seed: int) -> TensorDataset:
    """Two classes of 1x2x2 'images' told apart by the sign of their mean pixel."""
    generator = torch.Generator().manual_seed(seed)
    targets = torch.arange(n) % 2
    centres = (targets.float() * 2 - 1).view(n, 1, 1, 1)
    images = centres + 0.3 * torch.randn(n, 1, 2, 2, generator=generator)
    return TensorDataset(images, targets)


def tiny_model() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def loaders(seed: int = 0) -> tuple[DataLoader, DataLoader]:
    train = DataLoader(separable(48, seed=1), batch_size=16, shuffle=True,
                       generator=torch.Generator().manual_seed(seed))
    val = DataLoader(separable(20, seed=2), batch_size=8)
    return train, val


def fit(model, train, val, loss_fn, optimizer, scheduler, epochs, device, callbacks=()):
    """The plain loop: one optimizer, an optional per-epoch scheduler, no extras."""
    schedulers = [ScheduledLR(scheduler, "epoch")] if scheduler is not None else []
    trainer = Trainer(model, [optimizer], loss_fn, device, TrainingConfig(epochs=epochs),
                      schedulers, callbacks, task=CLASSIFIER)
    return trainer.fit(train, val)


def train_once(seed: int, epochs: int = 3, callbacks=()) -> tuple[nn.Module, list[dict]]:
    seed_everything(seed)
    model = tiny_model()
    train, val = loaders(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    history = fit(model, train, val, nn.CrossEntropyLoss(), optimizer, scheduler,
                  epochs=epochs, device=CPU, callbacks=callbacks)
    return model, history


def test_fit_learns_and_returns_one_row_per_epoch():
    _, history = train_once(seed=0, epochs=4)
    assert [row["epoch"] for row in history] == [1, 2, 3, 4]
    for row in history:
        assert list(row) == HISTORY_KEYS
        assert 0.0 <= row["train_accuracy"] <= 1.0
        assert 0.0 <= row["val_accuracy"] <= 1.0
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["val_accuracy"] == 1.0
    # Each row records the lr the epoch trained with, before the scheduler steps.
    assert [row["lr"] for row in history] == pytest.approx([0.5, 0.25, 0.125, 0.0625])


def test_fit_without_validation_or_scheduler():
    seed_everything(0)
    model = tiny_model()
    train, _ = loaders()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    history = fit(model, train, None, nn.CrossEntropyLoss(), optimizer, None, epochs=2,
                  device=CPU)
    assert [list(row) for row in history] == [["epoch", "train_loss", "train_accuracy", "lr"]] * 2
    assert [row["lr"] for row in history] == [0.1, 0.1]


class Recorder(Callback):
    """Records every hook call, in order, with its arguments."""

    def __init__(self):
        self.calls = []

    def setup(self, trainer):
        self.calls.append(("setup", type(trainer).__name__))

    def on_fit_start(self, epochs, batches_per_epoch, first_epoch):
        self.calls.append(("fit_start", epochs, batches_per_epoch, first_epoch))

    def should_stop(self):
        self.calls.append(("should_stop",))
        return False

    def on_epoch_start(self, epoch):
        self.calls.append(("epoch_start", epoch))

    def on_optimizer_step(self):
        self.calls.append(("optimizer_step",))

    def on_batch_end(self):
        self.calls.append(("batch_end",))

    def on_validation_end(self, epoch, metrics):
        self.calls.append(("validation_end", epoch, dict(metrics)))

    def on_epoch_end(self, epoch, metrics):
        self.calls.append(("epoch_end", epoch, dict(metrics)))

    def on_fit_end(self):
        self.calls.append(("fit_end",))


def test_callbacks_are_called_the_right_number_of_times_in_order():
    first, second = Recorder(), Recorder()
    _, history = train_once(seed=0, epochs=2, callbacks=[first, second])
    batches = 3  # 48 samples in batches of 16, one optimizer step each
    epoch_calls = [("optimizer_step",), ("batch_end",)] * batches
    assert first.calls == [
        ("setup", "Trainer"),
        ("fit_start", 2, batches, 1),
        ("should_stop",), ("epoch_start", 1), *epoch_calls,
        ("validation_end", 1, history[0]), ("epoch_end", 1, history[0]),
        ("should_stop",), ("epoch_start", 2), *epoch_calls,
        ("validation_end", 2, history[1]), ("epoch_end", 2, history[1]),
        ("fit_end",),
    ]
    assert second.calls == first.calls


def test_a_callback_overriding_nothing_is_accepted():
    _, history = train_once(seed=0, epochs=1, callbacks=[Callback()])
    assert len(history) == 1


class Float32Modes(Callback):
    """The float32 precision settings in force during each epoch."""

    def __init__(self):
        self.seen = []

    def on_epoch_start(self, epoch):
        self.seen.append(float32_modes())


def float32_modes() -> tuple[str, str, str]:
    return (torch.backends.cuda.matmul.fp32_precision,
            torch.backends.cudnn.conv.fp32_precision, torch.get_float32_matmul_precision())


def test_training_on_the_cpu_leaves_float32_precision_as_it_was():
    """TF32 is a CUDA GPU's business: on the CPU a float32 fit changes no global setting."""
    before, modes = float32_modes(), Float32Modes()
    train_once(seed=0, epochs=2, callbacks=[modes])
    assert modes.seen == [before, before]
    assert float32_modes() == before


def test_same_seed_gives_identical_weights():
    model_a, history_a = train_once(seed=7)
    model_b, history_b = train_once(seed=7)
    for (name, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name
    assert history_a == history_b
    model_c, _ = train_once(seed=8)
    assert not torch.equal(model_a[1].weight, model_c[1].weight)


def test_same_seed_gives_identical_weights_with_dropout_and_batch_norm():
    """Seeding must cover dropout masks and the shuffle, not only the initial weights."""

    def run() -> nn.Module:
        seed_everything(3)
        model = SmallCNN(in_channels=1, num_classes=2, width=4, dropout=0.5)
        images = torch.randn(12, 1, 8, 8, generator=torch.Generator().manual_seed(0))
        train = DataLoader(TensorDataset(images, torch.arange(12) % 2), batch_size=4,
                           shuffle=True, generator=torch.Generator().manual_seed(3))
        optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
        fit(model, train, None, nn.CrossEntropyLoss(), optimizer, None, epochs=2, device=CPU)
        return model

    first, second = run().state_dict(), run().state_dict()
    for name, tensor in first.items():
        assert torch.equal(tensor, second[name]), name


def test_predict_returns_logits_and_targets_of_the_whole_loader():
    dataset = separable(10, seed=3)
    model = tiny_model()
    model.train()
    logits, targets = predict(model, DataLoader(dataset, batch_size=4), CPU)
    assert logits.shape == (10, 2)
    assert logits.dtype == torch.float32
    assert torch.equal(targets, dataset.tensors[1])
    with torch.no_grad():
        assert torch.allclose(logits, model(dataset.tensors[0]))
    assert not model.training  # predict switches to eval mode (dropout, batch norm)


@pytest.mark.skipif(torch.cuda.is_available() or torch.backends.mps.is_available(),
                    reason="auto picks an accelerator when there is one")
def test_auto_device_is_the_cpu_without_accelerator():
    assert resolve_device("auto") == torch.device("cpu")


def test_cpu_device_is_always_available():
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present")
def test_cuda_device_without_cuda_raises():
    with pytest.raises(ValueError, match=r"training\.device: 'cuda' is not available"):
        resolve_device("cuda")


def test_unknown_device_raises():
    with pytest.raises(ValueError, match=r"training\.device: 'tpu'"):
        resolve_device("tpu")
