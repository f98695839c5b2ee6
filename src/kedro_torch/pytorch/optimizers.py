"""Optimizers, learning-rate schedulers and losses, chosen by class name.

The valid names are read from ``torch.optim``, ``torch.optim.lr_scheduler`` and
``torch.nn`` themselves, so a class added in a later torch release works without
a change here. Names match case-insensitively; an unknown one, or arguments the
class rejects, raise a :class:`ParameterError` naming the parameter key, down to the
argument where the failure can be pinned on one (``training.scheduler.kwargs.T_max``).
An argument set to ``None`` (``null`` in YAML) is left out, so the class's default
applies: Kedro merges ``--params`` into the YAML's kwargs, and ``weight_decay=null`` is
the only way to take away a default that the chosen class does not accept.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import re
import types
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.optim import lr_scheduler

from kedro_torch.pytorch.config import (
    LossConfig,
    OptimizerConfig,
    ParameterError,
    SchedulerConfig,
)
from kedro_torch.pytorch.models import head_parameter_names
from kedro_torch.pytorch.segmentation import DiceCrossEntropyLoss, DiceLoss

logger = logging.getLogger(__name__)

NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm,
               nn.RMSNorm)
# Schedulers meant to change the rate every optimizer step rather than every epoch.
PER_STEP_SCHEDULERS = {"OneCycleLR", "CyclicLR"}
# Schedulers whose arguments name a callable: given as a dotted import path.
CALLABLE_ARGUMENTS = {"LambdaLR": "lr_lambda", "MultiplicativeLR": "lr_lambda"}
NESTED_SCHEDULERS = {"SequentialLR", "ChainedScheduler"}
# Python's words for an argument a call does not take, and for one it lacks.
UNEXPECTED_ARGUMENT = re.compile(r"unexpected keyword argument '(\w+)'")
MISSING_ARGUMENT = re.compile(r"missing 1 required (?:positional|keyword-only) argument: '(\w+)'")


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
    """The losses of ``torch.nn`` and the project's own."""
    return {
        name: cls
        for name, cls in classes_in(nn, nn.Module).items()
        if issubclass(cls, nn.modules.loss._Loss)
    } | {cls.__name__: cls for cls in (DiceLoss, DiceCrossEntropyLoss)}


def resolve(name: str, registry: dict[str, type], key: str) -> type:
    """Find ``name`` in ``registry`` ignoring case, or fail listing the choices."""
    by_lower = {registry_name.lower(): cls for registry_name, cls in registry.items()}
    if not isinstance(name, str) or name.lower() not in by_lower:
        raise ParameterError(
            f"{key}: unknown name {name!r}. Valid names: {', '.join(sorted(registry))}"
        )
    return by_lower[name.lower()]


def _given(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The arguments to pass: those set to ``None`` are left to the class's default."""
    return {name: value for name, value in kwargs.items() if value is not None}


def _construct(cls: type, key: str, *args: Any, defaults: Mapping[str, Any] | None = None,
               **kwargs: Any) -> Any:
    """``cls(*args, **defaults, **kwargs)``, with a rejected argument reported against
    ``key``, down to the argument where one can be told (see :func:`culprit`).

    Classes check their arguments with whatever fails first (``betas=[0.9]`` raises
    an IndexError in Adam), so any error is the arguments'. ``defaults`` are this
    module's own (the length of a schedule), which ``kwargs``, the user's, override.
    """
    defaults = dict(defaults or {})
    try:
        return cls(*args, **{**defaults, **kwargs})
    except Exception as error:
        def fails(arguments: dict[str, Any]) -> bool:
            try:
                cls(*args, **{**defaults, **arguments})
            except Exception:
                return True
            return False

        name = culprit(error, kwargs, fails, _parameters(cls))
        leaf = f"{key}.{name}" if name else key
        raise ParameterError(f"{leaf}: {cls.__name__}({_show({**defaults, **kwargs})}) failed: "
                             f"{error}") from error


def culprit(error: BaseException, kwargs: Mapping[str, Any],
            fails: Callable[[dict[str, Any]], bool], takes: Collection[str] = ()) -> str | None:
    """The one argument behind ``error``, where it can be told; else None.

    The argument that Python's message names as one the call does not take (of
    ``kwargs``), or as the one it lacks (of the names it ``takes``); else the only one
    of ``kwargs`` without which the call no longer fails, which ``fails`` tries with
    the others. Tried only once something failed, so a good run pays nothing.
    """
    unexpected = UNEXPECTED_ARGUMENT.search(str(error))
    if unexpected and unexpected.group(1) in kwargs:
        return unexpected.group(1)
    missing = MISSING_ARGUMENT.search(str(error))
    if missing and missing.group(1) in takes and missing.group(1) not in kwargs:
        return missing.group(1)
    suspects = [name for name in kwargs
                if not fails({other: value for other, value in kwargs.items() if other != name})]
    return suspects[0] if len(suspects) == 1 else None


def _parameters(cls: type) -> Collection[str]:
    try:
        return inspect.signature(cls).parameters
    except (TypeError, ValueError):  # no signature Python can read
        return ()


def _show(kwargs: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items() if not isinstance(v, torch.Tensor))


# --- optimizers ---------------------------------------------------------------------


def build_optimizers(
    model: nn.Module, config: OptimizerConfig, key: str = "training.optimizer"
) -> list[torch.optim.Optimizer]:
    """The optimizer named in ``config``, plus a fallback one where it cannot take
    every parameter.

    Muon orthogonalises 2-D weight matrices only, and is not meant for the
    classifier head: it gets the hidden 2-D weights and the fallback (AdamW by
    default) the rest. SparseAdam updates only sparse gradients: it gets the
    parameters of sparse embeddings and the fallback the rest.
    """
    cls = resolve(config.name, optimizer_classes(), f"{key}.name")
    # Frozen parameters stay in: with no gradient, optimizers leave them untouched,
    # and unfreezing them later needs no new parameter group.
    main, rest = split_parameters(cls, model, key)
    fusable = not _sparse_parameter_names(model)
    optimizers = [_optimizer(cls, f"{key}.kwargs", _groups(model, main, config), config.kwargs,
                             fusable)]
    if rest:
        fallback = resolve(config.fallback.name, optimizer_classes(), f"{key}.fallback.name")
        logger.info(
            "%s takes %d tensors (%s); %s takes the other %d (%s)",
            cls.__name__, len(main), _names(main), fallback.__name__, len(rest), _names(rest),
        )
        optimizers.append(_optimizer(fallback, f"{key}.fallback.kwargs",
                                     _groups(model, rest, config), config.fallback.kwargs,
                                     fusable))
    return optimizers


# Arguments by which the user picks an optimizer's implementation; given any of
# them, the choice is theirs.
IMPLEMENTATION_ARGUMENTS = {"fused", "foreach", "differentiable", "capturable"}


def _optimizer(
    cls: type, key: str, groups: list[dict[str, Any]], kwargs: dict[str, Any], fusable: bool
) -> Any:
    """``cls(groups, **kwargs)``, on the fused kernel where the class has one.

    A fused step updates every tensor in one kernel instead of a loop of small
    ones: AdamW's step for resnet18 on a CPU takes 5 ms instead of 17. Fused
    kernels take no sparse gradients, and where the parameters' device or dtype
    has none, torch refuses it as the optimizer is built: then, as for arguments
    it rejects, the default implementation is built (and rejected arguments are
    reported against ``key``). ``fused: false``, or any other choice of
    implementation in the kwargs, is left alone.
    """
    kwargs = _given(kwargs)
    has_fused = "fused" in inspect.signature(cls).parameters
    if fusable and has_fused and not IMPLEMENTATION_ARGUMENTS & kwargs.keys():
        try:
            return cls(groups, **kwargs, fused=True)
        except Exception:  # no fused kernel here, or bad arguments: the call below says
            pass
    return _construct(cls, key, groups, **kwargs)


def split_parameters(cls: type, model: nn.Module, key: str) -> tuple[list, list]:
    """The named parameters ``cls`` takes, and the fallback's; refused where it would
    take none (Muon without hidden 2-D weights, SparseAdam without sparse gradients)."""
    named = list(model.named_parameters())
    if cls is getattr(torch.optim, "Muon", None):
        head = head_parameter_names(model)
        main = [(n, p) for n, p in named if p.ndim == 2 and n not in head]
        if not main:
            raise ParameterError(f"{key}.name: Muon needs 2-D weight matrices below the head; "
                                 f"{type(model).__name__} has none")
        return main, [(n, p) for n, p in named if not (p.ndim == 2 and n not in head)]
    if cls is torch.optim.SparseAdam:
        sparse = _sparse_parameter_names(model)
        main = [(n, p) for n, p in named if n in sparse]
        if not main:
            raise ParameterError(
                f"{key}.name: SparseAdam updates only parameters with sparse gradients, "
                "which come from nn.Embedding(sparse=True) or nn.EmbeddingBag(sparse=True); "
                f"{type(model).__name__} has none, so it would train nothing. Use Adam or AdamW."
            )
        return main, [(n, p) for n, p in named if n not in sparse]
    return named, []


def _sparse_parameter_names(model: nn.Module) -> set[str]:
    """The weights of embeddings that produce sparse gradients."""
    return {
        f"{module_name}.weight" if module_name else "weight"
        for module_name, module in model.named_modules()
        if isinstance(module, nn.Embedding | nn.EmbeddingBag) and module.sparse
    }


def _groups(model: nn.Module, named: list, config: OptimizerConfig) -> list[dict[str, Any]]:
    """Parameter groups: optionally no weight decay on norms and biases, and a
    learning rate of its own for the head."""
    no_decay = _norm_and_bias_names(model) if config.no_weight_decay_on_norm_and_bias else set()
    head = head_parameter_names(model) if config.head_lr is not None else set()
    groups: dict[tuple[bool, bool], list] = {}
    for name, parameter in named:
        groups.setdefault((name in head, name in no_decay), []).append(parameter)
    result = []
    for (is_head, skip_decay), parameters in sorted(groups.items()):
        group: dict[str, Any] = {"params": parameters}
        if is_head:
            group["lr"] = config.head_lr
        if skip_decay:
            group["weight_decay"] = 0.0
        result.append(group)
    return result


def _norm_and_bias_names(model: nn.Module) -> set[str]:
    names = set()
    for module_name, module in model.named_modules():
        for parameter_name, _ in module.named_parameters(recurse=False):
            if isinstance(module, NORM_LAYERS) or parameter_name == "bias":
                names.add(f"{module_name}.{parameter_name}" if module_name else parameter_name)
    return names


def _names(named: list, limit: int = 6) -> str:
    shown = ", ".join(n for n, _ in named[:limit])
    return shown + (f", ... ({len(named) - limit} more)" if len(named) > limit else "")


# --- schedulers ---------------------------------------------------------------------


@dataclass
class ScheduledLR:
    """A scheduler and when it steps: after each epoch or after each optimizer step."""

    scheduler: Any
    interval: Literal["epoch", "step"]

    @property
    def on_metric(self) -> bool:
        return isinstance(self.scheduler, lr_scheduler.ReduceLROnPlateau)


def build_schedulers(
    optimizers: Sequence[torch.optim.Optimizer],
    config: SchedulerConfig,
    epochs: int,
    steps_per_epoch: int,
    monitor_mode: Literal["min", "max"],
    key: str = "training.scheduler",
) -> list[ScheduledLR]:
    """One scheduler per optimizer, as ``config`` describes, with warm-up if asked.

    Arguments that only say how long the run is (CosineAnnealingLR's ``T_max``,
    OneCycleLR's ``total_steps``, PolynomialLR's ``total_iters``) are filled in
    from the epochs and the loader length unless given.
    """
    if config.name is None and not config.warmup_epochs:
        return []
    cls = resolve(config.name, scheduler_classes(), f"{key}.name") if config.name else None
    interval = config.interval or (
        "step" if cls is not None and cls.__name__ in PER_STEP_SCHEDULERS else "epoch"
    )
    per_epoch = steps_per_epoch if interval == "step" else 1
    warmup = config.warmup_epochs * per_epoch
    if cls is lr_scheduler.ReduceLROnPlateau and warmup:
        raise ParameterError(f"{key}.warmup_epochs: ReduceLROnPlateau cannot follow a warm-up "
                             "(SequentialLR does not support it); set warmup_epochs: 0")
    if cls is lr_scheduler.ReduceLROnPlateau and interval == "step":
        raise ParameterError(f"{key}.interval: ReduceLROnPlateau steps on a validation metric, "
                             "once per epoch")
    remaining = max(epochs * per_epoch - warmup, 1)
    scheduled = []
    for optimizer in optimizers:
        main = None
        if cls is not None:
            kwargs = _given(config.kwargs)
            if cls is lr_scheduler.ReduceLROnPlateau:
                kwargs.setdefault("mode", monitor_mode)
            main = _build_scheduler(optimizer, cls, kwargs, remaining, key)
        if warmup:
            linear = lr_scheduler.LinearLR(
                optimizer, start_factor=config.warmup_start_factor, total_iters=warmup
            )
            main = linear if main is None else lr_scheduler.SequentialLR(
                optimizer, [linear, main], milestones=[warmup]
            )
        scheduled.append(ScheduledLR(main, interval))
    return scheduled


def _build_scheduler(
    optimizer: torch.optim.Optimizer, cls: type, kwargs: dict[str, Any], length: int, key: str
) -> Any:
    name = cls.__name__
    defaults = _length_defaults(name, optimizer, length)
    kwargs = dict(kwargs)
    if name in CALLABLE_ARGUMENTS:
        argument = CALLABLE_ARGUMENTS[name]
        if argument not in kwargs:
            raise ParameterError(f"{key}.kwargs.{argument}: {name} needs the dotted import path "
                                 "of a function, e.g. my_package.schedules.warmup")
        kwargs[argument] = import_callable(kwargs[argument], f"{key}.kwargs.{argument}")
    if name in NESTED_SCHEDULERS:
        specs = kwargs.get("schedulers")
        if not isinstance(specs, list) or not specs:
            raise ParameterError(f"{key}.kwargs.schedulers: {name} needs a list of "
                                 "{name, kwargs} scheduler specs")
        kwargs["schedulers"] = [
            _build_nested(optimizer, spec, length, f"{key}.kwargs.schedulers[{i}]")
            for i, spec in enumerate(specs)
        ]
        if name == "ChainedScheduler":
            return _construct(cls, f"{key}.kwargs", defaults={**defaults, "optimizer": optimizer},
                              **kwargs)
    return _construct(cls, f"{key}.kwargs", optimizer, defaults=defaults, **kwargs)


def _build_nested(optimizer: torch.optim.Optimizer, spec: Any, length: int, key: str) -> Any:
    if (not isinstance(spec, dict) or "name" not in spec or set(spec) - {"name", "kwargs"}
            or not isinstance(spec.get("kwargs") or {}, dict)):
        raise ParameterError(f"{key}: expected a mapping with 'name' and optional 'kwargs', "
                             f"got {spec!r}")
    cls = resolve(spec["name"], scheduler_classes(), f"{key}.name")
    return _build_scheduler(optimizer, cls, _given(spec.get("kwargs") or {}), length, key)


def _length_defaults(name: str, optimizer: torch.optim.Optimizer, length: int) -> dict:
    if name == "CosineAnnealingLR":
        return {"T_max": length}
    if name == "PolynomialLR":
        return {"total_iters": length}
    if name == "OneCycleLR":
        return {"total_steps": length, "max_lr": [g["lr"] for g in optimizer.param_groups]}
    return {}


def import_callable(path: Any, key: str) -> Callable:
    """The function at dotted ``path``, imported; never ``eval`` of a string."""
    if not isinstance(path, str) or "." not in path:
        raise ParameterError(f"{key}: expected a dotted import path like package.module.function, "
                             f"got {path!r}")
    module_name, _, attribute = path.rpartition(".")
    try:
        function = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ParameterError(f"{key}: cannot import {path!r}: {error}") from error
    if not callable(function):
        raise ParameterError(f"{key}: {path!r} is not callable")
    return function


# --- losses -------------------------------------------------------------------------


def build_loss(
    config: LossConfig, train_targets: torch.Tensor | None = None,
    num_classes: int | None = None, key: str = "training.loss",
    default: str = "CrossEntropyLoss", defaults: Mapping[str, Any] | None = None,
) -> nn.Module:
    """The loss named in ``config``, or the task's ``default`` when it names none;
    ``class_weights: balanced`` weighs each class by the inverse of its share of the
    training targets. ``defaults`` are the task's arguments (segmentation's
    ``ignore_index``), given to a class that takes them unless ``config`` sets them."""
    cls = resolve(config.name or default, loss_classes(), f"{key}.name")
    taken = inspect.signature(cls).parameters
    defaults = {name: value for name, value in (defaults or {}).items() if name in taken}
    kwargs = _given(config.kwargs)
    if config.class_weights == "balanced":
        if "weight" not in inspect.signature(cls).parameters:
            raise ParameterError(f"{key}.class_weights: {cls.__name__} takes no class weights")
        if train_targets is None:
            raise ParameterError(f"{key}.class_weights: balanced weights need the training targets")
        kwargs["weight"] = balanced_class_weights(train_targets, num_classes)
    return _construct(cls, f"{key}.kwargs", defaults=defaults, **kwargs)


def balanced_class_weights(
    targets: torch.Tensor, num_classes: int | None = None
) -> torch.Tensor:
    """``n_samples / (n_classes * count)`` per class, as scikit-learn's "balanced".

    ``num_classes`` counts the classes the model predicts; without it, the largest
    target decides, and a class above every training target would go unnoticed.
    """
    counts = torch.bincount(torch.as_tensor(targets, dtype=torch.long),
                            minlength=num_classes or 0)
    if (counts == 0).any():
        missing = torch.nonzero(counts == 0).flatten().tolist()
        raise ValueError(f"class indices {missing} have no training example to weigh")
    return (counts.sum() / (len(counts) * counts.double())).float()
