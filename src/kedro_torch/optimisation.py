"""Optimizers, learning-rate schedulers and losses, chosen by class name.

The valid names are read from ``torch.optim``, ``torch.optim.lr_scheduler`` and
``torch.nn`` themselves, so a class added in a later torch release works without
a change here. Names match case-insensitively; an unknown one raises a
``ValueError`` naming the parameter key and listing every valid name.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.optim import lr_scheduler

# Schedulers that wrap other schedulers or need a metric are built by the engine
# in later stages; the plain ones below need the run length filled in.
RUN_LENGTH_DEFAULTS = {
    "CosineAnnealingLR": lambda epochs: {"T_max": epochs},
}


def classes_in(module: types.ModuleType, base: type) -> dict[str, type]:
    """Public subclasses of ``base`` defined in ``module``, by class name."""
    return {
        name: obj
        for name, obj in vars(module).items()
        if inspect.isclass(obj) and issubclass(obj, base) and obj is not base
        and not name.startswith("_")
    }


def optimizer_classes() -> dict[str, type]:
    return classes_in(torch.optim, torch.optim.Optimizer)


def scheduler_classes() -> dict[str, type]:
    return classes_in(lr_scheduler, lr_scheduler.LRScheduler) | {
        "ReduceLROnPlateau": lr_scheduler.ReduceLROnPlateau
    }


def loss_classes() -> dict[str, type]:
    return {
        name: cls
        for name, cls in classes_in(nn, nn.Module).items()
        if issubclass(cls, nn.modules.loss._Loss)
    }


def resolve(name: str, registry: dict[str, type], key: str) -> type:
    """Find ``name`` in ``registry`` ignoring case, or fail listing the choices."""
    by_lower = {registry_name.lower(): cls for registry_name, cls in registry.items()}
    if not isinstance(name, str) or name.lower() not in by_lower:
        raise ValueError(
            f"{key}: unknown name {name!r}. Valid names: {', '.join(sorted(registry))}"
        )
    return by_lower[name.lower()]


def build_optimizer(
    parameters: Iterable[torch.nn.Parameter], name: str, kwargs: dict[str, Any],
    key: str = "training.optimizer.name",
) -> torch.optim.Optimizer:
    return resolve(name, optimizer_classes(), key)(parameters, **kwargs)


def build_scheduler(
    optimizer: torch.optim.Optimizer, name: str | None, kwargs: dict[str, Any], epochs: int,
    key: str = "training.scheduler.name",
) -> lr_scheduler.LRScheduler | None:
    """A scheduler stepped once per epoch, or None when ``name`` is null."""
    if name is None:
        return None
    cls = resolve(name, scheduler_classes(), key)
    defaults = RUN_LENGTH_DEFAULTS.get(cls.__name__, lambda _: {})(epochs)
    return cls(optimizer, **(defaults | kwargs))


def build_loss(name: str, kwargs: dict[str, Any], key: str = "training.loss.name") -> nn.Module:
    return resolve(name, loss_classes(), key)(**kwargs)
