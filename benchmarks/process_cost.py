"""Whole-process cost of `kedro run` against a hand-written PyTorch script.

Requirement measured:

    `kedro run --pipeline training --params model.name=resnet18,training.epochs=2,
    data.image_size=32` costs, for its whole process, at most 1.15x a hand-written
    PyTorch script that trains the same torchvision model for the same epochs on
    the same images.

The hand-written script is :func:`plain_training` below (run as
``python benchmarks/process_cost.py --plain``). It imports torch, torchvision and
PIL only: no kedro, no mlflow, no kedro_torch. It lists data/01_raw/digits, splits
each class 70/15/15 with a seeded shuffle, decodes the PNGs with PIL, applies the
project's transforms (PILToTensor, Resize 32, ToDtype float scaled, Normalize 0.5/0.5),
trains torchvision's resnet18(num_classes=10) with a 1-channel first convolution,
AdamW(lr=0.003, weight_decay=1e-4), CosineAnnealingLR and CrossEntropyLoss, batch
size 64, 0 workers, 2 epochs with a validation pass each, then reports test
accuracy and saves the state_dict.

Both commands are timed as whole processes (wall clock from launch to exit, with
``subprocess``), after one untimed warm-up of each, alternating plain and kedro for
``--repeats`` rounds. The kedro run executes in the project root and so writes
to mlflow.db, mlruns/ and data/ there like any other run.

Run from the project root:

    .venv/bin/python benchmarks/process_cost.py              # 3 rounds
    .venv/bin/python benchmarks/process_cost.py --repeats 5
    .venv/bin/python benchmarks/process_cost.py --plain      # the baseline alone
"""

from __future__ import annotations

import argparse
import os
import random
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

PROJECT_ROOT = Path(__file__).resolve().parents[1]
IMAGES = PROJECT_ROOT / "data" / "01_raw" / "digits"
KEDRO_PARAMS = "model.name=resnet18,training.epochs=2,data.image_size=32"
BUDGET = 1.15  # kedro may cost at most this many times the plain script

# The hand-written script's settings: the project's parameters for this run.
IMAGE_SIZE = 32
BATCH_SIZE = 64
EVAL_BATCH_SIZE = 128  # the project's default: 2 x batch size
EPOCHS = 2
SEED = 42


# --------------------------------------------------------------------------------------
# The hand-written baseline
# --------------------------------------------------------------------------------------


class DigitImages(Dataset):
    """(path, label) pairs; each image is decoded with PIL when asked for."""

    def __init__(self, samples: list[tuple[Path, int]], transform: v2.Transform):
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        with Image.open(path) as image:
            return self.transform(image.convert("L")), label


def split_by_class(root: Path, seed: int) -> dict[str, list[tuple[Path, int]]]:
    """70/15/15 train/val/test, class by class, with a seeded shuffle."""
    classes = sorted(folder.name for folder in root.iterdir() if folder.is_dir())
    splits: dict[str, list[tuple[Path, int]]] = {"train": [], "val": [], "test": []}
    rng = random.Random(seed)
    for label, name in enumerate(classes):
        files = sorted((root / name).glob("*.png"))
        rng.shuffle(files)
        n_val, n_test = round(0.15 * len(files)), round(0.15 * len(files))
        splits["val"] += [(f, label) for f in files[:n_val]]
        splits["test"] += [(f, label) for f in files[n_val : n_val + n_test]]
        splits["train"] += [(f, label) for f in files[n_val + n_test :]]
    return splits


@torch.no_grad()
def accuracy(model: nn.Module, loader: DataLoader, loss_fn: nn.Module) -> tuple[float, float]:
    model.eval()
    total_loss, correct, seen = 0.0, 0, 0
    for images, targets in loader:
        logits = model(images)
        total_loss += loss_fn(logits, targets).item() * len(targets)
        correct += (logits.argmax(dim=1) == targets).sum().item()
        seen += len(targets)
    return total_loss / seen, correct / seen


def plain_training(state_dict_path: Path) -> float:
    """Train resnet18 on the digits for 2 epochs; save its weights; return test accuracy."""
    torch.manual_seed(SEED)
    transform = v2.Compose(
        [
            v2.PILToTensor(),
            v2.Resize((IMAGE_SIZE, IMAGE_SIZE), antialias=True),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=[0.5], std=[0.5]),
        ]
    )
    splits = split_by_class(IMAGES, SEED)
    print("split sizes:", {name: len(samples) for name, samples in splits.items()})
    train_loader = DataLoader(
        DigitImages(splits["train"], transform), batch_size=BATCH_SIZE, shuffle=True,
        num_workers=0, generator=torch.Generator().manual_seed(SEED),
    )
    val_loader = DataLoader(DigitImages(splits["val"], transform), batch_size=EVAL_BATCH_SIZE)
    test_loader = DataLoader(DigitImages(splits["test"], transform), batch_size=EVAL_BATCH_SIZE)

    model = torchvision.models.resnet18(num_classes=10)
    model.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.003, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=EPOCHS)
    loss_fn = nn.CrossEntropyLoss()

    for epoch in range(1, EPOCHS + 1):
        model.train()
        for images, targets in train_loader:
            optimizer.zero_grad()
            loss = loss_fn(model(images), targets)
            loss.backward()
            optimizer.step()
        val_loss, val_accuracy = accuracy(model, val_loader, loss_fn)
        print(f"epoch {epoch}: val_loss={val_loss:.4f} val_accuracy={val_accuracy:.4f}")
        scheduler.step()

    _, test_accuracy = accuracy(model, test_loader, loss_fn)
    print(f"Test accuracy: {test_accuracy:.4f}")
    torch.save(model.state_dict(), state_dict_path)
    return test_accuracy


# --------------------------------------------------------------------------------------
# The measurement
# --------------------------------------------------------------------------------------


@dataclass
class Timing:
    wall_s: float
    cpu_s: float  # user + system time of the process and its children
    test_accuracy: float | None


def timed(command: list[str], env: dict[str, str], log: Path) -> Timing:
    """Run ``command`` in the project root; wall clock from launch to exit."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with log.open("w") as out:
        result = subprocess.run(
            command, cwd=PROJECT_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            check=False,
        )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    text = log.read_text(errors="replace")
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({result.returncode}):\n{text[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    found = re.findall(r"Test accuracy:\s*([0-9.]+)", text)
    return Timing(wall, cpu, float(found[-1]) if found else None)


def benchmark(repeats: int) -> None:
    env = os.environ | {"KEDRO_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"}
    bin_dir = Path(sys.executable).parent
    kedro = bin_dir / "kedro"
    if not kedro.exists():
        sys.exit(f"no kedro executable beside {sys.executable}")
    with tempfile.TemporaryDirectory(prefix="process_cost-") as tmp:
        tmp_dir = Path(tmp)
        commands = {
            "plain": [sys.executable, str(Path(__file__).resolve()), "--plain",
                      "--state-dict", str(tmp_dir / "plain_state_dict.pt")],
            "kedro": [str(kedro), "run", "--pipeline", "training", "--params", KEDRO_PARAMS],
        }
        print(f"python: {sys.executable}  torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
        for name, command in commands.items():
            print(f"{name:>5}: {' '.join(command)}")
        load = os.getloadavg()[0]
        print(f"load average (1 min) before the warm-up: {load:.2f}"
              + ("  -- other processes compete for the CPUs; timings will be noisy"
                 if load > 0.5 else ""))
        print("warm-up (untimed) ...", flush=True)
        for name, command in commands.items():
            timed(command, env, tmp_dir / f"{name}-warmup.log")

        results: dict[str, list[Timing]] = {name: [] for name in commands}
        for round_ in range(1, repeats + 1):
            for name, command in commands.items():
                timing = timed(command, env, tmp_dir / f"{name}-{round_}.log")
                results[name].append(timing)
                acc = "-" if timing.test_accuracy is None else f"{timing.test_accuracy:.4f}"
                print(f"round {round_}  {name:>5}: wall {timing.wall_s:6.2f} s  "
                      f"cpu {timing.cpu_s:6.2f} s  test accuracy {acc}", flush=True)

    plain = [t.wall_s for t in results["plain"]]
    kedro_runs = [t.wall_s for t in results["kedro"]]
    ratios = [k / p for k, p in zip(kedro_runs, plain, strict=True)]
    median_plain, median_kedro = statistics.median(plain), statistics.median(kedro_runs)
    ratio = median_kedro / median_plain
    cpu_ratio = statistics.median(t.cpu_s for t in results["kedro"]) / statistics.median(
        t.cpu_s for t in results["plain"]
    )
    print()
    print(f"load average (1 min) after the last round: {os.getloadavg()[0]:.2f}")
    print(f"median wall, plain script : {median_plain:6.2f} s  (runs: "
          f"{', '.join(f'{t:.2f}' for t in plain)})")
    print(f"median wall, kedro run    : {median_kedro:6.2f} s  (runs: "
          f"{', '.join(f'{t:.2f}' for t in kedro_runs)})")
    print(f"extra wall time of kedro  : {median_kedro - median_plain:6.2f} s")
    print(f"ratio kedro/plain, medians: {ratio:.3f}   (budget {BUDGET:.2f}: "
          f"{'within' if ratio <= BUDGET else 'OVER'})")
    print(f"ratio kedro/plain, min of the per-round ratios: {min(ratios):.3f}")
    print(f"ratio kedro/plain, median CPU time (user+sys): {cpu_ratio:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (default 3)")
    parser.add_argument("--plain", action="store_true",
                        help="run the hand-written baseline once and exit")
    parser.add_argument("--state-dict", type=Path, default=None,
                        help="where --plain saves the weights (default: a temporary file)")
    args = parser.parse_args()
    if args.plain:
        if args.state_dict is not None:
            plain_training(args.state_dict)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                plain_training(Path(tmp) / "state_dict.pt")
        return
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    benchmark(args.repeats)


if __name__ == "__main__":
    main()
