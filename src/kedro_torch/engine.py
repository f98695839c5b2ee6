"""The training loop: ``train_one_epoch``, ``evaluate`` and ``fit``.

Written to be read top to bottom, like torchvision's reference script. It knows
nothing of Kedro or MLflow: progress leaves through :class:`Callback` objects.
Per-batch statistics are summed on the device and read once per epoch, so the
loop does not force a device synchronisation on every batch.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader


class Callback:
    """Hooks into :func:`fit`; override only what you need."""

    def on_fit_start(self, epochs: int, batches_per_epoch: int) -> None: ...

    def on_batch_end(self) -> None: ...

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None: ...

    def on_fit_end(self) -> None: ...


@dataclass(frozen=True)
class EpochResult:
    loss: float
    accuracy: float


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


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    callbacks: Sequence[Callback] = (),
) -> EpochResult:
    model.train()
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    seen = 0
    for images, targets in loader:
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        logits = model(images)
        loss = loss_fn(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total_loss += loss.detach() * len(targets)
        correct += (logits.argmax(dim=1) == targets).sum()
        seen += len(targets)
        for callback in callbacks:
            callback.on_batch_end()
    return EpochResult(total_loss.item() / seen, correct.item() / seen)


@torch.inference_mode()
def evaluate(
    model: nn.Module, loader: DataLoader, loss_fn: nn.Module, device: torch.device
) -> EpochResult:
    logits, targets = predict(model, loader, device)
    loss = loss_fn(logits, targets).item()
    return EpochResult(loss, (logits.argmax(dim=1) == targets).float().mean().item())


@torch.inference_mode()
def predict(
    model: nn.Module, loader: Iterable, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and targets of a whole loader, on the CPU."""
    model.eval()
    all_logits, all_targets = [], []
    for images, targets in loader:
        all_logits.append(model(images.to(device, non_blocking=True)).float().cpu())
        all_targets.append(targets)
    return torch.cat(all_logits), torch.cat(all_targets)


def fit(
    model: nn.Module,
    train_loader: DataLoader,
    val_loader: DataLoader | None,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    epochs: int,
    device: torch.device,
    callbacks: Sequence[Callback] = (),
) -> list[dict[str, float]]:
    """Train for ``epochs`` epochs; return one row of metrics per epoch.

    A row holds ``epoch`` (from 1), ``train_loss``, ``train_accuracy``, ``val_loss``
    and ``val_accuracy`` (when there is a validation loader) and the ``lr`` the
    epoch trained with.
    """
    model.to(device)
    loss_fn.to(device)
    for callback in callbacks:
        callback.on_fit_start(epochs, len(train_loader))
    history = []
    for epoch in range(1, epochs + 1):
        lr = optimizer.param_groups[0]["lr"]
        train = train_one_epoch(model, train_loader, loss_fn, optimizer, device, callbacks)
        row = {"epoch": epoch, "train_loss": train.loss, "train_accuracy": train.accuracy}
        if val_loader is not None:
            val = evaluate(model, val_loader, loss_fn, device)
            row |= {"val_loss": val.loss, "val_accuracy": val.accuracy}
        row["lr"] = lr
        if scheduler is not None:
            scheduler.step()
        history.append(row)
        for callback in callbacks:
            callback.on_epoch_end(epoch, row)
    for callback in callbacks:
        callback.on_fit_end()
    return history
