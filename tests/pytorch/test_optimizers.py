"""Optimizers, schedulers and losses resolved by name from torch itself, with the
kwargs a user gives (those set to null left out)."""

from __future__ import annotations

import inspect

import pytest
import torch
import yaml
from torch import nn
from torch.optim import lr_scheduler

from kedro_torch.pytorch.config import (
    LossConfig,
    NamedSpec,
    OptimizerConfig,
    SchedulerConfig,
    TrainingConfig,
    parse,
)
from kedro_torch.pytorch.engine import seed_everything
from kedro_torch.pytorch.optimizers import (
    build_loss,
    build_optimizers,
    build_schedulers,
    loss_classes,
    optimizer_classes,
    resolve,
    scheduler_classes,
)
from tests.conftest import PROJECT_ROOT
from tests.pytorch.test_optimizers_and_schedulers import MLP, images_and_targets, model_for

PARAMETERS = PROJECT_ROOT / "conf" / "base" / "parameters_training.yml"


def build_optimizer(model: nn.Module, name: str, kwargs: dict) -> torch.optim.Optimizer:
    (optimizer,) = build_optimizers(model, OptimizerConfig(name, kwargs))
    return optimizer


def build_scheduler(optimizer, name, kwargs, epochs):
    """A per-epoch scheduler built the way the training node builds it."""
    scheduled = build_schedulers([optimizer], SchedulerConfig(name, kwargs), epochs,
                                 steps_per_epoch=1, monitor_mode="min")
    return scheduled[0].scheduler if scheduled else None


def parameters() -> nn.Module:
    return nn.Linear(2, 2)


@pytest.mark.parametrize("name", ["AdamW", "adamw", "ADAMW", "aDaMw"])
def test_resolve_ignores_case(name):
    assert resolve(name, optimizer_classes(), "training.optimizer.name") is torch.optim.AdamW


def test_unknown_name_names_the_key_and_lists_valid_names():
    with pytest.raises(ValueError) as error:
        resolve("Adamm", optimizer_classes(), "training.optimizer.name")
    message = str(error.value)
    assert message.startswith("training.optimizer.name: unknown name 'Adamm'")
    valid = message.split("Valid names: ")[1].split(", ")
    assert "Adam" in valid
    assert "AdamW" in valid
    assert "SGD" in valid
    assert valid == sorted(valid)


def test_non_string_name_is_refused():
    with pytest.raises(ValueError, match=r"training\.loss\.name: unknown name 3"):
        resolve(3, loss_classes(), "training.loss.name")


def test_registries_hold_only_their_kind():
    optimizers = optimizer_classes()
    assert {"SGD", "Adam", "AdamW", "RMSprop"} <= set(optimizers)
    assert "Optimizer" not in optimizers
    assert all(issubclass(cls, torch.optim.Optimizer) for cls in optimizers.values())

    schedulers = scheduler_classes()
    assert {"StepLR", "CosineAnnealingLR", "OneCycleLR", "ReduceLROnPlateau"} <= set(schedulers)
    assert "LRScheduler" not in schedulers
    assert not any(name.startswith("_") for name in schedulers)


def test_loss_classes_are_losses_only():
    losses = loss_classes()
    assert {"CrossEntropyLoss", "NLLLoss", "MSELoss", "BCEWithLogitsLoss"} <= set(losses)
    for not_a_loss in ("Linear", "Conv2d", "Module", "Sequential", "ReLU", "Softmax"):
        assert not_a_loss not in losses
    assert all(issubclass(cls, nn.modules.loss._Loss) for cls in losses.values())


def test_build_optimizer_passes_kwargs():
    optimizer = build_optimizer(parameters(), "sgd", {"lr": 0.25, "momentum": 0.5})
    assert isinstance(optimizer, torch.optim.SGD)
    assert optimizer.param_groups[0]["lr"] == 0.25
    assert optimizer.param_groups[0]["momentum"] == 0.5


def test_build_optimizer_unknown_name_uses_the_default_key():
    with pytest.raises(ValueError, match=r"^training\.optimizer\.name: unknown name 'Adamm'"):
        build_optimizer(parameters(), "Adamm", {})


@pytest.mark.parametrize("name", ["Adam", "AdamW", "SGD", "Adagrad"])
def test_optimizers_with_a_fused_kernel_use_it(name):
    optimizer = build_optimizer(parameters(), name, {"lr": 0.1})
    assert optimizer.param_groups[0]["fused"] is True


def test_optimizers_without_a_fused_kernel_are_built_as_asked():
    optimizer = build_optimizer(parameters(), "RMSprop", {"lr": 0.1})
    assert "fused" not in optimizer.defaults


@pytest.mark.parametrize("choice", [{"fused": False}, {"foreach": True}, {"foreach": False}])
def test_a_chosen_implementation_is_kept(choice):
    optimizer = build_optimizer(parameters(), "AdamW", {"lr": 0.1, **choice})
    assert not optimizer.param_groups[0]["fused"]
    for argument, value in choice.items():
        assert optimizer.param_groups[0][argument] is value


def test_sparse_gradients_keep_the_default_implementation():
    """Fused kernels reject sparse gradients at the first step, not when built."""
    model = nn.EmbeddingBag(10, 3, sparse=True)
    optimizer = build_optimizer(model, "SGD", {"lr": 0.1})
    assert not optimizer.param_groups[0]["fused"]
    model(torch.tensor([[1, 2]])).sum().backward()
    optimizer.step()


def test_rejected_kwargs_name_their_key_with_or_without_fusing():
    with pytest.raises(ValueError,
                       match=r"^training\.optimizer\.kwargs\.lr: AdamW\(lr=-1\) failed"):
        build_optimizer(parameters(), "AdamW", {"lr": -1})


def test_cosine_scheduler_gets_t_max_from_epochs():
    optimizer = build_optimizer(parameters(), "SGD", {"lr": 1.0})
    scheduler = build_scheduler(optimizer, "cosineannealinglr", {"eta_min": 0.1}, epochs=7)
    assert isinstance(scheduler, lr_scheduler.CosineAnnealingLR)
    assert scheduler.T_max == 7
    assert scheduler.eta_min == 0.1
    for _ in range(7):
        optimizer.step()
        scheduler.step()
    # After T_max steps the cosine reaches its minimum.
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1)


def test_explicit_t_max_wins_over_epochs():
    optimizer = build_optimizer(parameters(), "SGD", {"lr": 1.0})
    scheduler = build_scheduler(optimizer, "CosineAnnealingLR", {"T_max": 3}, epochs=7)
    assert scheduler.T_max == 3


def test_build_scheduler_passes_kwargs():
    optimizer = build_optimizer(parameters(), "SGD", {"lr": 1.0})
    scheduler = build_scheduler(optimizer, "StepLR", {"step_size": 2, "gamma": 0.5}, epochs=10)
    assert isinstance(scheduler, lr_scheduler.StepLR)
    assert (scheduler.step_size, scheduler.gamma) == (2, 0.5)


def test_no_scheduler_name_gives_none():
    optimizer = build_optimizer(parameters(), "SGD", {"lr": 1.0})
    assert build_scheduler(optimizer, None, {}, epochs=3) is None


def test_unknown_scheduler_names_its_key():
    optimizer = build_optimizer(parameters(), "SGD", {"lr": 1.0})
    with pytest.raises(ValueError, match=r"^training\.scheduler\.name: unknown name 'Cosine'"):
        build_scheduler(optimizer, "Cosine", {}, epochs=3)


def test_build_loss_passes_kwargs():
    loss = build_loss(LossConfig("crossentropyloss", {"label_smoothing": 0.1}))
    assert isinstance(loss, nn.CrossEntropyLoss)
    assert loss.label_smoothing == 0.1
    with pytest.raises(ValueError, match=r"^training\.loss\.name: unknown name 'Linear'"):
        build_loss(LossConfig("Linear", {}))


# --- arguments set to null ------------------------------------------------------------


def test_null_kwargs_are_not_passed_to_an_optimizer_or_its_fallback():
    """Kedro merges ``--params ...kwargs.weight_decay=null`` into the YAML's kwargs: the
    key stays, as None, and Rprop would refuse it."""
    (rprop,) = build_optimizers(parameters(), OptimizerConfig("Rprop", {"lr": 0.01,
                                                                        "weight_decay": None}))
    assert rprop.param_groups[0]["lr"] == 0.01
    config = OptimizerConfig("Muon", {"lr": 0.02},
                             fallback=NamedSpec("Rprop", {"weight_decay": None}))
    _, fallback = build_optimizers(MLP(), config)
    assert isinstance(fallback, torch.optim.Rprop)


def test_null_kwargs_are_not_passed_to_a_scheduler_nested_or_not():
    optimizer = build_optimizer(parameters(), "SGD", {"lr": 1.0})
    cosine = build_scheduler(optimizer, "CosineAnnealingLR", {"T_max": None}, epochs=7)
    assert cosine.T_max == 7  # the run's length, as if it were not given
    sequential = build_scheduler(optimizer, "SequentialLR", {
        "schedulers": [{"name": "ConstantLR", "kwargs": {"factor": None}},
                       {"name": "ExponentialLR", "kwargs": {"gamma": 0.5, "last_epoch": None}}],
        "milestones": [1],
    }, epochs=3)
    assert sequential._schedulers[0].factor == 1 / 3  # ConstantLR's default
    plateau = build_schedulers([optimizer], SchedulerConfig("ReduceLROnPlateau", {"mode": None}),
                               3, steps_per_epoch=1, monitor_mode="max")[0].scheduler
    assert plateau.mode == "max"  # from the monitor, as if not given


def test_null_kwargs_are_not_passed_to_a_loss():
    loss = build_loss(LossConfig("CrossEntropyLoss", {"label_smoothing": None}))
    assert loss.label_smoothing == 0.0


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("name", sorted(optimizer_classes()))
def test_every_optimizer_trains_from_the_yaml_defaults_with_null_for_what_it_refuses(name):
    """The parameters a user gives to switch optimizers: the name, over the YAML's
    kwargs, with ``weight_decay: null`` where the class takes none."""
    training = yaml.safe_load(PARAMETERS.read_text())["training"]
    cls = optimizer_classes()[name]
    training["optimizer"]["name"] = name
    if "weight_decay" not in inspect.signature(cls).parameters:
        training["optimizer"]["kwargs"]["weight_decay"] = None
    config = parse(TrainingConfig, training, "training")
    seed_everything(0)
    model = model_for(name)
    optimizers = build_optimizers(model, config.optimizer)
    assert isinstance(optimizers[0], cls)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    images, targets = images_and_targets().tensors

    def closure() -> torch.Tensor:
        for optimizer in optimizers:
            optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(images), targets)
        loss.backward()
        return loss

    for _ in range(3):
        for optimizer in optimizers:
            assert torch.isfinite(optimizer.step(closure))
    assert not [n for n, p in model.named_parameters() if torch.equal(before[n], p)]


def test_the_classes_without_weight_decay_are_among_them():
    refusing = {name for name, cls in optimizer_classes().items()
                if "weight_decay" not in inspect.signature(cls).parameters}
    assert {"LBFGS", "Rprop", "SparseAdam"} <= refusing
