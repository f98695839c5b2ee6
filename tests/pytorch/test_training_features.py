"""The loop's features (precision, accumulation, clipping, EMA, early stopping, best
epoch, channels_last, deterministic and anomaly modes, the NaN guard, batch limits),
losses by name, and pretrained weights, each on tiny data through the Trainer."""

from __future__ import annotations

import copy
import logging
import math
import urllib.error

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset, default_collate
from torchvision.transforms import v2

from kedro_torch.pytorch.callbacks import EMA, EarlyStopping, FreezeBackbone, from_settings
from kedro_torch.pytorch.checkpoints import CheckpointStore, state_dict_from
from kedro_torch.pytorch.config import (
    EarlyStoppingConfig,
    LossConfig,
    OptimizerConfig,
    TrainingConfig,
)
from kedro_torch.pytorch.engine import (
    Callback,
    Trainer,
    evaluate,
    seed_everything,
)
from kedro_torch.pytorch.models import (
    SmallCNN,
    build_model,
    head_parameter_names,
    load_pretrained,
    torchvision_weights,
)
from kedro_torch.pytorch.optimizers import balanced_class_weights, build_loss, build_optimizers
from kedro_torch.pytorch.tasks import image_classification

CLASSIFIER = image_classification.ImageClassification()  # what the loop is given

CPU = torch.device("cpu")


# Tiny tensors: one thread is quicker (see tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


def separable(n: int, seed: int = 0, flip: bool = False) -> TensorDataset:
    """Two classes of 1x2x2 'images' told apart by the sign of their mean pixel; with
    ``flip`` the labels are the opposite ones (a validation set that gets worse the
    better the model fits the training set)."""
    generator = torch.Generator().manual_seed(seed)
    targets = torch.arange(n) % 2
    centres = (targets.float() * 2 - 1).view(n, 1, 1, 1)
    images = centres + 0.3 * torch.randn(n, 1, 2, 2, generator=generator)
    return TensorDataset(images, 1 - targets if flip else targets)


def linear() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 2))


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))


def sgd(model: nn.Module, lr: float = 0.1) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=lr)


def fit(model, optimizer, train, val=None, callbacks=(), checkpoints=None, loss_fn=None,
        **settings) -> tuple[Trainer, list[dict]]:
    """A Trainer with ``callbacks`` and those ``settings`` switch on, as ``api.fit`` has."""
    config = TrainingConfig(**{"epochs": 1, "progress_bar": False} | settings)
    trainer = Trainer(model, [optimizer], loss_fn or nn.CrossEntropyLoss(), CPU, config,
                      callbacks=[*callbacks, *from_settings(config, None, model)],
                      checkpoints=checkpoints, task=CLASSIFIER)
    return trainer, trainer.fit(train, val)


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


class Snapshots(Callback):
    """The model's weights at the end of every epoch."""

    def __init__(self, model: nn.Module):
        self.model, self.by_epoch = model, {}

    def on_epoch_end(self, epoch, metrics):
        self.by_epoch[epoch] = weights(self.model)


def same(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> bool:
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


# --- precision ------------------------------------------------------------------------


def test_bf16_trains_on_the_cpu_under_autocast():
    """The layers compute in bfloat16 while the weights stay float32 and train."""
    seed_everything(0)
    model = mlp()
    dtypes = []
    model[1].register_forward_hook(lambda module, args, output: dtypes.append(output.dtype))
    before = weights(model)
    _, history = fit(model, sgd(model), DataLoader(separable(16), batch_size=8),
                     precision="bf16")
    assert dtypes == [torch.bfloat16, torch.bfloat16]
    assert model[1].weight.dtype == torch.float32
    assert not same(before, weights(model))
    assert math.isfinite(history[0]["train_loss"])


def test_float16_on_the_cpu_says_to_use_bf16():
    with pytest.raises(ValueError, match=r"^training\.precision: 16 .* needs a CUDA device, "
                                         r"not cpu; use bf16 instead"):
        Trainer(linear(), [sgd(linear())], nn.CrossEntropyLoss(), CPU,
                TrainingConfig(epochs=1, precision="16"), task=CLASSIFIER)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(("precision", "dtype"), [("16", torch.float16), ("bf16", torch.bfloat16)])
def test_mixed_precision_on_cuda(precision, dtype, tmp_path):
    """float16 trains with a gradient scaler, whose state is checkpointed; bf16 needs none."""
    seed_everything(0)
    model = mlp()
    dtypes = []
    model[1].register_forward_hook(lambda module, args, output: dtypes.append(output.dtype))
    store = CheckpointStore(str(tmp_path / "checkpoints"))
    trainer = Trainer(model, [sgd(model)], nn.CrossEntropyLoss(), torch.device("cuda"),
                      TrainingConfig(epochs=2, precision=precision), checkpoints=store,
                      task=CLASSIFIER)
    history = trainer.fit(DataLoader(separable(16), batch_size=8))
    assert set(dtypes) == {dtype}
    assert all(math.isfinite(row["train_loss"]) for row in history)
    assert model[1].weight.dtype == torch.float32
    assert trainer.scaler.is_enabled() == (precision == "16")
    assert ("scale" in store.load()["scaler"]) == (precision == "16")


# --- gradient accumulation and clipping ------------------------------------------------


def test_accumulating_two_batches_of_4_is_one_step_on_a_batch_of_8():
    """SGD without momentum on a linear model: the accumulated mean gradient of two
    halves equals the gradient of the whole batch."""
    data = separable(8)

    def train(batch_size: int, accumulate: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        model = linear()
        fit(model, sgd(model, lr=0.5), DataLoader(data, batch_size=batch_size),
            accumulate_grad_batches=accumulate)
        return weights(model)

    whole, accumulated, two_steps = train(8, 1), train(4, 2), train(4, 1)
    for name in whole:
        assert torch.allclose(accumulated[name], whole[name], atol=1e-6), name
    assert not torch.allclose(two_steps["1.weight"], whole["1.weight"], atol=1e-4)


def test_accumulation_steps_at_the_end_of_an_epoch_with_a_partial_group():
    """3 batches with accumulate 2: a step after batch 2, and one after batch 3 so no
    gradient is carried into the next epoch."""
    model = linear()
    optimizer = sgd(model)
    steps = []
    optimizer.register_step_post_hook(lambda *_: steps.append(1))
    fit(model, optimizer, DataLoader(separable(12), batch_size=4), epochs=2,
        accumulate_grad_batches=2)
    assert len(steps) == 4
    assert all(p.grad is None for p in model.parameters())


def big_gradient_batch() -> DataLoader:
    """One batch of large inputs with wrong labels: a gradient far above the limits."""
    images, targets = separable(8, flip=True).tensors
    return DataLoader(TensorDataset(images * 100, targets), batch_size=8)


def unclipped_gradients(model: nn.Module) -> list[torch.Tensor]:
    probe = copy.deepcopy(model)
    images, targets = next(iter(big_gradient_batch()))
    nn.CrossEntropyLoss()(probe(images), targets).backward()
    return [p.grad for p in probe.parameters()]


def test_clip_grad_norm_bounds_the_update():
    """With SGD at lr 1, one step moves the weights by exactly the clipped gradient."""
    torch.manual_seed(0)
    model = linear()
    assert torch.cat([g.flatten() for g in unclipped_gradients(model)]).norm() > 10
    before = [p.detach().clone() for p in model.parameters()]
    fit(model, sgd(model, lr=1.0), big_gradient_batch(), clip_grad_norm=0.5)
    change = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before,
                                                                   strict=True)])
    assert change.norm() == pytest.approx(0.5, rel=1e-4)


def test_clip_grad_value_bounds_every_element_of_the_update():
    torch.manual_seed(0)
    model = linear()
    assert max(g.abs().max() for g in unclipped_gradients(model)) > 1
    before = [p.detach().clone() for p in model.parameters()]
    fit(model, sgd(model, lr=1.0), big_gradient_batch(), clip_grad_value=0.01)
    change = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before,
                                                                   strict=True)])
    assert change.abs().max() == pytest.approx(0.01, rel=1e-4)
    assert (change.abs() <= 0.01 + 1e-7).all()


# --- EMA -------------------------------------------------------------------------------


def test_ema_is_the_model_validated_and_handed_back():
    """eval_model is the AveragedModel's copy: an exponential average of the weights after
    every optimizer step (its decay warming up as (1 + n) / (10 + n) to ema_decay),
    different from the raw weights, and what validation scores."""
    seed_everything(0)
    model = mlp()
    optimizer = sgd(model, lr=0.5)
    after_steps = []
    optimizer.register_step_post_hook(lambda *_: after_steps.append(weights(model)))
    train, val = DataLoader(separable(24), batch_size=8), DataLoader(separable(8, seed=1))
    ema = EMA(0.6)
    trainer, history = fit(model, optimizer, train, val, callbacks=[ema], epochs=2)

    assert trainer.eval_model is ema.averaged.module
    expected = after_steps[0]
    for n, step in enumerate(after_steps[1:], start=1):
        decay = min(0.6, (1 + n) / (10 + n))
        expected = {k: decay * expected[k] + (1 - decay) * step[k] for k in expected}
    ema = weights(trainer.eval_model)
    for name, tensor in expected.items():
        assert torch.allclose(ema[name], tensor, atol=1e-6), name
    assert not same(ema, weights(model))
    loss_fn = nn.CrossEntropyLoss()
    validated = evaluate(trainer.eval_model, val, loss_fn, CPU, task=CLASSIFIER)
    assert validated["loss"] == history[-1]["val_loss"]
    trained = evaluate(trainer.model, val, loss_fn, CPU, task=CLASSIFIER)
    assert trained["loss"] != history[-1]["val_loss"]


# --- early stopping and the best epoch -------------------------------------------------


def test_early_stopping_stops_after_patience_and_hands_back_the_best_epoch():
    """The validation labels are flipped, so val_loss gets worse as training goes on:
    training stops `patience` epochs after the best one, with the best epoch's weights."""
    seed_everything(0)
    model = mlp()
    snapshots, stopping = Snapshots(model), EarlyStopping("val_loss", "min", patience=2)
    _, history = fit(model, sgd(model, lr=0.5), DataLoader(separable(24), batch_size=8),
                     DataLoader(separable(8, seed=1, flip=True)),
                     callbacks=[snapshots, stopping], epochs=20)
    losses = [row["val_loss"] for row in history]
    best_epoch = losses.index(min(losses)) + 1
    assert len(history) == best_epoch + 2 < 20
    assert stopping.best_epoch == best_epoch
    assert same(weights(model), snapshots.by_epoch[best_epoch])
    assert not same(weights(model), snapshots.by_epoch[len(history)])


def test_min_delta_counts_only_real_improvements():
    """A min_delta larger than the loss can fall: no epoch after the first improves."""
    seed_everything(0)
    model = mlp()
    stopping = EarlyStopping("val_loss", "min", patience=3, min_delta=10.0)
    _, history = fit(model, sgd(model, lr=0.5), DataLoader(separable(24), batch_size=8),
                     DataLoader(separable(8, seed=1)), callbacks=[stopping], epochs=20)
    assert len(history) == 4
    assert history[-1]["val_loss"] < history[0]["val_loss"]  # it did improve, by < 10
    assert stopping.best_epoch == 1


def test_early_stopping_on_a_maximised_metric():
    seed_everything(0)
    model = mlp()
    stopping = EarlyStopping("val_accuracy", "max", patience=2)
    _, history = fit(model, sgd(model, lr=0.5), DataLoader(separable(24), batch_size=8),
                     DataLoader(separable(8, seed=1, flip=True)), callbacks=[stopping],
                     epochs=20)
    accuracies = [row["val_accuracy"] for row in history]
    assert stopping.best_metric == max(accuracies)
    assert stopping.best_epoch == accuracies.index(max(accuracies)) + 1
    assert len(history) == stopping.best_epoch + 2


def test_keep_best_hands_back_and_saves_the_best_epoch_not_the_last(tmp_path):
    seed_everything(0)
    model = mlp()
    snapshots, best = Snapshots(model), EarlyStopping("val_loss", "min")
    store = CheckpointStore(str(tmp_path / "checkpoints"))
    _, history = fit(model, sgd(model, lr=0.5), DataLoader(separable(24), batch_size=8),
                     DataLoader(separable(8, seed=1, flip=True)), callbacks=[snapshots, best],
                     checkpoints=store, epochs=4)
    assert len(history) == 4
    best_epoch = best.best_epoch
    assert best_epoch < 4
    assert same(weights(model), snapshots.by_epoch[best_epoch])
    assert same(store.load("best.pt"), snapshots.by_epoch[best_epoch])


def test_without_keep_best_the_last_epoch_is_kept():
    seed_everything(0)
    model = mlp()
    snapshots = Snapshots(model)
    fit(model, sgd(model, lr=0.5), DataLoader(separable(24), batch_size=8),
        DataLoader(separable(8, seed=1, flip=True)), callbacks=[snapshots], epochs=4)
    assert same(weights(model), snapshots.by_epoch[4])


def test_keep_best_with_ema_hands_back_the_best_averaged_weights():
    seed_everything(0)
    model = mlp()
    best = EarlyStopping("val_loss", "min")
    trainer = Trainer(model, [sgd(model, lr=0.5)], nn.CrossEntropyLoss(), CPU,
                      TrainingConfig(epochs=4), callbacks=[EMA(0.5), best], task=CLASSIFIER)
    snapshots = Snapshots(trainer.eval_model)
    trainer.callbacks.append(snapshots)
    trainer.fit(DataLoader(separable(24), batch_size=8),
                DataLoader(separable(8, seed=1, flip=True)))
    assert best.best_epoch < 4
    assert same(weights(trainer.eval_model), snapshots.by_epoch[best.best_epoch])


@pytest.mark.parametrize(
    "settings", [{"keep_best": True}, {"early_stopping": EarlyStoppingConfig(patience=1)}]
)
def test_a_monitored_validation_metric_without_validation_split_says_so(settings):
    model = linear()
    with pytest.raises(ValueError, match=r"^training\.monitor: EarlyStopping needs val_loss, "
                                         r"but there is no validation split"):
        fit(model, sgd(model), DataLoader(separable(8), batch_size=4), **settings)


def test_an_unknown_monitor_lists_the_valid_metrics():
    model = linear()
    with pytest.raises(ValueError, match=r"^training\.monitor: unknown metric 'val_f1'. Valid: "
                                         r"train_loss, train_accuracy, val_loss, val_accuracy"):
        fit(model, sgd(model), DataLoader(separable(8), batch_size=4), keep_best=True,
            monitor="val_f1")


def test_a_train_metric_can_be_monitored_without_validation():
    seed_everything(0)
    model = mlp()
    best = EarlyStopping("train_loss", "min")
    _, history = fit(model, sgd(model, lr=0.5), DataLoader(separable(24), batch_size=8),
                     callbacks=[best], epochs=3)
    assert best.best_metric == min(row["train_loss"] for row in history)


# --- memory format, global modes ------------------------------------------------------


def test_channels_last_feeds_and_keeps_the_model_in_channels_last():
    seed_everything(0)
    model = SmallCNN(in_channels=3, num_classes=2, width=4)
    layouts = []
    model.features[0].register_forward_pre_hook(
        lambda module, args: layouts.append(args[0].is_contiguous(
            memory_format=torch.channels_last))
    )
    images = torch.randn(8, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    _, history = fit(model, sgd(model), DataLoader(TensorDataset(images, torch.arange(8) % 2),
                                                   batch_size=4), channels_last=True)
    assert layouts == [True, True]
    assert model.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert math.isfinite(history[0]["train_loss"])


class ModeRecorder(Callback):
    def __init__(self):
        self.deterministic, self.anomaly = [], []

    def on_batch_end(self):
        self.deterministic.append(torch.are_deterministic_algorithms_enabled())
        self.anomaly.append(torch.is_anomaly_enabled())


def test_deterministic_mode_is_on_during_fit_only():
    before = torch.are_deterministic_algorithms_enabled()
    assert not before
    model, recorder = linear(), ModeRecorder()
    fit(model, sgd(model), DataLoader(separable(8), batch_size=4), callbacks=[recorder],
        deterministic=True)
    assert recorder.deterministic == [True, True]
    assert torch.are_deterministic_algorithms_enabled() == before


def test_global_modes_are_restored_when_training_fails():
    model = linear()
    images, targets = separable(8).tensors
    images[0] = float("nan")
    with pytest.raises(FloatingPointError):
        fit(model, sgd(model), DataLoader(TensorDataset(images, targets), batch_size=4),
            deterministic=True)
    assert not torch.are_deterministic_algorithms_enabled()


def test_detect_anomaly_is_on_during_fit_only():
    model, recorder = linear(), ModeRecorder()
    fit(model, sgd(model), DataLoader(separable(8), batch_size=4), callbacks=[recorder],
        detect_anomaly=True)
    assert recorder.anomaly == [True, True]
    assert not torch.is_anomaly_enabled()


def test_detect_anomaly_names_the_backward_function_that_made_a_nan():
    """Anomaly mode stops in backward, at the first function whose gradient is NaN (before
    the NaN guard sees the loss), and is switched off again afterwards."""
    model = linear()
    images, targets = separable(8).tensors
    images[0] = float("nan")
    with pytest.raises(RuntimeError, match=r"Function 'LogSoftmaxBackward0' returned nan"), \
            pytest.warns(UserWarning, match="Error detected in LogSoftmaxBackward0"):
        fit(model, sgd(model), DataLoader(TensorDataset(images, targets), batch_size=4),
            detect_anomaly=True)
    assert not torch.is_anomaly_enabled()


# --- the NaN guard, batch limits -------------------------------------------------------


class PoisonAtEpoch(Callback):
    """Puts a NaN into one training sample when the given epoch starts."""

    def __init__(self, images: torch.Tensor, epoch: int, sample: int):
        self.images, self.epoch, self.sample = images, epoch, sample

    def on_epoch_start(self, epoch):
        if epoch == self.epoch:
            self.images[self.sample] = float("nan")


def test_nan_guard_names_the_epoch_and_batch():
    images, targets = separable(12).tensors
    model = linear()
    poison = PoisonAtEpoch(images, epoch=2, sample=9)  # batch 3 of 4-sample batches
    with pytest.raises(FloatingPointError, match=r"^loss is nan at epoch 2, batch 3: training "
                                                 r"diverged"):
        fit(model, sgd(model), DataLoader(TensorDataset(images, targets), batch_size=4),
            callbacks=[poison], epochs=3)


def test_without_the_nan_guard_a_nan_loss_is_recorded_not_raised():
    images, targets = separable(12).tensors
    images[9] = float("nan")
    model = linear()
    _, history = fit(model, sgd(model), DataLoader(TensorDataset(images, targets),
                                                   batch_size=4), nan_guard=False)
    assert math.isnan(history[0]["train_loss"])


class Counter(Callback):
    def __init__(self):
        self.batches, self.batches_per_epoch = 0, None

    def on_fit_start(self, epochs, batches_per_epoch, first_epoch):
        self.batches_per_epoch = batches_per_epoch

    def on_batch_end(self):
        self.batches += 1


def test_max_batches_per_epoch_limits_training_and_validation():
    model, counter = linear(), Counter()
    seen_in_eval = []
    model.register_forward_hook(
        lambda module, args, output: None if module.training else seen_in_eval.append(1)
    )
    fit(model, sgd(model), DataLoader(separable(20), batch_size=4),
        DataLoader(separable(20), batch_size=4), callbacks=[counter], epochs=2,
        max_batches_per_epoch=2)
    assert counter.batches_per_epoch == 2
    assert counter.batches == 4
    assert len(seen_in_eval) == 4  # 2 validation batches per epoch, not 5


# --- losses ----------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "kwargs"), [
    ("CrossEntropyLoss", {"label_smoothing": 0.1}),
    ("nllloss", {}),
    ("MultiMarginLoss", {"margin": 0.5}),
])
def test_a_loss_by_name_with_kwargs_trains(name, kwargs):
    seed_everything(0)
    model = mlp()
    loss_fn = build_loss(LossConfig(name, kwargs))
    _, history = fit(model, sgd(model, lr=0.5), DataLoader(separable(24), batch_size=8),
                     loss_fn=loss_fn, epochs=2)
    assert all(math.isfinite(row["train_loss"]) for row in history)


def test_label_smoothing_changes_the_loss_as_torch_defines_it():
    logits, targets = torch.tensor([[2.0, -1.0], [0.5, 0.3]]), torch.tensor([0, 1])
    smoothed = build_loss(LossConfig("CrossEntropyLoss", {"label_smoothing": 0.2}))
    assert smoothed(logits, targets) == pytest.approx(
        F.cross_entropy(logits, targets, label_smoothing=0.2).item()
    )
    assert smoothed(logits, targets) != pytest.approx(F.cross_entropy(logits, targets).item())


def test_balanced_class_weights_are_n_over_k_times_count():
    targets = torch.tensor([0, 0, 0, 1, 1, 2])  # n = 6, k = 3, counts 3, 2, 1
    loss = build_loss(LossConfig("CrossEntropyLoss", {"label_smoothing": 0.1},
                                 class_weights="balanced"), targets)
    assert loss.weight.tolist() == pytest.approx([6 / 9, 6 / 6, 6 / 3])
    assert loss.label_smoothing == 0.1
    assert balanced_class_weights([1, 0, 1, 1]).tolist() == pytest.approx([2.0, 2 / 3])


def test_balanced_weights_train_through_the_engine():
    seed_everything(0)
    images, targets = separable(24).tensors
    keep = (targets == 1) | (torch.arange(24) < 6)  # 3 of class 0, 12 of class 1
    data = TensorDataset(images[keep], targets[keep])
    loss_fn = build_loss(LossConfig("CrossEntropyLoss", class_weights="balanced"),
                         data.tensors[1])
    assert loss_fn.weight.tolist() == pytest.approx([15 / 6, 15 / 24])
    model = mlp()
    _, history = fit(model, sgd(model), DataLoader(data, batch_size=5), loss_fn=loss_fn)
    assert math.isfinite(history[0]["train_loss"])


def test_a_loss_without_class_weights_refuses_balanced():
    with pytest.raises(ValueError, match=r"^training\.loss\.class_weights: MSELoss takes no "
                                         r"class weights"):
        build_loss(LossConfig("MSELoss", class_weights="balanced"), torch.tensor([0, 1]))


def test_balanced_weights_need_the_training_targets():
    with pytest.raises(ValueError, match=r"^training\.loss\.class_weights: balanced weights "
                                         r"need the training targets"):
        build_loss(LossConfig("CrossEntropyLoss", class_weights="balanced"))


def test_balanced_weights_refuse_a_class_without_examples():
    with pytest.raises(ValueError, match=r"class indices \[1\] have no training example"):
        balanced_class_weights(torch.tensor([0, 2, 2]))
    # A class above every training target is caught too, given the number of classes.
    with pytest.raises(ValueError, match=r"class indices \[2\] have no training example"):
        balanced_class_weights(torch.tensor([0, 1, 1]), num_classes=3)


def test_unknown_loss_kwargs_name_the_key():
    with pytest.raises(ValueError, match=r"^training\.loss\.kwargs\.smoothing: CrossEntropyLoss\("
                                         r"smoothing=0\.1\) failed"):
        build_loss(LossConfig("CrossEntropyLoss", {"smoothing": 0.1}))


# --- pretrained weights, freezing ------------------------------------------------------


def test_strict_loading_lists_what_is_skipped_missing_and_unexpected():
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 2))
    before = weights(model)
    source = {"0.weight": torch.ones(2, 3), "0.bias": torch.ones(5),
              "extra.weight": torch.ones(1)}
    with pytest.raises(ValueError) as error:
        load_pretrained(model, source, strict=True)
    message = str(error.value)
    assert message.startswith("model.pretrained_strict: the pretrained state_dict does not "
                              "match Sequential exactly")
    assert "skipped (shape differs) ['0.bias (file (5,), model (2,))']" in message
    assert "missing ['1.weight', '1.bias']" in message
    assert "unexpected ['extra.weight']" in message
    assert same(weights(model), before)  # nothing half-loaded


def test_strict_loading_of_an_exact_match_loads_everything():
    source = nn.Sequential(nn.Linear(3, 2))
    model = nn.Sequential(nn.Linear(3, 2))
    report = load_pretrained(model, {f"module.{k}": v for k, v in source.state_dict().items()},
                             strict=True)
    assert report.loaded == ["0.weight", "0.bias"]
    assert same(weights(model), weights(source))


def test_a_wrapped_checkpoint_with_another_head_loads_into_a_torchvision_model(caplog):
    """A DataParallel-saved resnet18 checkpoint dict for 1000 classes, fine-tuned to 10:
    everything but the head loads; the head is skipped and the log says so."""
    torch.manual_seed(0)
    source = build_model("resnet18", num_classes=1000, in_channels=3).state_dict()
    saved = {"model": {f"module.{k}": v + 1 if v.is_floating_point() else v
                       for k, v in source.items()}, "epoch": 90}
    model = build_model("resnet18", num_classes=10, in_channels=3)
    head = model.fc.weight.detach().clone()
    with caplog.at_level(logging.INFO, logger="kedro_torch.pytorch.models"):
        report = load_pretrained(model, state_dict_from(saved, "resnet18.pt"))
    assert sorted(report.skipped) == ["fc.bias (file (1000,), model (10,))",
                                      "fc.weight (file (1000, 512), model (10, 512))"]
    assert report.missing == report.unexpected == []
    assert torch.equal(model.conv1.weight, source["conv1.weight"] + 1)
    assert torch.equal(model.fc.weight, head)
    assert "2 skipped (shape differs): ['fc.weight (file (1000, 512)" in caplog.text


@pytest.fixture
def no_network(monkeypatch):
    """Fail the test if torchvision_weights tries to download."""

    def download(*args, **kwargs):
        raise AssertionError("tried to download")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", download)


def test_unknown_weights_name_lists_the_valid_ones_without_network(no_network):
    with pytest.raises(ValueError, match=r"^model\.weights: resnet18 has no weights 'IMAGENET'\. "
                                         r"Valid: DEFAULT, IMAGENET1K_V1$"):
        torchvision_weights("resnet18", "IMAGENET")


def test_weights_for_a_model_torchvision_does_not_have(no_network):
    with pytest.raises(ValueError, match=r"^model\.weights: torchvision has no weights for "
                                         r"'small_cnn'"):
        torchvision_weights("small_cnn", "DEFAULT")


@pytest.mark.parametrize("weights_name", ["DEFAULT", "IMAGENET1K_V1"])
def test_weights_that_cannot_be_downloaded_say_what_to_do_offline(weights_name, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(RuntimeError) as error:
        torchvision_weights("resnet18", weights_name)
    message = str(error.value)
    assert message.startswith("model.weights: could not download ResNet18_Weights.IMAGENET1K_V1")
    assert "This needs network access" in message
    assert "model.pretrained_path" in message
    assert isinstance(error.value.__cause__, urllib.error.URLError)


def test_torchvision_weights_load_with_weights_only(monkeypatch):
    calls = []

    def fake_download(url, **kwargs):
        calls.append((url, kwargs))
        return {"fc.weight": torch.zeros(1)}

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_download)
    assert torchvision_weights("resnet18", "DEFAULT").keys() == {"fc.weight"}
    ((url, kwargs),) = calls
    assert url.startswith("https://download.pytorch.org/models/resnet18")
    assert kwargs["weights_only"] is True
    assert kwargs["check_hash"] is True


def parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> set[str]:
    return {name for name in before if not torch.equal(before[name], after[name])}


def test_freeze_backbone_trains_only_the_head_until_unfreeze_at_epoch():
    """Before epoch 2 only the classifier's parameters move (weight decay included);
    from epoch 2 on every parameter trains."""
    seed_everything(0)
    model = SmallCNN(in_channels=1, num_classes=2, width=4)
    head = head_parameter_names(model)
    assert head == {"classifier.1.weight", "classifier.1.bias"}
    snapshots = {}

    class ParameterSnapshots(Callback):
        def on_epoch_end(self, epoch, metrics):
            snapshots[epoch] = parameters(model)

    initial = parameters(model)
    images = torch.randn(8, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.1)
    fit(model, optimizer, DataLoader(TensorDataset(images, torch.arange(8) % 2), batch_size=4),
        callbacks=[FreezeBackbone(model, head, unfreeze_at_epoch=2), ParameterSnapshots()],
        epochs=3)

    assert changed(initial, snapshots[1]) == head
    assert changed(snapshots[1], snapshots[2]) == set(initial)
    assert changed(snapshots[2], snapshots[3]) == set(initial)


def test_freeze_backbone_without_unfreeze_keeps_the_backbone_frozen():
    seed_everything(0)
    model = SmallCNN(in_channels=1, num_classes=2, width=4)
    head = head_parameter_names(model)
    initial = parameters(model)
    images = torch.randn(8, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    fit(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
        DataLoader(TensorDataset(images, torch.arange(8) % 2), batch_size=4),
        callbacks=[FreezeBackbone(model, head, unfreeze_at_epoch=None)], epochs=2)
    assert changed(initial, parameters(model)) == head


def test_mixup_soft_targets_train_and_count_accuracy(tmp_path):
    """MixUp gives (batch, classes) targets: the loss takes them, accuracy uses their argmax."""
    seed_everything(0)
    images = torch.randn(16, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    targets = torch.arange(16) % 2
    mixup = v2.MixUp(alpha=0.4, num_classes=2)
    soft_batches = DataLoader(TensorDataset(images, targets), batch_size=8,
                              collate_fn=lambda batch: mixup(*default_collate(batch)))
    assert next(iter(soft_batches))[1].shape == (8, 2)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    (optimizer,) = build_optimizers(model, OptimizerConfig("SGD", {"lr": 0.1}))
    trainer = Trainer(model, [optimizer], nn.CrossEntropyLoss(), torch.device("cpu"),
                      TrainingConfig(epochs=2), task=CLASSIFIER)
    history = trainer.fit(soft_batches)
    assert all(0 <= row["train_accuracy"] <= 1 for row in history)
