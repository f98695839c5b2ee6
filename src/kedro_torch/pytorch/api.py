"""The plain training API: the training pipeline's steps as functions of plain objects
and the typed parameters of :mod:`kedro_torch.pytorch.config`.

A script, a notebook, a worker process or a tuning trial calls these and gets what
``kedro run --pipelines training`` gets for the same parameters: the pipeline's
nodes do nothing but call them. In the order the pipeline runs them::

    manifest = data.manifest_from_listing(data.list_folder("data/01_raw/digits"))
    prepared = prepare_data(manifest, data_config)  # or a pandas DataFrame, for a table
    loaders = build_loaders(prepared.model_input, prepared.preprocessing, data_config,
                            seed=training.seed, images=prepared.images)
    model = build_model(model_config, data_config, prepared.label_map,
                        prepared.preprocessing, seed=training.seed)
    task = tasks.create(data_config.task, prepared.preprocessing)
    result = fit(model, loaders, training, num_classes=len(prepared.label_map), task=task)
    spec = task.spec(model_config, data_config, prepared.preprocessing)
    evaluation = evaluate(result.state_dict, spec, prepared.model_input, prepared.label_map)

What differs between tasks (images or tables, classes or numbers) is the task's
(:mod:`kedro_torch.pytorch.tasks`): these functions ask it.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import io
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from kedro_torch.pytorch import distributed, engine, models, optimizers, plots, tasks
from kedro_torch.pytorch.cache import ImageStore
from kedro_torch.pytorch.callbacks import from_settings
from kedro_torch.pytorch.checkpoints import CheckpointStore, differences, load_weights
from kedro_torch.pytorch.config import (
    DataConfig,
    EvaluationConfig,
    ModelConfig,
    TrainingConfig,
    flatten,
)
from kedro_torch.pytorch.interrupts import TrainingInterrupted
from kedro_torch.pytorch.tasks.base import Evaluation, PreparedData, Spec, Task

logger = logging.getLogger(__name__)


# --- data ----------------------------------------------------------------------------


def prepare_data(raw: pd.DataFrame, config: DataConfig,
                 on_disk: ImageStore | None = None) -> PreparedData:
    """Check the raw data once (a manifest of images, or a table), set unusable samples
    aside, encode the targets, split, and fit the preprocessing on the training split.

    ``on_disk`` is the store of ``data.cache: disk`` (``ImageStore.open(folder)``).
    Under torchrun, local rank 0 of each machine checks images, and the machine's
    other ranks receive its result.
    """
    return tasks.create(config.task).prepare_data(raw, config, on_disk)


def build_loaders(
    model_input: pd.DataFrame,
    preprocessing: Mapping[str, Any],
    config: DataConfig,
    seed: int,
    *,
    images: ImageStore | None = None,
    device: str = "auto",
) -> dict[str, DataLoader]:
    """One loader per split of ``model_input``, as the task feeds its samples; image
    loaders read decoded images from ``images`` where it has them."""
    pin_memory = engine.resolve_device(device).type == "cuda"
    return tasks.create(config.task, preprocessing).build_loaders(
        model_input, preprocessing, config, seed, images, pin_memory)


# --- model and training --------------------------------------------------------------


def build_model(
    config: ModelConfig, data_config: DataConfig, label_map: Mapping[str, int],
    preprocessing: Mapping[str, Any], seed: int,
    pretrained: Mapping[str, torch.Tensor] | None = None,
) -> nn.Module:
    """A fresh model by name or import path, seeded, shaped for the task's data (its
    classes, channels or table columns), with pretrained tensors loaded where they fit
    (``pretrained``, or torchvision's ``model.weights``)."""
    if config.weights:
        pretrained = models.torchvision_weights(config.name, config.weights)
    arguments = tasks.create(data_config.task, preprocessing).model_arguments(
        data_config, label_map, preprocessing)
    engine.seed_everything(seed)
    model = models.build(config.name, arguments, config.kwargs)
    if pretrained is not None:
        models.load_pretrained(model, pretrained, strict=config.pretrained_strict)
    return model


# Keys a resume may change: the length of the run, how it is watched, where it runs,
# where its data sits and how its images are fed, none of which changes what a step
# computes (the data's digest is compared apart). How the processes are launched is
# among them; how many there are is not (``world_size``).
RESUMABLE_KEYS = frozenset({
    "training.epochs", "training.resume", "training.keep_checkpoints",
    "training.progress_bar", "training.device", "data.num_workers",
    "data.persistent_workers", "data.prefetch_factor", "data.cache", "data.normalize_on",
    "training.strategy", "training.devices", "training.dist_backend", "training.dist_timeout",
    "data.torchvision.root", "data.torchvision.download",
})


def training_identity(data_config: DataConfig, model_config: ModelConfig,
                      training: TrainingConfig, model_input: pd.DataFrame) -> dict[str, Any]:
    """What determines training, as flat ``section.key`` values, and a digest of the
    data (``model_input``: the images' contents, targets and splits, not their paths).

    A checkpoint records it; a resume continues only a checkpoint with the same one.
    """
    content = model_input[["content_hash", "target", "split"]].sort_values(
        ["content_hash", "split", "target"], ignore_index=True)
    digest = hashlib.sha256(pd.util.hash_pandas_object(content, index=False).to_numpy()
                            .tobytes()).hexdigest()[:16]
    return _parameters(data_config, model_config, training) | {"model_input": digest}


def _parameters(data_config: DataConfig, model_config: ModelConfig,
                training: TrainingConfig) -> dict[str, Any]:
    values = flatten({"data": asdict(data_config), "model": asdict(model_config),
                      "training": asdict(training)})
    parameters = {key: value for key, value in values.items() if key not in RESUMABLE_KEYS}
    processes = distributed.plan(training, engine.resolve_device(training.device)).world_size
    if processes > 1:  # each process takes data.batch_size: the steps differ with their number
        parameters["world_size"] = processes
    return parameters


def checkpoints_for(root: CheckpointStore, identity: Mapping[str, Any],
                    training: TrainingConfig) -> CheckpointStore:
    """The checkpoint folder of this configuration, below ``root``.

    With ``training.resume``, a checkpoint of other parameters is never continued:
    ``auto`` starts afresh and says why; ``true`` stops, naming each key that differs.
    """
    store = root.for_identity(identity, training.keep_checkpoints)
    if not training.resume or store.steps():
        return store
    others = root.identities()
    if not others:
        return store  # nothing at all: the engine says so for resume: true
    folder, made_with = next(iter(others.items()))
    if training.resume is True:
        raise _made_with_others(folder, made_with, identity)
    logger.warning("training.resume: auto, but the latest checkpoint (%s) was made with other "
                   "parameters (%s): starting afresh", folder, _how_other(made_with, identity))
    return store


def refuse_unresumable(root: CheckpointStore, data_config: DataConfig,
                       model_config: ModelConfig, training: TrainingConfig) -> None:
    """``training.resume: true``, checked before any work: a checkpoint made with these
    parameters must exist below ``root``. Whether it was made on the same data is
    known once the files are checked; :func:`checkpoints_for` tells then."""
    if training.resume is not True:
        return
    made = root.identities()
    if not made:
        raise FileNotFoundError(
            f"training.resume is true but there is no checkpoint below {root.directory}. "
            "Set training.resume: auto to start afresh when there is none."
        )
    if None in made.values():
        return  # a folder whose identity is unknown may be this one: its digest tells, later
    wanted = _parameters(data_config, model_config, training)
    without_data = [{k: v for k, v in identity.items() if k != "model_input"}
                    for identity in made.values()]
    if wanted not in without_data:
        raise _made_with_others(next(iter(made)), without_data[0], wanted)


def _made_with_others(folder: str, made_with: Mapping[str, Any] | None,
                      identity: Mapping[str, Any]) -> ValueError:
    return ValueError(
        f"training.resume: the latest checkpoint ({folder}) was made with other parameters, "
        f"so continuing it would not be this run: {_how_other(made_with, identity)}"
        ". Resume with those values, or start afresh with training.resume: auto or false"
    )


def _how_other(made_with: Mapping[str, Any] | None, identity: Mapping[str, Any]) -> str:
    if made_with is None:
        return "which ones is unknown, as its identity.json is missing"
    return "; ".join(differences(made_with, identity))


@dataclass(frozen=True)
class FitResult:
    """The weights to keep (the EMA's with EMA on, the best epoch's with early stopping
    or keep_best), the per-epoch history, and the module holding those weights."""

    state_dict: dict[str, torch.Tensor]
    history: list[dict[str, float]]
    model: nn.Module


def fit(
    model: nn.Module,
    dataloaders: Mapping[str, DataLoader],
    config: TrainingConfig,
    *,
    num_classes: int | None = None,
    model_config: ModelConfig | None = None,
    checkpoints: CheckpointStore | None = None,
    callbacks: Sequence[engine.Callback] = (),
    checkpoint_tags: Mapping[str, str] | None = None,
    task: Task | None = None,
) -> FitResult:
    """Train on ``dataloaders["train"]``, validating on ``"val"`` if there is one.

    ``num_classes`` sizes ``training.loss.class_weights: balanced`` (the largest
    training target decides without it; a regression has none).

    ``model_config`` says whether the backbone starts frozen; ``checkpoints`` is where
    every epoch's checkpoint goes and ``training.resume`` reads from (see
    :func:`checkpoints_for`). SIGTERM or SIGINT stop it at the next step boundary
    with a checkpoint, raising :class:`~kedro_torch.pytorch.interrupts.TrainingInterrupted`.
    ``checkpoint_tags`` travel in every checkpoint, back to the callbacks of a resume.
    ``task`` (:func:`kedro_torch.pytorch.tasks.create`) gives the step and the epoch
    metrics; image classification's by default.
    Another process training into the same folder at the same time is refused.

    Data-parallel as ``training.strategy`` and ``training.devices`` say: under torchrun
    (or in a process group that already exists) this process trains as its rank, in
    ``DistributedDataParallel``; with ``training.devices: N`` it starts N workers that
    each call this function as a rank, and gets rank 0's result and callbacks back.
    After a restart by ``torchrun --max-restarts``, training resumes as with
    ``training.resume: auto``.
    """
    device = engine.resolve_device(config.device)
    resolved = distributed.plan(config, device)
    if resolved.note:
        logger.warning("%s", resolved.note)
    options = {"num_classes": num_classes, "model_config": model_config,
               "checkpoints": checkpoints, "checkpoint_tags": checkpoint_tags,
               "task": task or tasks.create("image_classification")}
    if resolved.spawn:
        return _fit_in_workers(resolved, model, dataloaders, config, callbacks, options)
    with distributed.process_group(config, resolved):
        return _fit_here(model, dataloaders, config, distributed.device_of_this_rank(device),
                         callbacks=callbacks, **options)


def _fit_here(
    model: nn.Module,
    dataloaders: Mapping[str, DataLoader],
    config: TrainingConfig,
    device: torch.device,
    *,
    num_classes: int | None,
    model_config: ModelConfig | None,
    checkpoints: CheckpointStore | None,
    callbacks: Sequence[engine.Callback],
    checkpoint_tags: Mapping[str, str] | None,
    task: Task,
) -> FitResult:
    engine.seed_everything(config.seed)
    train_loader, val_loader = dataloaders["train"], dataloaders.get("val")
    optimizer_list = optimizers.build_optimizers(model, config.optimizer)
    batches = min(len(train_loader), config.max_batches_per_epoch or len(train_loader))
    schedulers = optimizers.build_schedulers(
        optimizer_list, config.scheduler, config.epochs,
        steps_per_epoch=math.ceil(batches / config.accumulate_grad_batches),
        monitor_mode=config.mode,
    )
    loss_fn = None if task.default_loss is None else optimizers.build_loss(
        config.loss, getattr(train_loader.dataset, "targets", None), num_classes,
        default=task.default_loss, defaults=task.loss_defaults(),
    )
    callbacks = [*callbacks, *from_settings(config, model_config, model)]
    trainer = engine.Trainer(model, optimizer_list, loss_fn, device, config, schedulers,
                             callbacks, checkpoints, checkpoint_tags, task=task)
    logger.info("Training %s on %s for %d epochs%s", type(model).__name__, device,
                config.epochs, _in_processes(trainer.plan, train_loader.batch_size))
    if checkpoints is not None:
        checkpoints.claim(checkpoint_tags)
    try:
        history = trainer.fit(train_loader, val_loader, resume=resume_mode(config))
    finally:
        if checkpoints is not None:
            checkpoints.release()
    trained = trainer.eval_model
    state_dict = {name: tensor.detach().cpu() for name, tensor in trained.state_dict().items()}
    return FitResult(state_dict, history, trained)


def resume_mode(config: TrainingConfig) -> bool | str:
    """``training.resume``; ``auto`` in a job that torchrun restarted after a failure, whose
    workers must carry on from the last checkpoint with nobody there to ask them."""
    return config.resume or ("auto" if distributed.restarts() else False)


def _in_processes(resolved: distributed.Plan, batch_size: int | None) -> str:
    if resolved.world_size == 1:
        return ""
    return (f" in {resolved.world_size} processes ({resolved.strategy}, "
            f"{resolved.backend}), global batch {(batch_size or 0) * resolved.world_size}")


def _fit_in_workers(resolved: distributed.Plan, model: nn.Module,
                    dataloaders: Mapping[str, DataLoader], config: TrainingConfig,
                    callbacks: Sequence[engine.Callback], options: dict[str, Any]) -> FitResult:
    """``training.devices: N``: N workers train as ranks of one job; this process relays
    rank 0's callbacks (MLflow stays here) and keeps its weights and history."""
    outcome: dict[str, Any] = {}

    def receive(message: tuple[str, Any]) -> None:
        kind, payload = message
        if kind in ("result", "interrupted"):
            outcome[kind] = payload
        else:
            for callback in callbacks:
                getattr(callback, kind)(*payload)

    logger.info("Starting %d training processes", resolved.spawn)
    signum = distributed.spawn(_fit_worker, resolved.spawn,
                               (model, dict(dataloaders), config, options), receive)
    if "interrupted" in outcome:
        stopped_by, epoch, batch, checkpoint = outcome["interrupted"]
        raise TrainingInterrupted(signum or stopped_by, epoch, batch, checkpoint)
    if "result" not in outcome:
        raise RuntimeError("the training processes ended without a result")
    state_dict, history = load_weights(io.BytesIO(outcome["result"]), "the result of rank 0")
    model.load_state_dict(state_dict)
    return FitResult(state_dict, history, model)


def _fit_worker(send: Callable[[Any], None], model: nn.Module,
                dataloaders: dict[str, DataLoader], config: TrainingConfig,
                options: dict[str, Any]) -> None:
    """One of :func:`_fit_in_workers`' processes. The model arrives in shared memory:
    training a copy keeps the ranks' weights (and the parent's) apart."""
    main = distributed.is_main_process()
    try:
        result = fit(copy.deepcopy(model), dataloaders, dataclasses.replace(config, devices="auto"),
                     callbacks=[_SendEvents(send)] if main else [], **options)
    except TrainingInterrupted as stop:
        if main:
            send(("interrupted", (stop.signum, stop.epoch, stop.batch, stop.checkpoint)))
        return
    if main:
        buffer = io.BytesIO()
        torch.save((result.state_dict, result.history), buffer)
        send(("result", buffer.getvalue()))


class _SendEvents(engine.Callback):
    """Rank 0's training events (the ``on_`` hooks), sent to the process that started
    the workers."""

    def __init__(self, send: Callable[[Any], None]):
        self.send = send

    def on_fit_start(self, *args: Any) -> None:
        self.send(("on_fit_start", args))

    def on_epoch_start(self, *args: Any) -> None:
        self.send(("on_epoch_start", args))

    def on_optimizer_step(self) -> None:
        self.send(("on_optimizer_step", ()))

    def on_batch_end(self) -> None:
        self.send(("on_batch_end", ()))

    def on_validation_end(self, *args: Any) -> None:
        self.send(("on_validation_end", args))

    def on_epoch_end(self, *args: Any) -> None:
        self.send(("on_epoch_end", args))

    def on_fit_end(self) -> None:
        self.send(("on_fit_end", ()))

    def on_resume(self, *args: Any) -> None:
        self.send(("on_resume", args))


# --- evaluation ----------------------------------------------------------------------


def evaluate(
    state_dict: Mapping[str, torch.Tensor],
    spec: Spec,
    model_input: pd.DataFrame,
    label_map: Mapping[str, int],
    config: EvaluationConfig | None = None,
    *,
    data_config: DataConfig | None = None,
    history: Sequence[Mapping[str, float]] | None = None,
    images: ImageStore | None = None,
    device: str = "auto",
    split: str = "test",
) -> Evaluation:
    """How good saved weights are on a split, and where they fail, as the spec's task
    measures it.

    The model and its preprocessing are rebuilt from ``state_dict`` and ``spec``
    alone, as inference and the MLflow model rebuild them. ``data_config`` gives the
    loader settings (batch size, workers); ``images`` a store of decoded images to
    read instead of the files, used where it holds images of the spec's shape; and
    ``data_config.source`` what reads the others.
    """
    task = tasks.create(spec.task, getattr(spec, "preprocessing", None))
    evaluation = task.evaluate(state_dict, spec, model_input, label_map,
                               config or EvaluationConfig(), data_config or DataConfig(),
                               images, engine.resolve_device(device), split)
    if history is not None:
        evaluation.figures["learning_curve"] = plots.learning_curve_figure(list(history))
    return evaluation


def split_batch(model_input: pd.DataFrame, spec: Spec,
                data_config: DataConfig, split: str = "test") -> torch.Tensor:
    """A split's samples as the model's input batch, read as training read them and
    prepared as ``spec`` says (for export checks)."""
    task = tasks.create(spec.task, getattr(spec, "preprocessing", None))
    return task.input_batch(model_input, spec, data_config, split)
