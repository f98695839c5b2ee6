"""Parity of the training engine with a plain hand-written loop.

Trains the same model on the same data, with the same seed, initial weights and
optimizer, twice per round: through ``kedro_torch.pytorch.engine.Trainer`` (rich
progress bar on, every epoch logged to a real MLflow run in a temporary SQLite
store) and through a loop below, which is what one would write by hand. It checks
that the per-epoch figures agree to 5 decimals and prints the engine's per-epoch
time as a ratio of the plain loop's (medians over rounds and epochs).

image_classification: a SmallCNN on the bundled digits, no validation.

semantic_segmentation: a small U-Net on the bundled shapes
(``data/01_raw/shapes_segmentation``), with the data, loaders and model built by the
project's API as a run builds them, and a validation pass every epoch. The engine's
task adds each training batch to a confusion matrix, for the epoch's mean IoU; the
plain loop does too (a hand-written loop that reports mIoU has to), so that the two
do the same work and the ratio is the loop's own cost.

object_detection: the project's small FCOS on the bundled detection shapes
(``data/01_raw/shapes_detection``), built as a run builds it, validated every epoch with
COCO's mAP (torchmetrics) by both loops.

    .venv/bin/python benchmarks/parity.py [--task all] [--epochs N] [--rounds 3]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# Before MLflow is imported: its telemetry, once started, sends from a thread of its
# own, which took 5 to 9 % of the engine's epochs on two cores.
os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")

import mlflow
import pandas as pd
import torch
from torch import nn
from torchmetrics.detection import MeanAveragePrecision

from kedro_torch.pytorch import api, data, engine, loaders, segmentation, sources, tasks
from kedro_torch.pytorch.callbacks import RichProgressBar
from kedro_torch.pytorch.config import (
    DataConfig,
    ModelConfig,
    OptimizerConfig,
    SchedulerConfig,
    TrainingConfig,
    parse,
)
from kedro_torch.pytorch.models import SmallCNN
from kedro_torch.pytorch.optimizers import build_loss, build_optimizers
from kedro_torch.pytorch.tasks import image_classification
from kedro_torch.pytorch.tasks.base import PreparedData
from kedro_torch.tracking.callbacks import MlflowEpochLogger

CLASSIFIER = image_classification.ImageClassification()  # what the loop is given

RAW = Path(__file__).resolve().parents[1] / "data" / "01_raw"
DIGITS = RAW / "digits"
SEED, LR, BATCH, SIZE = 0, 0.003, 64, 16
SHAPE_CLASSES, IGNORE = ["background", "circle", "square", "triangle"], 255
# Epochs per run by default; the first of each is left out of the medians (it warms
# caches up). Three rounds of the segmentation loops took about 3 minutes on two CPU
# cores shared with other work.
EPOCHS = {"image_classification": 5, "semantic_segmentation": 3, "object_detection": 3}

Run = tuple[list[dict[str, float]], list[float]]  # per epoch: its figures, its seconds


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


def through_engine(epochs: int) -> Run:
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
    return [{"train_loss": row["train_loss"]} for row in history], timer.times


def by_hand(epochs: int) -> Run:
    engine.seed_everything(SEED)
    model = SmallCNN(1, 10)
    # The engine builds AdamW on its fused kernel (build_optimizers' default); the same
    # kernel here keeps the losses comparable and leaves only the loops' own costs.
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, fused=True)
    loss_fn = nn.CrossEntropyLoss()
    loader = train_loader()
    rows, times = [], []
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
        rows.append({"train_loss": total / seen})
        times.append(time.perf_counter() - start)
    return rows, times


# --- semantic segmentation and object detection ----------------------------------


@dataclass(frozen=True)
class Shapes:
    """A bundled shapes set, checked and split once; each run gets loaders of its own,
    built alike, so that both loops draw the same batches in the same order."""

    config: DataConfig
    prepared: PreparedData
    model: nn.Module  # the initial weights, copied by each run

    @classmethod
    def load(cls, folder: Path, writer: str, parameters: dict,
             model: ModelConfig) -> Shapes:
        if not folder.is_dir():
            raise SystemExit(f"{folder} is missing: write it with {RAW / writer}")
        config = parse(DataConfig, {"channels": 3, "num_workers": 0,
                                    "normalize": {"mean": None, "std": None}} | parameters,
                       "data")
        manifest = sources.get(config.source).ingest(data.list_folder(str(folder)), config)
        prepared = api.prepare_data(manifest, config)
        model = api.build_model(model, config, prepared.label_map, prepared.preprocessing,
                                seed=SEED)
        return cls(config, prepared, model)

    def loaders(self) -> dict[str, torch.utils.data.DataLoader]:
        return api.build_loaders(self.prepared.model_input, self.prepared.preprocessing,
                                 self.config, seed=SEED, images=self.prepared.images)


def shapes_through_engine(shapes: Shapes, epochs: int, figures: tuple[str, ...]) -> Run:
    """As ``api.fit`` trains on one device, with a constant learning rate."""
    training = TrainingConfig(epochs=epochs, seed=SEED, device="cpu",
                              optimizer=OptimizerConfig("AdamW", {"lr": LR}),
                              scheduler=SchedulerConfig(name=None))
    engine.seed_everything(training.seed)
    model = copy.deepcopy(shapes.model)
    split = shapes.loaders()
    task = tasks.create(shapes.config.task, shapes.prepared.preprocessing)
    loss_fn = None if task.default_loss is None else build_loss(
        training.loss, None, None, default=task.default_loss, defaults=task.loss_defaults())
    timer = EpochTimer()
    with mlflow.start_run():
        trainer = engine.Trainer(
            model, build_optimizers(model, training.optimizer), loss_fn,
            torch.device(training.device), training,
            callbacks=[RichProgressBar(), MlflowEpochLogger(), timer], task=task,
        )
        history = trainer.fit(split["train"], split["val"])
    return [{name: row[name] for name in figures} for row in history], timer.times


SEGMENTATION_FIGURES = ("train_loss", "train_miou", "val_loss", "val_miou")


def segmentation_by_hand(shapes: Shapes, epochs: int) -> Run:
    engine.seed_everything(SEED)
    model = copy.deepcopy(shapes.model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, fused=True)  # as by_hand's
    loss_fn = nn.CrossEntropyLoss(ignore_index=IGNORE)
    split = shapes.loaders()
    rows, times = [], []
    for _ in range(epochs):
        start = time.perf_counter()
        model.train()
        total, seen, confusion = torch.zeros(()), 0, empty_confusion()
        for images, masks in split["train"]:
            optimizer.zero_grad()
            outputs = model(images)
            loss = loss_fn(outputs, masks)
            loss.backward()
            optimizer.step()
            total += loss.detach() * len(masks)
            seen += len(masks)
            confusion += segmentation.confusion_sums(outputs.argmax(1), masks,
                                                     len(SHAPE_CLASSES), IGNORE)
        rows.append({"train_loss": total.item() / seen, "train_miou": miou(confusion),
                     **validate(model, split["val"], loss_fn)})
        times.append(time.perf_counter() - start)
    return rows, times


@torch.inference_mode()
def validate(model: nn.Module, loader: torch.utils.data.DataLoader,
             loss_fn: nn.Module) -> dict[str, float]:
    model.eval()
    total, seen, confusion = torch.zeros(()), 0, empty_confusion()
    for images, masks in loader:
        outputs = model(images)
        total += loss_fn(outputs, masks) * len(masks)
        seen += len(masks)
        confusion += segmentation.confusion_sums(outputs.argmax(1), masks,
                                                 len(SHAPE_CLASSES), IGNORE)
    return {"val_loss": total.item() / seen, "val_miou": miou(confusion)}


def empty_confusion() -> torch.Tensor:
    return torch.zeros(len(SHAPE_CLASSES), len(SHAPE_CLASSES), dtype=torch.long)


def miou(confusion: torch.Tensor) -> float:
    """Over the classes in the targets or the predictions, as the engine's task counts."""
    matrix = confusion.double()
    hits = matrix.diag()
    union = matrix.sum(0) + matrix.sum(1) - hits
    return (hits[union > 0] / union[union > 0]).mean().item()


DETECTION_FIGURES = ("train_loss", "val_map", "val_map50")


def detection_by_hand(shapes: Shapes, epochs: int) -> Run:
    """torchvision's reference loop: the model's losses summed and stepped; validation's
    COCO mAP from torchmetrics, as a loop that reports it would."""
    engine.seed_everything(SEED)
    model = copy.deepcopy(shapes.model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, fused=True)  # as by_hand's
    split = shapes.loaders()
    rows, times = [], []
    for _ in range(epochs):
        start = time.perf_counter()
        model.train()
        total, seen = torch.zeros(()), 0
        for images, targets in split["train"]:
            optimizer.zero_grad()
            loss = sum(model(images, list(targets)).values())
            loss.backward()
            optimizer.step()
            total += loss.detach() * len(targets)
            seen += len(targets)
        rows.append({"train_loss": total.item() / seen, **detection_validate(model, split["val"])})
        times.append(time.perf_counter() - start)
    return rows, times


@torch.inference_mode()
def detection_validate(model: nn.Module, loader: torch.utils.data.DataLoader
                       ) -> dict[str, float]:
    model.eval()
    metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="pycocotools")
    for images, targets in loader:
        metric.update(model(images), list(targets))
    result = metric.compute()
    return {"val_map": result["map"].item(), "val_map50": result["map_50"].item()}


# --- the comparison -----------------------------------------------------------------


def compare(name: str, plain: Callable[[int], Run], ours: Callable[[int], Run], epochs: int,
            rounds: int) -> bool:
    """Both loops ``rounds`` times, which goes first alternating between rounds (on a
    shared machine the second of two runs often meets other load); prints the first
    round's figures, whether every round's agree to 5 decimals, and the median epoch
    times."""
    plain_times, engine_times, rows = [], [], []
    for round_ in range(1, rounds + 1):
        if round_ % 2:
            plain_rows, plain_epochs = plain(epochs)
            engine_rows, engine_epochs = ours(epochs)
        else:
            engine_rows, engine_epochs = ours(epochs)
            plain_rows, plain_epochs = plain(epochs)
        plain_times += plain_epochs[1:]  # the first epoch warms caches up
        engine_times += engine_epochs[1:]
        for epoch, (a, b) in enumerate(zip(plain_rows, engine_rows, strict=True), 1):
            rows.append({"round": round_, "epoch": epoch}
                        | {f"plain_{k}": v for k, v in a.items()}
                        | {f"engine_{k}": v for k, v in b.items()})
    table = pd.DataFrame(rows)
    figures = list(plain_rows[0])
    matches = all((table[f"plain_{k}"].round(5) == table[f"engine_{k}"].round(5)).all()
                  for k in figures)
    print(f"\n== {name}")
    print(table[table["round"] == 1].to_string(index=False, float_format="%.6f"))
    print(f"\nper-epoch {', '.join(figures)} match to 5 decimals: {'yes' if matches else 'NO'}")
    plain_median, ours_median = statistics.median(plain_times), statistics.median(engine_times)
    print(f"median epoch time  plain loop: {plain_median:.3f} s   engine: {ours_median:.3f} s")
    ratio = ours_median / plain_median
    print(f"engine / plain: {ratio:.3f}x  (overhead {100 * (ratio - 1):+.1f}%)")
    return matches


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=[*EPOCHS, "all"], default="all")
    parser.add_argument("--epochs", type=int, help="per run; by default "
                        + ", ".join(f"{epochs} for {task}" for task, epochs in EPOCHS.items()))
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    matches = []
    with tempfile.TemporaryDirectory() as store:
        mlflow.set_tracking_uri(f"sqlite:///{store}/mlflow.db")
        mlflow.set_experiment("parity")
        for task in EPOCHS if args.task == "all" else [args.task]:
            plain, ours = loops(task)
            matches.append(compare(task, plain, ours, args.epochs or EPOCHS[task], args.rounds))
    return 0 if all(matches) else 1


def loops(task: str) -> tuple[Callable[[int], Run], Callable[[int], Run]]:
    """The task's plain loop and its run through the engine."""
    if task == "image_classification":
        return by_hand, through_engine
    if task == "semantic_segmentation":
        shapes = Shapes.load(RAW / "shapes_segmentation", "write_shapes_segmentation.py", {
            "task": task, "source": "mask_folder", "image_size": 64,
            "segmentation": {"classes": SHAPE_CLASSES}}, ModelConfig("unet", {"width": 8}))
        plain, figures = segmentation_by_hand, SEGMENTATION_FIGURES
    else:
        shapes = Shapes.load(RAW / "shapes_detection", "write_shapes_detection.py", {
            "task": task, "source": "coco", "image_size": 128, "batch_size": 16,
            "detection": {"classes": SHAPE_CLASSES[1:]}}, ModelConfig("small_fcos", {"width": 16}))
        plain, figures = detection_by_hand, DETECTION_FIGURES
    return (lambda epochs: plain(shapes, epochs),
            lambda epochs: shapes_through_engine(shapes, epochs, figures))


if __name__ == "__main__":
    sys.exit(main())
