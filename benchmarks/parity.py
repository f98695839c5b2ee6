"""Parity of the training engine with a plain hand-written loop.

Trains the same SmallCNN on the bundled digits, with the same data, seed and
optimizer, twice per round: through ``kedro_torch.pytorch.engine.Trainer`` (rich progress
bar on, every epoch logged to a real MLflow run in a temporary SQLite store) and
through the loop below, which is what one would write by hand. It checks that
the per-epoch training losses agree to 5 decimals and prints the engine's
per-epoch time as a ratio of the plain loop's (medians over rounds and epochs).

    .venv/bin/python benchmarks/parity.py [--epochs 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import pandas as pd
import torch
from torch import nn

os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")

from kedro_torch.pytorch import engine, loaders
from kedro_torch.pytorch.callbacks import RichProgressBar
from kedro_torch.pytorch.config import DataConfig, OptimizerConfig, TrainingConfig
from kedro_torch.pytorch.models import SmallCNN
from kedro_torch.pytorch.optimizers import build_optimizers
from kedro_torch.pytorch.tasks import image_classification
from kedro_torch.tracking.callbacks import MlflowEpochLogger

CLASSIFIER = image_classification.ImageClassification()  # what the loop is given

DIGITS = Path(__file__).resolve().parents[1] / "data" / "01_raw" / "digits"
SEED, LR, BATCH, SIZE = 0, 0.003, 64, 16


def train_loader() -> torch.utils.data.DataLoader:
    """The project's loader over the digits, used by both loops."""
    files = sorted(DIGITS.rglob("*.png"))
    labels = [int(path.parent.name) for path in files]
    dataset = loaders.ImageManifestDataset(
        [str(path) for path in files], labels, channels=1, load_size=SIZE, mean=[0.5],
        std=[0.5],
    )
    config = DataConfig(batch_size=BATCH, num_workers=0)
    return loaders.build_dataloaders({"train": dataset}, config, seed=SEED)["train"]


class EpochTimer(engine.Callback):
    def __init__(self) -> None:
        self.times: list[float] = []

    def on_epoch_start(self, epoch: int) -> None:
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        self.times.append(time.perf_counter() - self._start)


def through_engine(epochs: int) -> tuple[list[float], list[float]]:
    engine.seed_everything(SEED)
    model = SmallCNN(1, 10)
    optimizers = build_optimizers(model, OptimizerConfig("AdamW", {"lr": LR}))
    timer = EpochTimer()
    with mlflow.start_run():  # the logger logs to the run active when it is made
        trainer = engine.Trainer(
            model, optimizers, nn.CrossEntropyLoss(), torch.device("cpu"),
            TrainingConfig(epochs=epochs),
            callbacks=[RichProgressBar(), MlflowEpochLogger(), timer],  # timer last: counts theirs
            task=CLASSIFIER,
        )
        history = trainer.fit(train_loader())
    return [row["train_loss"] for row in history], timer.times


def by_hand(epochs: int) -> tuple[list[float], list[float]]:
    engine.seed_everything(SEED)
    model = SmallCNN(1, 10)
    # The engine builds AdamW on its fused kernel (build_optimizers' default); the same
    # kernel here keeps the losses comparable and leaves only the loops' own costs.
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, fused=True)
    loss_fn = nn.CrossEntropyLoss()
    loader = train_loader()
    losses, times = [], []
    for _ in range(epochs):
        start = time.perf_counter()
        model.train()
        total, seen = 0.0, 0
        for images, targets in loader:
            optimizer.zero_grad()
            loss = loss_fn(model(images), targets)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(targets)
            seen += len(targets)
        losses.append(total / seen)
        times.append(time.perf_counter() - start)
    return losses, times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as store:
        mlflow.set_tracking_uri(f"sqlite:///{store}/mlflow.db")
        mlflow.set_experiment("parity")
        plain_times, engine_times, rows = [], [], []
        for round_ in range(1, args.rounds + 1):
            plain_losses, plain_epochs = by_hand(args.epochs)
            engine_losses, engine_epochs = through_engine(args.epochs)
            plain_times += plain_epochs[1:]  # the first epoch warms caches up
            engine_times += engine_epochs[1:]
            for epoch, (a, b) in enumerate(zip(plain_losses, engine_losses, strict=True), 1):
                rows.append({"round": round_, "epoch": epoch, "plain_loss": a, "engine_loss": b})
    table = pd.DataFrame(rows)
    matches = (table["plain_loss"].round(5) == table["engine_loss"].round(5)).all()
    print(table[table["round"] == 1].to_string(index=False, float_format="%.6f"))
    print(f"\nper-epoch losses match to 5 decimals: {'yes' if matches else 'NO'}")
    plain, ours = statistics.median(plain_times), statistics.median(engine_times)
    print(f"median epoch time  plain loop: {plain:.3f} s   engine: {ours:.3f} s")
    print(f"engine / plain: {ours / plain:.3f}x  (overhead {100 * (ours / plain - 1):+.1f}%)")
    return 0 if matches else 1


if __name__ == "__main__":
    sys.exit(main())
