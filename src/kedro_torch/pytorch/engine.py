"""The training loop.

``Trainer.fit`` runs epochs of ``train_one_epoch`` and ``evaluate``, the way
torchvision's reference script does, with how each step runs (precision,
accumulation, clipping, data parallelism) read from the ``training`` parameters
themselves (:class:`TrainingConfig`, read as they are, never copied field by field).
The features that script and Lightning offer around the loop (EMA, early stopping
and keeping the best epoch, a frozen backbone, the progress bar) are
:class:`Callback` objects, one file each in :mod:`kedro_torch.pytorch.callbacks`,
which the loop only calls. It knows nothing of Kedro or MLflow: progress leaves
through callbacks too. Per-batch statistics are summed on the device and read once
per epoch, so the loop adds no device synchronisation beyond what a hand-written
loop has (the NaN guard's check is the one exception, and it can be turned off).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from kedro_torch.pytorch import distributed
from kedro_torch.pytorch.callbacks.base import Callback
from kedro_torch.pytorch.checkpoints import CheckpointStore, capture_rng_state, restore_rng_state
from kedro_torch.pytorch.config import TrainingConfig
from kedro_torch.pytorch.interrupts import StopRequest, TrainingInterrupted, stop_on_signals
from kedro_torch.pytorch.loaders import batches_on
from kedro_torch.pytorch.optimizers import ScheduledLR
from kedro_torch.pytorch.tasks.base import Task

logger = logging.getLogger(__name__)


@dataclass
class TrainState:
    """What changes from epoch to epoch and goes into a checkpoint (with what the
    callbacks keep)."""

    epoch: int = 0  # epochs completed
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass
class EpochProgress:
    """How far the current epoch has got. An interrupted epoch's checkpoint keeps it,
    so that a resume replays the epoch's order and continues after the last step.

    Unlike EMA or early stopping this is no callback: replaying the epoch is how the
    loop iterates its batches after a resume, not a feature one switches on."""

    lr: float  # at the epoch's start, as the history records it
    rng: dict[str, Any]  # random states at the epoch's start, which fix its order
    batches: int = 0
    sums: dict[str, torch.Tensor] | None = None  # the task's metric sums, of every rank


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) for a repeatable run."""
    os.environ["PYTHONHASHSEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """``auto`` takes CUDA, then MPS, then the CPU; an explicit choice must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    available = {
        "cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()
    }
    if not available.get(name, False):
        raise ValueError(f"training.device: {name!r} is not available on this machine")
    return torch.device(name)


def check_loop(settings: TrainingConfig, device: torch.device,
               optimizer_classes: Sequence[type]) -> None:
    """Refuse settings this loop cannot run together; parameter checks call it too, so
    that they are refused before any work."""
    precision = str(settings.precision)
    if precision == "16" and device.type != "cuda":
        raise ValueError("training.precision: 16 (float16 with a gradient scaler) needs a "
                         f"CUDA device, not {device.type}; use bf16 instead")
    lbfgs = any(issubclass(cls, torch.optim.LBFGS) for cls in optimizer_classes)
    if lbfgs and (settings.accumulate_grad_batches > 1 or precision == "16"):
        raise ValueError("training.optimizer.name: LBFGS re-evaluates the loss itself; it "
                         "cannot accumulate gradients or use float16 scaling")


@contextlib.contextmanager
def float32_on_tensor_cores(device: torch.device, precision: str) -> Iterator[None]:
    """TF32 for float32 matrix products on a CUDA GPU of compute capability 8.0
    (Ampere) or later, as NVIDIA's float32 training figures use it.

    PyTorch already runs float32 convolutions in TF32 there, but keeps matrix products
    in full float32, several times slower for a 10-bit mantissa in the products (sums
    stay float32). Set through ``torch.set_float32_matmul_precision``, which keeps the
    older and newer TF32 flags in step: setting only the newer per-backend flag makes
    ``torch.get_float32_matmul_precision()``, which compiled code reads, raise.
    Elsewhere, or under another precision, nothing changes.
    """
    if (precision != "32" or device.type != "cuda" or not torch.cuda.is_available()
            or torch.cuda.get_device_capability(device) < (8, 0)):
        yield
        return
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    logger.info("training.precision 32 on %s: float32 matrix products use TF32 tensor "
                "cores, as PyTorch's convolutions do", torch.cuda.get_device_name(device))
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


@torch.inference_mode()
def predict(
    model: nn.Module, loader: Iterable, device: torch.device, max_batches: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs and targets of a whole loader (or its first ``max_batches``), on the CPU."""
    model.eval()
    all_outputs, all_targets = [], []
    for index, (inputs, targets) in enumerate(batches_on(loader, device)):
        if max_batches is not None and index >= max_batches:
            break
        all_outputs.append(model(inputs).float().cpu())
        all_targets.append(targets.cpu())
    return torch.cat(all_outputs), torch.cat(all_targets)


@torch.inference_mode()
def evaluate(
    model: nn.Module, loader: DataLoader, loss_fn: nn.Module, device: torch.device,
    max_batches: int | None = None, *, task: Task,
) -> dict[str, float]:
    """The task's epoch metrics (``loss`` and the task's own) over a loader, or its first
    ``max_batches``."""
    model.eval()
    sums = task.metric_sums(device)
    for index, (inputs, targets) in enumerate(batches_on(loader, device)):
        if max_batches is not None and index >= max_batches:
            break
        outputs, loss = task.step(model, inputs, targets, loss_fn)
        task.accumulate(sums, outputs, targets, loss)
    return _epoch_metrics(task, sums)


def _epoch_metrics(task: Task, sums: dict[str, torch.Tensor]) -> dict[str, float]:
    """Means over every rank's samples: the sums are added up across ranks first, and
    read from the device once."""
    return task.summarize(task.totals(sums))


class Trainer:
    """Fits one model; holds what a checkpoint must restore.

    It runs exactly the ``callbacks`` it is given (``callbacks.from_settings`` builds
    those the parameters switch on). What they may use: ``model`` (the bare module
    that trains), ``eval_model`` (the module validated, saved and handed back: the
    model itself unless a callback's ``setup`` replaces it, as EMA does),
    ``checkpoints`` (the folder, or None), ``state`` (the epochs done and their rows),
    ``settings``, ``optimizers`` and ``task``.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizers: Sequence[torch.optim.Optimizer],
        loss_fn: nn.Module,
        device: torch.device,
        settings: TrainingConfig,
        schedulers: Sequence[ScheduledLR] = (),
        callbacks: Sequence[Callback] = (),
        checkpoints: CheckpointStore | None = None,
        checkpoint_tags: Mapping[str, str] | None = None,
        *,
        task: Task,
    ):
        check_loop(settings, device, [type(o) for o in optimizers])
        self.task = task
        precision = str(settings.precision)
        self.plan = distributed.plan(settings, device)
        self.model = model.to(device)
        if settings.channels_last:
            self.model.to(memory_format=torch.channels_last)
        if settings.sync_batchnorm and distributed.world_size() > 1:
            # The converted layers take over the same parameters, so the optimizers hold.
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.optimizers = list(optimizers)
        self.lbfgs = any(isinstance(o, torch.optim.LBFGS) for o in self.optimizers)
        self.loss_fn = loss_fn.to(device) if loss_fn is not None else None  # a detector's own
        self.device = device
        self.settings = settings
        self.schedulers = list(schedulers)
        self.callbacks = list(callbacks)
        self.checkpoints = checkpoints
        self.checkpoint_tags = dict(checkpoint_tags or {})  # who wrote it, for a resume
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "16")
        self.autocast_dtype = {"bf16": torch.bfloat16, "16": torch.float16}.get(precision)
        self.state = TrainState()
        self.eval_model = self.model
        self.find_unused_parameters = False
        for callback in self.callbacks:
            callback.setup(self)
        # DDP (or DataParallel) wraps the model before compiling, as torch.compile's
        # DDP support expects; self.model stays the bare module whose weights are saved.
        self.parallel_model = distributed.wrap(self.model, device, self.plan,
                                               find_unused_parameters=self.find_unused_parameters)
        self.train_model = (torch.compile(self.parallel_model) if settings.compile
                            else self.parallel_model)
        self._stop = StopRequest()
        self._resumed_rng: dict[str, Any] | None = None

    def fit(
        self,
        train_loader: DataLoader,
        val_loader: DataLoader | None = None,
        resume: bool | Literal["auto"] = False,
    ) -> list[dict[str, float]]:
        """Train up to ``settings.epochs``; return one row of metrics per epoch.

        A row holds ``epoch`` (from 1), ``train_`` and (with a validation loader)
        ``val_`` figures of the task (``loss`` and its own), and the ``lr`` of the
        epoch's start. With ``resume``, training continues from the last checkpoint.
        """
        self._check_monitor(val_loader)
        generators = _sampler_generators(train_loader)
        progress = self._resume(resume, generators) if resume else None
        for callback in self.callbacks:
            callback.on_fit_start(self.settings.epochs, self._batches(train_loader),
                                  self.state.epoch + 1)
        with self._global_modes(), stop_on_signals() as self._stop:
            while (self.state.epoch < self.settings.epochs
                   and not any(callback.should_stop() for callback in self.callbacks)):
                epoch = self.state.epoch + 1
                for callback in self.callbacks:
                    callback.on_epoch_start(epoch)
                row = self._run_epoch(epoch, train_loader, val_loader, generators, progress)
                progress = None
                self.state.epoch = epoch
                self.state.history.append(row)
                for callback in self.callbacks:
                    callback.on_validation_end(epoch, row)
                saved = self._save(self.checkpoint(generators))
                for callback in self.callbacks:
                    callback.on_epoch_end(epoch, row)
                if self._stop_signal() is not None:  # it came after the epoch's last step
                    self._interrupt(epoch, self._batches(train_loader), saved)
        for callback in self.callbacks:
            callback.on_fit_end()
        return self.state.history

    def _run_epoch(
        self, epoch: int, train_loader: DataLoader, val_loader: DataLoader | None,
        generators: list[torch.Generator], progress: EpochProgress | None,
    ) -> dict[str, float]:
        if progress is None:
            progress = EpochProgress(self.optimizers[0].param_groups[0]["lr"],
                                     capture_rng_state(generators))
        lr = progress.lr
        train = self.train_one_epoch(train_loader, epoch, progress, generators)
        row: dict[str, float] = {"epoch": epoch} | {f"train_{k}": v for k, v in train.items()}
        if val_loader is not None:
            val = evaluate(self.eval_model, val_loader, self.loss_fn, self.device,
                           self.settings.max_batches_per_epoch, task=self.task)
            row |= {f"val_{k}": v for k, v in val.items()}
        row["lr"] = lr
        for scheduled in self.schedulers:
            if scheduled.on_metric:
                scheduled.scheduler.step(row[self.settings.monitor])
            elif scheduled.interval == "epoch":
                scheduled.scheduler.step()
        return row

    def train_one_epoch(
        self, loader: DataLoader, epoch: int, progress: EpochProgress | None = None,
        generators: Sequence[torch.Generator] = (),
    ) -> dict[str, float]:
        """One pass over ``loader``; from ``progress.batches`` on when resuming an
        interrupted epoch, whose order the generators' saved states replay."""
        self.train_model.train()
        resumed = progress is not None and progress.batches > 0
        if resumed:
            for generator, state in zip(generators, progress.rng["generators"], strict=True):
                generator.set_state(state)
        sums = self.task.metric_sums(self.device)
        batches = self._batches(loader)
        accumulate = self.settings.accumulate_grad_batches
        for index, (inputs, targets) in enumerate(batches_on(loader, self.device)):
            if index >= batches:
                break
            if resumed and index < progress.batches:
                if index + 1 == progress.batches:  # replayed up to the interruption
                    restore_rng_state(self._resumed_rng, list(generators))
                    if distributed.is_main_process():  # the sums of every rank
                        for name, total in progress.sums.items():
                            sums[name] += total.to(self.device)
                continue
            if self.settings.channels_last:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            step_now = (index + 1) % accumulate == 0 or index + 1 == batches
            outputs, loss = self._train_step(inputs, targets, step_now, accumulate)
            if self.settings.nan_guard and not torch.isfinite(loss):
                raise FloatingPointError(
                    f"loss is {loss.item()} at epoch {epoch}, batch {index + 1}: training "
                    "diverged. Lower the learning rate, clip gradients "
                    "(training.clip_grad_norm) or check the inputs of that batch."
                )
            self.task.accumulate(sums, outputs, targets, loss)
            for callback in self.callbacks:
                callback.on_batch_end()
            if step_now and index + 1 < batches and self._stop_signal() is not None:
                reached = EpochProgress(progress.lr, progress.rng, index + 1, {
                    name: total.to(sums[name].dtype).cpu()
                    for name, total in self.task.summed(sums).items()})
                saved = self._save(self.checkpoint(list(generators))
                                   | {"epoch_progress": vars(reached)})
                self._interrupt(epoch, index + 1, saved)
        return _epoch_metrics(self.task, sums)

    def _stop_signal(self) -> int | None:
        """The signal that asks training to stop, agreed by every rank."""
        self._stop.signum = distributed.agreed_signal(self._stop.signum)
        return self._stop.signum

    def _save(self, state: dict[str, Any]) -> str | None:
        return self.checkpoints.save(state) if self.checkpoints is not None else None

    def _interrupt(self, epoch: int, batch: int, checkpoint: str | None) -> None:
        """Stop, as the signal asked, once the place to resume from is saved."""
        for callback in self.callbacks:
            callback.on_fit_end()
        raise TrainingInterrupted(self._stop.signum, epoch, batch, checkpoint)

    def _train_step(
        self, inputs: torch.Tensor, targets: torch.Tensor, step_now: bool, accumulate: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.lbfgs:
            return self._lbfgs_step(inputs, targets)
        with self._no_sync(step_now):  # gradients are averaged across ranks when stepping
            with self._autocast():
                outputs, loss = self.task.step(self.train_model, inputs, targets, self.loss_fn)
            self.scaler.scale(loss / accumulate if accumulate > 1 else loss).backward()
        if step_now:
            self._clip_gradients()
            for optimizer in self.optimizers:
                self.scaler.step(optimizer)
            self.scaler.update()
            for optimizer in self.optimizers:
                optimizer.zero_grad(set_to_none=True)
            self._after_optimizer_step()
        return outputs, loss

    def _lbfgs_step(
        self, inputs: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """LBFGS evaluates the loss several times per step, through a closure."""
        last: dict[str, torch.Tensor] = {}

        def closure() -> torch.Tensor:
            for optimizer in self.optimizers:
                optimizer.zero_grad(set_to_none=True)
            with self._autocast():
                last["outputs"], last["loss"] = self.task.step(self.train_model, inputs, targets,
                                                               self.loss_fn)
            last["loss"].backward()
            self._clip_gradients()
            return last["loss"]

        for optimizer in self.optimizers:
            optimizer.step(closure)
        self._after_optimizer_step()
        return last["outputs"], last["loss"]

    def _clip_gradients(self) -> None:
        if self.settings.clip_grad_norm is None and self.settings.clip_grad_value is None:
            return
        for optimizer in self.optimizers:
            self.scaler.unscale_(optimizer)
        parameters = [p for p in self.model.parameters() if p.grad is not None]
        if self.settings.clip_grad_value is not None:
            value = self.settings.clip_grad_value
            nn.utils.clip_grad_value_([p for p in parameters if not p.grad.is_sparse], value)
            for parameter in parameters:  # sparse embeddings (SparseAdam): clamp_ has no kernel
                if parameter.grad.is_sparse:
                    parameter.grad = parameter.grad.coalesce()  # sum repeated rows first
                    parameter.grad.values().clamp_(-value, value)
        if self.settings.clip_grad_norm is not None:
            _clip_grad_norm(parameters, self.settings.clip_grad_norm)

    def _after_optimizer_step(self) -> None:
        for callback in self.callbacks:
            callback.on_optimizer_step()
        for scheduled in self.schedulers:
            if scheduled.interval == "step":
                scheduled.scheduler.step()

    def _no_sync(self, step_now: bool) -> contextlib.AbstractContextManager:
        """DDP's ``no_sync`` on the accumulation steps that do not step the optimizer."""
        if step_now or not hasattr(self.parallel_model, "no_sync"):
            return contextlib.nullcontext()
        return self.parallel_model.no_sync()

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _batches(self, loader: DataLoader) -> int:
        limit = self.settings.max_batches_per_epoch
        return len(loader) if limit is None else min(limit, len(loader))

    # --- the monitored metric ------------------------------------------------------

    def _check_monitor(self, val_loader: DataLoader | None) -> None:
        """What watches a metric of the rows (a scheduler on ``training.monitor``, a
        callback with a ``monitor``) must watch one they will hold, or it would fail, or
        watch nothing, only after the first epoch."""
        watched = [(type(s.scheduler).__name__, self.settings.monitor)
                   for s in self.schedulers if s.on_metric]
        watched += [(type(c).__name__, c.monitor) for c in self.callbacks if c.monitor is not None]
        for monitor in dict.fromkeys(metric for _, metric in watched):
            if monitor not in self.task.monitors():
                raise ValueError(f"training.monitor: unknown metric {monitor!r}. Valid: "
                                 f"{', '.join(self.task.monitors())}")
            if monitor.startswith("val_") and val_loader is None:
                users = ", ".join(dict.fromkeys(user for user, m in watched if m == monitor))
                raise ValueError(
                    f"training.monitor: {users} needs {monitor}, but there is no validation "
                    "split (data.split.val is 0). Add one or monitor a train_ metric."
                )

    @contextlib.contextmanager
    def _global_modes(self) -> Iterator[None]:
        """Deterministic algorithms, anomaly detection and TF32 for this fit only."""
        previous = torch.are_deterministic_algorithms_enabled()
        previous_benchmark = torch.backends.cudnn.benchmark
        if self.settings.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        try:
            with (torch.autograd.set_detect_anomaly(self.settings.detect_anomaly),
                  float32_on_tensor_cores(self.device, str(self.settings.precision))):
                yield
        finally:
            torch.use_deterministic_algorithms(previous)
            torch.backends.cudnn.benchmark = previous_benchmark

    # --- checkpoints ---------------------------------------------------------------

    def checkpoint(self, generators: list[torch.Generator]) -> dict[str, Any]:
        """Everything needed to continue this run exactly where it stands: the loop's
        state and each callback's (``state_dict``), side by side."""
        state = {
            "epoch": self.state.epoch,
            "planned_epochs": self.settings.epochs,
            "history": self.state.history,
            "model": self.model.state_dict(),
            "optimizers": [o.state_dict() for o in self.optimizers],
            "schedulers": [s.scheduler.state_dict() for s in self.schedulers],
            "scaler": self.scaler.state_dict(),
            "rng": capture_rng_state(generators),
            "tags": self.checkpoint_tags,
        }
        for callback in self.callbacks:
            own = callback.state_dict()
            if taken := own.keys() & state.keys():
                raise ValueError(f"{type(callback).__name__}.state_dict: {sorted(taken)} "
                                 "are keys of the loop or of another callback; use its own")
            state |= own
        return state

    def _resume(
        self, resume: bool | Literal["auto"], generators: list[torch.Generator]
    ) -> EpochProgress | None:
        """Restore the last checkpoint; return the progress of the epoch it interrupted.

        Files that cannot be read are set aside, and ``auto`` continues the newest that
        can, or starts afresh; ``True`` stops, naming the file (see
        :meth:`CheckpointStore.resume_point`)."""
        state = None
        if self.checkpoints is not None:
            # best.pt belongs to the folder when the settings keep the best epoch: the
            # question tracking asks before training, so that both take the same one.
            name = self.checkpoints.resume_point(strict=resume is True,
                                                 with_best=self.settings.restores_best)
            state = self.checkpoints.load(name) if name is not None else None
        if state is None:
            where = self.checkpoints or "(no checkpoint folder)"
            if resume != "auto":
                raise FileNotFoundError(
                    f"training.resume is true but there is no checkpoint in {where}. Set "
                    "training.resume: auto to start afresh when there is none."
                )
            logger.info("training.resume: auto, and no checkpoint in %s to continue: starting "
                        "afresh", where)
            return None
        self._check_schedule_length(state["planned_epochs"])
        self.model.load_state_dict(state["model"])
        for optimizer, saved in zip(self.optimizers, state["optimizers"], strict=True):
            optimizer.load_state_dict(saved)
        for scheduled, saved in zip(self.schedulers, state["schedulers"], strict=True):
            scheduled.scheduler.load_state_dict(saved)
        self.scaler.load_state_dict(state["scaler"])
        for callback in self.callbacks:
            callback.load_state_dict(state)
        restore_rng_state(state["rng"], generators)
        self._resumed_rng = state["rng"]
        self.state = TrainState(state["epoch"], list(state["history"]))
        for callback in self.callbacks:
            callback.on_resume(self.state.history, dict(state.get("tags") or {}))
        progress = state.get("epoch_progress")
        if progress is None:
            logger.info("Resumed from %s after epoch %d", self.checkpoints, self.state.epoch)
            return None
        logger.info("Resumed from %s in epoch %d after batch %d", self.checkpoints,
                    self.state.epoch + 1, progress["batches"])
        return EpochProgress(**progress)

    def _check_schedule_length(self, planned_epochs: int) -> None:
        """A resumed scheduler keeps the length it was built with; say so when it matters."""
        if planned_epochs == self.settings.epochs or not self.schedulers:
            return
        names = {type(s.scheduler).__name__ for s in self.schedulers}
        if "OneCycleLR" in names and self.settings.epochs > planned_epochs:
            raise ValueError(
                f"training.epochs: the checkpoint's OneCycleLR was sized for {planned_epochs} "
                f"epochs and cannot run {self.settings.epochs}; resume with training.epochs "
                f"<= {planned_epochs}, or start afresh (training.resume: false)"
            )
        logger.warning(
            "Resuming a run planned for %d epochs with training.epochs=%d: %s keep the "
            "schedule of the run that started (lengths such as T_max are not rescaled)",
            planned_epochs, self.settings.epochs, ", ".join(sorted(names)),
        )


def _clip_grad_norm(parameters: list[nn.Parameter], max_norm: float) -> None:
    """``nn.utils.clip_grad_norm_``, also for the sparse gradients of sparse embeddings
    (SparseAdam), whose norm older torch versions (2.11, say) cannot take."""
    if not any(p.grad.is_sparse for p in parameters):
        nn.utils.clip_grad_norm_(parameters, max_norm)
        return
    for parameter in parameters:
        if parameter.grad.is_sparse:
            parameter.grad = parameter.grad.coalesce()  # sum repeated rows first
    grads = [p.grad.values() if p.grad.is_sparse else p.grad for p in parameters]
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    scale = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for grad in grads:
        grad.mul_(scale)


def _sampler_generators(loader: DataLoader) -> list[torch.Generator]:
    """The generators that decide the training order: the loader's and its sampler's
    (a loader of tensor slices has no sampler)."""
    candidates = [
        loader.generator,
        getattr(getattr(loader, "sampler", None), "generator", None),
        getattr(getattr(getattr(loader, "batch_sampler", None), "sampler", None), "generator",
                None),
    ]
    unique: dict[int, torch.Generator] = {}
    for generator in candidates:
        if generator is not None:
            unique.setdefault(id(generator), generator)
    return list(unique.values())
