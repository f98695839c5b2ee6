"""Every torch.optim optimizer and lr_scheduler class, chosen by name and trained a few
steps through the engine, with the special cases (Muon, SparseAdam, LBFGS, nested and
callable-taking schedulers, per-step intervals, warm-up, ReduceLROnPlateau)."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from torch import nn
from torch.optim import lr_scheduler
from torch.utils.data import DataLoader, TensorDataset

from kedro_torch.pytorch.checkpoints import CheckpointStore
from kedro_torch.pytorch.config import NamedSpec, OptimizerConfig, SchedulerConfig, TrainingConfig
from kedro_torch.pytorch.engine import Trainer, seed_everything
from kedro_torch.pytorch.models import SmallCNN
from kedro_torch.pytorch.optimizers import (
    build_optimizers,
    build_schedulers,
    optimizer_classes,
    scheduler_classes,
)
from kedro_torch.pytorch.tasks import image_classification

CLASSIFIER = image_classification.ImageClassification()  # what the loop is given

CPU = torch.device("cpu")
THIS_MODULE = __name__  # "tests.test_optimizers_and_schedulers": lr_lambda paths point here
BATCHES = 3  # per epoch: 12 samples in batches of 4


# Tiny tensors: one thread is quicker (see tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


# --- functions named by dotted path in scheduler kwargs ---------------------------------


def half_per_epoch(epoch: int) -> float:
    """For LambdaLR: the lr factor after ``epoch`` steps."""
    return 0.5**epoch


def half(epoch: int) -> float:
    """For MultiplicativeLR: multiply the lr by this at every step."""
    return 0.5


# --- tiny data and models -----------------------------------------------------------


def images_and_targets(n: int = 12, seed: int = 0) -> TensorDataset:
    """1x4x4 'images' in [0, 1], two classes told apart by the brightness of the top half."""
    generator = torch.Generator().manual_seed(seed)
    targets = torch.arange(n) % 2
    images = torch.rand(n, 1, 4, 4, generator=generator) * 0.5
    images[:, :, :2] += targets.view(n, 1, 1, 1) * 0.5
    return TensorDataset(images, targets)


def loader(n: int = 12, seed: int = 0) -> DataLoader:
    return DataLoader(images_and_targets(n, seed), batch_size=4)


class MLP(nn.Module):
    """A conv layer, a hidden 2-D weight matrix and a head named ``fc`` (tanh: no unit
    can die, so every parameter gets a gradient)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.hidden = nn.Linear(32, 8)
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.tanh(self.hidden(torch.tanh(self.conv(x)).flatten(1))))


class SparseEmbeddingModel(nn.Module):
    """Quantises each pixel to one of 4 levels, embeds (pixel, level) with a sparse
    embedding, averages, and classifies with a dense head."""

    def __init__(self, pixels: int = 16, levels: int = 4):
        super().__init__()
        self.levels = levels
        self.embedding = nn.Embedding(pixels * levels, 8, sparse=True)
        self.register_buffer("offsets", torch.arange(pixels) * levels)
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        level = (x.flatten(1).clamp(0, 0.999) * self.levels).long()
        return self.fc(self.embedding(level + self.offsets).mean(dim=1))


def model_for(name: str) -> nn.Module:
    return SparseEmbeddingModel() if name == "SparseAdam" else MLP()


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def record_lrs(optimizer: torch.optim.Optimizer) -> list[float]:
    """The lr of the first parameter group at every optimizer step: the lr each step used."""
    lrs = []
    optimizer.register_step_pre_hook(lambda opt, *_: lrs.append(opt.param_groups[0]["lr"]))
    return lrs


def train(
    model: nn.Module,
    optimizers: list,
    epochs: int,
    schedulers: list = (),
    val: DataLoader | None = None,
    checkpoints: CheckpointStore | None = None,
    **settings,
) -> tuple[Trainer, list[dict]]:
    trainer = Trainer(model, optimizers, nn.CrossEntropyLoss(), CPU,
                      TrainingConfig(epochs=epochs, **settings), schedulers, (), checkpoints,
                      task=CLASSIFIER)
    return trainer, trainer.fit(loader(), val)


# --- optimizers ---------------------------------------------------------------------

# Arguments an optimizer needs to make visible progress in a few steps.
OPTIMIZER_KWARGS = {
    "LBFGS": {"lr": 0.5, "max_iter": 4},
    "Muon": {"lr": 0.02},
    "SparseAdam": {"lr": 0.05},
    "Adadelta": {"lr": 1.0},
}


def test_the_issue_s_optimizers_are_all_found():
    """The registry is read from torch.optim; these are the ones the issue promises."""
    promised = {"Adadelta", "Adafactor", "Adagrad", "Adam", "AdamW", "Adamax", "ASGD", "LBFGS",
                "Muon", "NAdam", "RAdam", "RMSprop", "Rprop", "SGD", "SparseAdam"}
    assert promised <= set(optimizer_classes())


@pytest.mark.parametrize("name", sorted(optimizer_classes()))
def test_every_optimizer_trains_through_the_engine(name, tmp_path):
    """Each optimizer, by name, changes every parameter, keeps the loss finite, and its
    state goes into a checkpoint that loads with weights_only=True."""
    seed_everything(0)
    model = model_for(name)
    kwargs = OPTIMIZER_KWARGS.get(name, {"lr": 0.01})
    optimizers = build_optimizers(model, OptimizerConfig(name.lower(), kwargs))
    assert type(optimizers[0]).__name__ == name
    before = snapshot(model)
    store = CheckpointStore(str(tmp_path / "checkpoints"))

    _, history = train(model, optimizers, epochs=2, checkpoints=store)

    assert all(math.isfinite(row["train_loss"]) for row in history)
    after = snapshot(model)
    unchanged = [n for n in before if torch.equal(before[n], after[n])]
    assert unchanged == []
    saved = store.load()
    assert len(saved["optimizers"]) == len(optimizers)
    assert saved["epoch"] == 2


def test_lbfgs_steps_through_a_closure_that_re_evaluates_the_loss():
    """LBFGS calls the closure several times per step; a plain step() would fail."""
    seed_everything(0)
    model = MLP()
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    optimizers = build_optimizers(model, OptimizerConfig("LBFGS", {"lr": 0.5, "max_iter": 4}))
    train(model, optimizers, epochs=1)
    assert len(calls) > BATCHES


def test_lbfgs_refuses_gradient_accumulation():
    model = MLP()
    optimizers = build_optimizers(model, OptimizerConfig("LBFGS", {"lr": 0.5}))
    with pytest.raises(ValueError, match=r"training\.optimizer\.name: LBFGS .* accumulate"):
        Trainer(model, optimizers, nn.CrossEntropyLoss(), CPU,
                TrainingConfig(epochs=1, accumulate_grad_batches=2), task=CLASSIFIER)


def test_muon_takes_the_hidden_matrices_and_adamw_the_rest(caplog):
    """Muon is for 2-D weights below the head; biases, conv kernels and the head go to
    the fallback AdamW, and the log says which went where."""
    seed_everything(0)
    model = MLP()
    with caplog.at_level(logging.INFO, logger="kedro_torch.pytorch.optimizers"):
        muon, adamw = build_optimizers(model, OptimizerConfig("Muon", {"lr": 0.02}))

    assert isinstance(muon, torch.optim.Muon)
    assert isinstance(adamw, torch.optim.AdamW)

    def names(optimizer):
        ids = {id(p) for group in optimizer.param_groups for p in group["params"]}
        return {n for n, p in model.named_parameters() if id(p) in ids}

    assert names(muon) == {"hidden.weight"}
    assert names(adamw) == {"conv.weight", "conv.bias", "hidden.bias", "fc.weight", "fc.bias"}
    assert "Muon takes 1 tensors (hidden.weight); AdamW takes the other 5 (conv.weight, " \
           "conv.bias, hidden.bias, fc.weight, fc.bias)" in caplog.text

    before = snapshot(model)
    train(model, [muon, adamw], epochs=1)
    after = snapshot(model)
    assert not any(torch.equal(before[n], after[n]) for n in before)


def test_muon_fallback_is_configurable():
    config = OptimizerConfig("Muon", {"lr": 0.02}, fallback=NamedSpec("SGD", {"lr": 0.1}))
    _, fallback = build_optimizers(MLP(), config)
    assert isinstance(fallback, torch.optim.SGD)
    assert fallback.param_groups[0]["lr"] == 0.1


def test_muon_without_hidden_matrices_says_why():
    """SmallCNN's only 2-D weight is its head: Muon would have nothing to do."""
    with pytest.raises(ValueError, match=r"training\.optimizer\.name: Muon needs 2-D weight"):
        build_optimizers(SmallCNN(1, 2, width=4), OptimizerConfig("Muon", {"lr": 0.02}))


def test_sparse_adam_trains_the_sparse_embedding_and_the_fallback_the_rest(caplog):
    seed_everything(0)
    model = SparseEmbeddingModel()
    with caplog.at_level(logging.INFO, logger="kedro_torch.pytorch.optimizers"):
        sparse, dense = build_optimizers(model, OptimizerConfig("SparseAdam", {"lr": 0.05}))
    assert isinstance(sparse, torch.optim.SparseAdam)
    assert isinstance(dense, torch.optim.AdamW)
    assert [p for g in sparse.param_groups for p in g["params"]] == [model.embedding.weight]
    assert {id(p) for g in dense.param_groups for p in g["params"]} == {
        id(model.fc.weight), id(model.fc.bias)
    }
    assert "SparseAdam takes 1 tensors (embedding.weight); AdamW takes the other 2" in caplog.text

    before = model.embedding.weight.detach().clone()
    _, history = train(model, [sparse, dense], epochs=3)
    assert not torch.equal(before, model.embedding.weight)
    assert history[-1]["train_loss"] < history[0]["train_loss"]


@pytest.mark.parametrize(("setting", "measure"), [
    ("clip_grad_value", lambda grads: grads.abs().max()),
    ("clip_grad_norm", lambda grads: grads.norm()),
])
def test_sparse_gradients_are_clipped_too(setting, measure):
    """Clipping covers the sparse embedding's gradient: the optimizers see all gradients
    within the bound (at it exactly, so they were larger before)."""
    seed_everything(0)
    model = SparseEmbeddingModel()
    sparse, dense = build_optimizers(model, OptimizerConfig("SparseAdam", {"lr": 0.05}))
    seen = []

    def record(*_):
        grads = torch.cat([p.grad.to_dense().flatten() for p in model.parameters()])
        seen.append(measure(grads).item())

    sparse.register_step_pre_hook(record)
    train(model, [sparse, dense], epochs=1, **{setting: 1e-3})
    assert seen == pytest.approx([1e-3] * BATCHES, rel=1e-4)


def test_sparse_adam_on_a_dense_model_says_why():
    with pytest.raises(ValueError) as error:
        build_optimizers(SmallCNN(1, 2, width=4), OptimizerConfig("SparseAdam", {"lr": 0.01}))
    message = str(error.value)
    assert message.startswith("training.optimizer.name: SparseAdam")
    assert "sparse=True" in message
    assert "SmallCNN has none" in message


def test_parameter_groups_without_decay_on_norms_and_biases_and_a_head_lr():
    """Fine-tuning set-up: the head has its own lr; norm and bias parameters no decay."""
    model = SmallCNN(1, 2, width=4)
    (optimizer,) = build_optimizers(model, OptimizerConfig(
        "AdamW", {"lr": 0.001, "weight_decay": 0.1}, no_weight_decay_on_norm_and_bias=True,
        head_lr=0.01,
    ))
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    settings = {n: (group_of[id(p)]["lr"], group_of[id(p)]["weight_decay"])
                for n, p in model.named_parameters()}
    assert settings == {
        "features.0.weight": (0.001, 0.1),  # conv, no bias
        "features.1.weight": (0.001, 0.0),  # batch norm
        "features.1.bias": (0.001, 0.0),
        "features.3.weight": (0.001, 0.1),
        "features.4.weight": (0.001, 0.0),
        "features.4.bias": (0.001, 0.0),
        "features.7.weight": (0.001, 0.1),
        "features.8.weight": (0.001, 0.0),
        "features.8.bias": (0.001, 0.0),
        "features.10.weight": (0.001, 0.1),
        "features.11.weight": (0.001, 0.0),
        "features.11.bias": (0.001, 0.0),
        "classifier.1.weight": (0.01, 0.1),
        "classifier.1.bias": (0.01, 0.0),
    }


def test_unknown_fallback_name_names_its_key():
    with pytest.raises(ValueError, match=r"^training\.optimizer\.fallback\.name: unknown name"):
        build_optimizers(MLP(), OptimizerConfig("Muon", {"lr": 0.02},
                                                fallback=NamedSpec("Adamm", {})))


def test_optimizer_kwargs_it_rejects_name_the_key():
    with pytest.raises(ValueError, match=r"^training\.optimizer\.kwargs\.weight_decay: "
                                         r"Rprop\(lr=0\.01, weight_decay=0\.1\) failed"):
        build_optimizers(MLP(), OptimizerConfig("Rprop", {"lr": 0.01, "weight_decay": 0.1}))


# --- schedulers ---------------------------------------------------------------------

LR = 0.1
EPOCHS = 3

# kwargs each scheduler needs, and the lr it prescribes at the start of each of 3
# epochs (None where the lr moves per step or on a metric: checked separately).
SCHEDULERS = {
    "StepLR": ({"step_size": 1, "gamma": 0.5}, [0.1, 0.05, 0.025]),
    "MultiStepLR": ({"milestones": [2], "gamma": 0.5}, [0.1, 0.1, 0.05]),
    "ExponentialLR": ({"gamma": 0.5}, [0.1, 0.05, 0.025]),
    "ConstantLR": ({"factor": 0.5, "total_iters": 2}, [0.05, 0.05, 0.1]),
    "LinearLR": ({"start_factor": 0.5, "total_iters": 2}, [0.05, 0.075, 0.1]),
    "CosineAnnealingLR": ({}, [0.1, 0.075, 0.025]),  # T_max filled in: 3 epochs
    "PolynomialLR": ({}, [0.1, 0.1 * 2 / 3, 0.1 / 3]),  # total_iters filled in: 3 epochs
    "CosineAnnealingWarmRestarts": ({"T_0": 2}, [0.1, 0.05, 0.1]),
    "LambdaLR": ({"lr_lambda": f"{THIS_MODULE}.half_per_epoch"}, [0.1, 0.05, 0.025]),
    "MultiplicativeLR": ({"lr_lambda": f"{THIS_MODULE}.half"}, [0.1, 0.05, 0.025]),
    "SequentialLR": ({
        "schedulers": [{"name": "ConstantLR", "kwargs": {"factor": 0.5, "total_iters": 1}},
                       {"name": "ExponentialLR", "kwargs": {"gamma": 0.5}}],
        "milestones": [1],
    }, [0.05, 0.1, 0.05]),
    "ChainedScheduler": ({
        "schedulers": [{"name": "ConstantLR", "kwargs": {"factor": 0.5, "total_iters": 2}},
                       {"name": "ExponentialLR", "kwargs": {"gamma": 0.5}}],
    }, [0.05, 0.025, 0.025]),
    "CyclicLR": ({"base_lr": 0.01, "max_lr": 0.1, "step_size_up": 2}, None),
    "OneCycleLR": ({}, None),
    "ReduceLROnPlateau": ({"patience": 0}, None),
}


def test_the_table_covers_every_scheduler_class():
    """A scheduler added to torch must be added to the table above (and so tested)."""
    assert set(SCHEDULERS) == set(scheduler_classes())


@pytest.mark.parametrize("name", sorted(scheduler_classes()))
def test_every_scheduler_trains_through_the_engine(name, tmp_path):
    """Built by name from a SchedulerConfig, stepped by the engine for 3 epochs; the lr
    follows the schedule, and the scheduler's state checkpoints with weights_only."""
    kwargs, expected = SCHEDULERS[name]
    seed_everything(0)
    model = MLP()
    optimizers = build_optimizers(model, OptimizerConfig("SGD", {"lr": LR, "momentum": 0.9}))
    schedulers = build_schedulers(optimizers, SchedulerConfig(name.upper(), kwargs), EPOCHS,
                                  steps_per_epoch=BATCHES, monitor_mode="min")
    (scheduled,) = schedulers
    assert type(scheduled.scheduler).__name__ == name
    lrs = record_lrs(optimizers[0])
    store = CheckpointStore(str(tmp_path / "checkpoints"))

    _, history = train(model, optimizers, EPOCHS, schedulers, val=loader(8, seed=1),
                       checkpoints=store)

    assert all(math.isfinite(row["train_loss"]) for row in history)
    if expected is not None:
        assert [row["lr"] for row in history] == pytest.approx(expected)
    else:
        assert len(set(lrs)) > 1 or name == "ReduceLROnPlateau"
    saved = store.load()
    assert saved["schedulers"][0].keys() == scheduled.scheduler.state_dict().keys()


def test_per_step_schedulers_change_the_lr_within_an_epoch():
    """CyclicLR steps per optimizer step by default: up 2 steps, down 2, up again."""
    seed_everything(0)
    model = MLP()
    optimizers = build_optimizers(model, OptimizerConfig("SGD", {"lr": LR, "momentum": 0.9}))
    schedulers = build_schedulers(
        optimizers, SchedulerConfig("CyclicLR", {"base_lr": 0.01, "max_lr": 0.1,
                                                 "step_size_up": 2}),
        epochs=2, steps_per_epoch=BATCHES, monitor_mode="min",
    )
    lrs = record_lrs(optimizers[0])
    train(model, optimizers, 2, schedulers)
    assert lrs == pytest.approx([0.01, 0.055, 0.1, 0.055, 0.01, 0.055])


@pytest.mark.parametrize("name", sorted(scheduler_classes()))
def test_default_interval_is_per_step_only_for_one_cycle_and_cyclic(name):
    kwargs, _ = SCHEDULERS[name]
    optimizers = build_optimizers(MLP(), OptimizerConfig("SGD", {"lr": LR, "momentum": 0.9}))
    (scheduled,) = build_schedulers(optimizers, SchedulerConfig(name, kwargs), EPOCHS,
                                    steps_per_epoch=BATCHES, monitor_mode="min")
    expected = "step" if name in {"OneCycleLR", "CyclicLR"} else "epoch"
    assert scheduled.interval == expected


def test_interval_can_be_set_explicitly():
    optimizers = build_optimizers(MLP(), OptimizerConfig("SGD", {"lr": LR}))
    (scheduled,) = build_schedulers(
        optimizers, SchedulerConfig("StepLR", {"step_size": 1}, interval="step"), EPOCHS,
        steps_per_epoch=BATCHES, monitor_mode="min",
    )
    assert scheduled.interval == "step"


def test_one_cycle_fills_in_total_steps_and_completes_its_cycle():
    """total_steps = epochs x steps per epoch: the run ends exactly at the end of the
    cycle, never with OneCycleLR's 'stepped too many times' error."""
    seed_everything(0)
    model = MLP()
    optimizers = build_optimizers(model, OptimizerConfig("AdamW", {"lr": LR}))
    schedulers = build_schedulers(optimizers, SchedulerConfig("OneCycleLR"), EPOCHS,
                                  steps_per_epoch=BATCHES, monitor_mode="min")
    scheduler = schedulers[0].scheduler
    assert scheduler.total_steps == EPOCHS * BATCHES
    lrs = record_lrs(optimizers[0])

    train(model, optimizers, EPOCHS, schedulers)

    assert len(lrs) == EPOCHS * BATCHES
    assert lrs[0] == pytest.approx(LR / 25)  # starts at max_lr / div_factor
    assert max(lrs) == pytest.approx(LR, rel=0.01)  # max_lr: the optimizer's lr
    # The last step trains at initial_lr / final_div_factor = (max_lr / 25) / 1e4.
    assert lrs[-1] == pytest.approx(LR / 25 / 1e4)


def test_one_cycle_steps_per_optimizer_step_with_gradient_accumulation():
    """With accumulation the optimizer steps less often than batches come; the node passes
    the optimizer steps per epoch, and the cycle still fits exactly."""
    seed_everything(0)
    model = MLP()
    optimizers = build_optimizers(model, OptimizerConfig("AdamW", {"lr": LR}))
    steps = math.ceil(BATCHES / 2)
    schedulers = build_schedulers(optimizers, SchedulerConfig("OneCycleLR"), EPOCHS,
                                  steps_per_epoch=steps, monitor_mode="min")
    train(model, optimizers, EPOCHS, schedulers, accumulate_grad_batches=2)
    assert schedulers[0].scheduler.last_epoch == EPOCHS * steps


def test_warmup_chains_linear_lr_before_the_main_scheduler():
    """Epoch 1 trains at warmup_start_factor x lr; after the warm-up the main scheduler
    starts from the full lr."""
    seed_everything(0)
    model = MLP()
    optimizers = build_optimizers(model, OptimizerConfig("SGD", {"lr": LR}))
    config = SchedulerConfig("StepLR", {"step_size": 1, "gamma": 0.5}, warmup_epochs=2,
                             warmup_start_factor=0.1)
    schedulers = build_schedulers(optimizers, config, 4, BATCHES, monitor_mode="min")
    scheduler = schedulers[0].scheduler
    assert isinstance(scheduler, lr_scheduler.SequentialLR)
    assert [type(s) for s in scheduler._schedulers] == [lr_scheduler.LinearLR,
                                                       lr_scheduler.StepLR]
    _, history = train(model, optimizers, 4, schedulers)
    assert [row["lr"] for row in history] == pytest.approx([0.01, 0.055, 0.1, 0.05])


def test_warmup_alone_without_a_main_scheduler():
    optimizers = build_optimizers(MLP(), OptimizerConfig("SGD", {"lr": LR}))
    (scheduled,) = build_schedulers(optimizers, SchedulerConfig(None, warmup_epochs=2,
                                                                warmup_start_factor=0.5),
                                    4, BATCHES, monitor_mode="min")
    assert isinstance(scheduled.scheduler, lr_scheduler.LinearLR)
    assert optimizers[0].param_groups[0]["lr"] == pytest.approx(0.05)


def test_warmup_before_a_per_step_scheduler_counts_in_steps():
    """OneCycleLR after a one-epoch warm-up: the warm-up lasts BATCHES steps and the cycle
    the remaining steps, ending exactly with the run."""
    seed_everything(0)
    model = MLP()
    optimizers = build_optimizers(model, OptimizerConfig("AdamW", {"lr": LR}))
    schedulers = build_schedulers(optimizers, SchedulerConfig("OneCycleLR", warmup_epochs=1),
                                  EPOCHS, BATCHES, monitor_mode="min")
    one_cycle = schedulers[0].scheduler._schedulers[1]
    assert one_cycle.total_steps == (EPOCHS - 1) * BATCHES
    train(model, optimizers, EPOCHS, schedulers)
    assert one_cycle.last_epoch == (EPOCHS - 1) * BATCHES


def test_reduce_on_plateau_steps_on_the_monitored_validation_metric():
    """ReduceLROnPlateau gets the val_loss of each epoch. Counting only a drop of 10 (more
    than this loss can fall) as an improvement, every epoch after the first is a plateau:
    after `patience` of them the lr is cut by `factor`."""
    seed_everything(0)
    model = MLP()
    optimizers = build_optimizers(model, OptimizerConfig("SGD", {"lr": 0.1}))
    kwargs = {"patience": 1, "factor": 0.5, "threshold": 10, "threshold_mode": "abs"}
    schedulers = build_schedulers(optimizers, SchedulerConfig("ReduceLROnPlateau", kwargs), 5,
                                  BATCHES, monitor_mode="min")
    _, history = train(model, optimizers, 5, schedulers, val=loader(8, seed=1))
    assert [row["lr"] for row in history] == pytest.approx([0.1, 0.1, 0.1, 0.05, 0.05])
    # The value it compares against is epoch 1's val_loss, exactly.
    assert schedulers[0].scheduler.best == history[0]["val_loss"]


def test_reduce_on_plateau_takes_its_mode_from_the_monitor():
    optimizers = build_optimizers(MLP(), OptimizerConfig("SGD", {"lr": LR}))
    (scheduled,) = build_schedulers(optimizers, SchedulerConfig("ReduceLROnPlateau"), 3,
                                    BATCHES, monitor_mode="max")
    assert scheduled.scheduler.mode == "max"
    assert scheduled.on_metric


def test_reduce_on_plateau_without_a_validation_split_says_so():
    model = MLP()
    optimizers = build_optimizers(model, OptimizerConfig("SGD", {"lr": LR}))
    schedulers = build_schedulers(optimizers, SchedulerConfig("ReduceLROnPlateau"), 3, BATCHES,
                                  monitor_mode="min")
    with pytest.raises(ValueError, match=r"^training\.monitor: ReduceLROnPlateau needs "
                                         r"val_loss, but there is no validation split"):
        train(model, optimizers, 3, schedulers, val=None)


def test_reduce_on_plateau_refuses_a_warmup():
    optimizers = build_optimizers(MLP(), OptimizerConfig("SGD", {"lr": LR}))
    with pytest.raises(ValueError, match=r"^training\.scheduler\.warmup_epochs"):
        build_schedulers(optimizers, SchedulerConfig("ReduceLROnPlateau", warmup_epochs=1), 3,
                         BATCHES, monitor_mode="min")


def build_one(name: str, kwargs: dict):
    optimizers = build_optimizers(MLP(), OptimizerConfig("SGD", {"lr": LR}))
    return build_schedulers(optimizers, SchedulerConfig(name, kwargs), EPOCHS, BATCHES, "min")


@pytest.mark.parametrize("path", [f"{THIS_MODULE}.no_such_function", "no_such_module.f",
                                  "math.pi", "lambda epoch: 0.5"])
def test_lr_lambda_that_cannot_be_imported_names_the_key(path):
    with pytest.raises(ValueError, match=r"^training\.scheduler\.kwargs\.lr_lambda: "):
        build_one("LambdaLR", {"lr_lambda": path})


@pytest.mark.parametrize("name", ["LambdaLR", "MultiplicativeLR"])
def test_lr_lambda_must_be_a_dotted_path(name):
    with pytest.raises(ValueError, match=r"^training\.scheduler\.kwargs\.lr_lambda: expected "
                                         r"a dotted import path"):
        build_one(name, {"lr_lambda": "half"})


def test_missing_lr_lambda_names_the_key():
    with pytest.raises(ValueError, match=r"^training\.scheduler\.kwargs\.lr_lambda: LambdaLR "
                                         r"needs the dotted import path"):
        build_one("LambdaLR", {})


def test_lr_lambda_strings_are_never_evaluated(tmp_path):
    """A string of code is refused as a path, and the code never runs."""
    marker = tmp_path / "marker"
    code = f"__import__('pathlib').Path({str(marker)!r}).touch"
    with pytest.raises(ValueError, match=r"training\.scheduler\.kwargs\.lr_lambda: cannot import"):
        build_one("LambdaLR", {"lr_lambda": code})
    assert not marker.exists()


def test_nested_lambda_errors_name_the_nested_key():
    kwargs = {"schedulers": [{"name": "LambdaLR", "kwargs": {"lr_lambda": "nodots"}}],
              "milestones": []}
    with pytest.raises(ValueError, match=r"^training\.scheduler\.kwargs\.schedulers\[0\]\."
                                         r"kwargs\.lr_lambda: expected a dotted"):
        build_one("SequentialLR", kwargs)


def test_nested_unknown_scheduler_name_names_the_nested_key():
    kwargs = {"schedulers": [{"name": "StepLR", "kwargs": {"step_size": 1}}, {"name": "Nope"}]}
    with pytest.raises(ValueError, match=r"^training\.scheduler\.kwargs\.schedulers\[1\]\.name: "
                                         r"unknown name 'Nope'"):
        build_one("ChainedScheduler", kwargs)


@pytest.mark.parametrize("schedulers", [None, [], ["StepLR"], [{"name": "StepLR", "x": 1}]])
def test_nested_schedulers_must_be_a_list_of_specs(schedulers):
    kwargs = {"milestones": [1]} | ({} if schedulers is None else {"schedulers": schedulers})
    with pytest.raises(ValueError, match=r"^training\.scheduler\.kwargs\.schedulers"):
        build_one("SequentialLR", kwargs)
