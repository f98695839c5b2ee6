"""Parameters checked as a whole before any work starts: the sections' keys and types,
every name that a registry resolves (transforms, models, optimizers, schedulers,
losses, torchvision datasets and their arguments), and the arguments of the
optimizer, scheduler and loss, tried for a step on a probe model with the builders
training uses. A typo fails in a second, before the data is read and before an
MLflow run is opened, rather than mid-training. Whatever fails here is a
:class:`ParameterError` naming the key, down to the argument of a class where the
failure can be pinned on one (``training.scheduler.kwargs.T_max``)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from kedro_torch.pytorch import distributed, engine, loaders, models, sources, tasks
from kedro_torch.pytorch import optimizers as optimization
from kedro_torch.pytorch.config import (
    DataConfig,
    EvaluationConfig,
    ExportConfig,
    InferenceConfig,
    LossConfig,
    MlflowConfig,
    ModelConfig,
    ParameterError,
    TrainingConfig,
    TuningConfig,
    parse,
)
from kedro_torch.pytorch.tasks.base import Task

SECTIONS = {"data": DataConfig, "model": ModelConfig, "training": TrainingConfig}
SECTIONS |= {"evaluation": EvaluationConfig, "mlflow": MlflowConfig,
             "inference": InferenceConfig, "export": ExportConfig, "tuning": TuningConfig}

def validate_parameters(parameters: dict[str, Any], sections: set[str]) -> dict[str, Any]:
    """Check the named sections as the run will use them; raise on the first error.

    Returns the parsed sections, so that a caller reads the defaults the run will
    use rather than the raw mapping. The registries' own refusals (an unknown model,
    say) are ``ValueError``s naming the key; here, every one is a parameter's.
    """
    try:
        return _validated(parameters, sections)
    except ParameterError:
        raise
    except ValueError as error:
        raise ParameterError(str(error)) from error


def _validated(parameters: dict[str, Any], sections: set[str]) -> dict[str, Any]:
    configs = {
        name: parse(SECTIONS[name], parameters.get(name), name) for name in sorted(sections)
    }
    if "data" in configs:
        for stage in ("train", "eval", "train_batch"):
            _check_transforms(configs["data"].transforms.steps(stage), f"data.transforms.{stage}")
        sources.get(configs["data"].source).samples(configs["data"])  # its names checked
    skeleton = None
    if "model" in configs:
        models.check_model_name(configs["model"].name)
        skeleton = _skeleton(configs["model"], configs.get("data"))
    if "training" in configs:
        _check_training(configs["training"], configs.get("data"), skeleton)
    if "tuning" in configs:
        # Imported here: a run that does not tune needs no Optuna.
        from kedro_torch.pytorch import tuning  # noqa: PLC0415

        tuning.check_space(configs["tuning"], parameters)
    return configs


def _check_transforms(specs: list[tuple[str, dict[str, Any]]], key: str) -> None:
    """Build the transforms as the loaders do; a refused argument is named by its key
    (``data.transforms.train[0].kwargs.degrees``) where it can be told."""
    try:
        loaders.build_transforms(specs, key)
    except ValueError as error:
        for i, (name, kwargs) in enumerate(specs):
            if _fails(lambda name=name, kwargs=kwargs: loaders.build_transforms(
                    [(name, kwargs)], key)):
                cause = error.__cause__ or error
                leaf = optimization.culprit(
                    cause, kwargs, lambda rest, name=name: _fails(
                        lambda: loaders.build_transforms([(name, rest)], key)))
                if leaf is not None:
                    raise _refused(f"{key}[{i}].kwargs", leaf, kwargs, name, cause) from error
                break
        raise


def _skeleton(model: ModelConfig, data: DataConfig | None) -> nn.Module | None:
    """The model built with ``model.kwargs`` on the meta device, for data shaped like
    the run's (the task's stand-in): no memory, no weights, no draw on the run's
    random state. None for a model whose construction computes with real tensors
    (torchvision's RegNets), which its build checks instead."""
    data = data or DataConfig(channels=3)
    given = tasks.create(data.task).probe_arguments(data)

    def build(kwargs: dict[str, Any]) -> nn.Module:
        with torch.device("meta"):
            return models.build(model.name, given, kwargs)

    try:
        return build(model.kwargs)
    except (TypeError, ValueError) as error:  # an argument it does not take, or a value
        leaf = optimization.culprit(error, model.kwargs,
                                    lambda rest: _fails(lambda: build(rest)))
        if leaf is not None:
            raise _refused("model.kwargs", leaf, model.kwargs, model.name, error) from error
        raise ParameterError(f"model.kwargs: {model.name} refused them: {error}") from error
    except NotImplementedError:
        return None


def _refused(key: str, leaf: str, kwargs: dict[str, Any], what: str,
             error: BaseException) -> ParameterError:
    given = f" with {leaf}={kwargs[leaf]!r}" if leaf in kwargs else ""
    return ParameterError(f"{key}.{leaf}: {what} failed{given}: {error}")


def _fails(action: Callable[[], Any]) -> bool:
    try:
        action()
    except Exception:
        return True
    return False


def _check_training(training: TrainingConfig, data: DataConfig | None,
                    model: nn.Module | None) -> None:
    device = engine.resolve_device(training.device)
    main = optimization.resolve(training.optimizer.name, optimization.optimizer_classes(),
                                "training.optimizer.name")
    engine.check_loop(training, device, [main])
    distributed.check(training, device)
    fallback = training.optimizer.fallback.name
    if fallback is not None:  # built only for Muon and SparseAdam, so resolved here
        optimization.resolve(fallback, optimization.optimizer_classes(),
                             "training.optimizer.fallback.name")
    try:
        schedulers = _step_a_probe(training, data, main)
    except _StepFailed as failed:
        raise _to_the_argument(failed, training, data, main) from failed.__cause__
    if model is not None and main in {getattr(torch.optim, "Muon", None), torch.optim.SparseAdam}:
        with _quiet(optimization.logger):  # the parameters it takes, which it checks
            optimization.split_parameters(main, model, "training.optimizer")
    if data is not None and training.monitor not in tasks.get(data.task).monitors():
        raise ParameterError(
            f"training.monitor: {data.task} records no {training.monitor}; its epochs record "
            f"{', '.join(tasks.get(data.task).monitors())}")
    users = sorted({type(s.scheduler).__name__ for s in schedulers if s.on_metric})
    users += ["early stopping / keep_best"] if training.restores_best else []
    if users and training.monitor.startswith("val_") and data is not None and not data.split.val:
        raise ParameterError(
            f"training.monitor: {', '.join(users)} needs {training.monitor}, but data.split.val "
            "is 0: there is no validation split. Add one or monitor a train_ metric."
        )




class _Probe(nn.Module):
    """A model with a parameter of each kind the optimizer rules sort: an embedding
    (sparse for SparseAdam, whose gradients must be), a hidden 2-D weight (Muon's),
    biases and a norm layer (no weight decay on them), and a head named ``fc``
    (``head_lr``)."""

    def __init__(self, sparse: bool, outputs: int):
        super().__init__()
        self.embedding = nn.EmbeddingBag(4, 4, sparse=sparse)
        self.hidden = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.fc = nn.Linear(4, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(torch.tanh(self.hidden(self.embedding(x)))))


def _step_a_probe(training: TrainingConfig, data: DataConfig | None, main: type) -> list:
    """Build the optimizers, schedulers and loss as training does, on a probe, and take
    one step of each.

    Some arguments are only read when a class first uses them (CosineAnnealingLR's
    ``T_max`` at its first step, CrossEntropyLoss's ``label_smoothing`` at its first
    call), so building alone would let them through to fail mid-training. The probe is
    known to train, so whatever a step raises comes from the parameters under the key
    reported. The loss is called on each kind of target the run gives it: soft ones
    in training after MixUp or CutMix, class indices otherwise and in validation. The
    probe's random initialisation leaves the run's random state as it was.
    """
    task = tasks.create(data.task if data is not None else "image_classification")
    with torch.random.fork_rng(devices=[]), _quiet(optimization.logger):
        targets = task.probe_targets()
        plain = next(iter(targets))  # what validation gives, and training without mixing
        probe = _Probe(main is torch.optim.SparseAdam, task.probe_outputs)
        optimizers = optimization.build_optimizers(probe, training.optimizer)
        schedulers = optimization.build_schedulers(
            optimizers, training.scheduler, training.epochs, steps_per_epoch=1,
            monitor_mode=training.mode,
        )
        loss_fn = _probe_loss(training, task, targets[plain], probe.fc.out_features)
        mixed = data is not None and bool(data.transforms.train_batch) and len(targets) > 1
        trained_on = list(targets)[1] if mixed else plain
        validated = data is None or data.split.val > 0
        inputs = torch.tensor([[0, 1], [2, 3], [1, 2]])

        def closure(kind: str = trained_on) -> torch.Tensor:
            for optimizer in optimizers:
                optimizer.zero_grad()
            if loss_fn is None:  # the model's own losses: any loss steps the optimizers
                loss = probe(inputs).square().mean()
            else:
                loss = task.step(probe, inputs, targets[kind], loss_fn)[1]
            loss.backward()
            return loss

        loss_key = "training.loss.kwargs" if training.loss.kwargs else "training.loss.name"
        for kind in sorted({trained_on, plain} if validated else {trained_on}):
            if loss_fn is None:
                break
            _attempt(loss_key, f"{type(loss_fn).__name__} on outputs and {kind} targets",
                     lambda kind=kind: closure(kind))
        keys = ("training.optimizer.kwargs", "training.optimizer.fallback.kwargs")
        for optimizer, key in zip(optimizers, keys, strict=False):
            _attempt(key, f"a step of {type(optimizer).__name__}",
                     lambda optimizer=optimizer: optimizer.step(closure))
        for scheduled in schedulers:
            metric = (1.0,) if scheduled.on_metric else ()
            _attempt("training.scheduler.kwargs",
                     f"a step of {type(scheduled.scheduler).__name__}",
                     lambda step=scheduled.scheduler.step, metric=metric: step(*metric))
    return schedulers


def _probe_loss(training: TrainingConfig, task: Task, targets: torch.Tensor,
                classes: int) -> nn.Module | None:
    """The run's loss, or None for a task whose models compute their own (detection),
    where ``training.loss`` would be silently ignored and is refused instead."""
    if task.default_loss is not None:
        return optimization.build_loss(training.loss, targets, classes,
                                       default=task.default_loss, defaults=task.loss_defaults())
    if training.loss != LossConfig():
        raise ParameterError(f"training.loss: the models of {task.name} compute their own "
                             "losses (those of torchvision.models.detection, in training "
                             "mode); training.loss does not apply. Remove it")
    return None


def _attempt(key: str, what: str, action: Callable[[], Any]) -> None:
    try:
        action()
    except Exception as error:
        raise _StepFailed(key, what, error) from error


class _StepFailed(ParameterError):
    """A step of the probe failed on the arguments under ``key``."""

    def __init__(self, key: str, what: str, error: Exception):
        super().__init__(f"{key}: {what} failed: {error}")
        self.key, self.what, self.error = key, what, error


# The argument mappings that the probe's steps read, by key: where each is in the
# training section.
STEPPED_ARGUMENTS = {
    "training.optimizer.kwargs": ("optimizer",),
    "training.optimizer.fallback.kwargs": ("optimizer", "fallback"),
    "training.scheduler.kwargs": ("scheduler",),
    "training.loss.kwargs": ("loss",),
}


def _to_the_argument(failed: _StepFailed, training: TrainingConfig, data: DataConfig | None,
                     main: type) -> ParameterError:
    """The failure, named by the key of the one argument behind it where it can be told:
    the probe steps again without each argument of that mapping in turn."""
    path = STEPPED_ARGUMENTS.get(failed.key)
    if path is None:
        return ParameterError(str(failed))
    section = training
    for part in path:
        section = getattr(section, part)
    kwargs = {name: value for name, value in section.kwargs.items() if value is not None}
    leaf = optimization.culprit(failed.error, kwargs, lambda rest: _fails(
        lambda: _step_a_probe(_with_kwargs(training, path, rest), data, main)))
    if leaf is None:
        return ParameterError(str(failed))
    return _refused(failed.key, leaf, kwargs, failed.what, failed.error)


def _with_kwargs(config: Any, path: tuple[str, ...], kwargs: dict[str, Any]) -> Any:
    """``config`` with the ``kwargs`` of the section at ``path`` replaced."""
    if not path:
        return dataclasses.replace(config, kwargs=kwargs)
    return dataclasses.replace(
        config, **{path[0]: _with_kwargs(getattr(config, path[0]), path[1:], kwargs)})


@contextlib.contextmanager
def _quiet(logger: logging.Logger) -> Iterator[None]:
    """Keep the probe out of the log: its parameter split would read as the model's."""
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)
