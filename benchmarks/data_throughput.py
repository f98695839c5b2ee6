"""Images per second through the project's DataLoaders against torchvision's ImageFolder.

Requirement measured:

    The project's DataLoader reads at least 1.0x the images per second of
    ``torchvision.datasets.ImageFolder`` + ``DataLoader`` with the same transforms
    and workers without the cache, and at least 3x with the cache from the second
    epoch.

The script writes a folder of JPEGs (default 5,000 images of 256x256 in 10 classes,
drawn shapes on gradients, quality 90; kept in ``--data-dir`` and reused), then, in
one process and in the same round, times full training epochs of:

- ``imagefolder``: ``ImageFolder`` with ``PILToTensor, Resize(size), RandomHorizontalFlip,
  ToDtype(float32, scale=True), Normalize`` and a shuffling DataLoader;
- ``project/<cache>``: the project's own path for ``data.cache`` none, memory and disk:
  ``check_images`` (the pipeline's transform stage, which reads and decodes every
  file once: timed separately as "check"), then ``ImageManifestDataset`` +
  ``build_dataloaders`` with ``RandomHorizontalFlip`` and the same normalization.
  ``disk`` is timed on its second run, which finds every image in the cache.

Same batch size, number of workers (default: every CPU), persistent workers. In each
round all four loaders are built first, then their epochs are timed in turn (epoch 1
of each, in a rotating order, then epoch 2 of each, ...), so a machine whose load
changes over time weighs on all of them alike. The figures are medians over
``--repeats`` rounds: of the rates, and of each round's own ratios.

    .venv/bin/python benchmarks/data_throughput.py
    .venv/bin/python benchmarks/data_throughput.py --images 1000 --repeats 1   # quick look
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from kedro_torch.pytorch.cache import ImageStore
from kedro_torch.pytorch.config import DataConfig
from kedro_torch.pytorch.data import check_images
from kedro_torch.pytorch.loaders import (
    ImageManifestDataset,
    build_dataloaders,
    build_transforms,
    default_num_workers,
    image_transform,
)

CLASSES = 10
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def write_images(root: Path, count: int, size: int, max_size: int | None = None,
                 classes: int = CLASSES) -> list[tuple[str, int]]:
    """``count`` JPEGs in ``root/<class>/``, written once and found again next time:
    ``size`` px square, or with width and height drawn from ``[size, max_size]`` (as
    photos come)."""
    rng = np.random.default_rng(0)
    samples = []
    for index in range(count):
        label = index % classes
        path = root / f"class_{label}" / f"{index:05d}.jpg"
        samples.append((str(path), label))
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        width, height = (size, size) if max_size is None else rng.integers(size, max_size + 1, 2)
        across = np.linspace(0, 255, width, dtype=np.float32)
        down = np.linspace(0, 255, height, dtype=np.float32)
        tint = rng.uniform(0.3, 1.0, size=3)
        background = (across[None, :, None] * tint + down[:, None, None] * (1 - tint)) / 2
        image = Image.fromarray(background.astype(np.uint8))
        draw = ImageDraw.Draw(image)
        side = min(width, height)
        for _ in range(6):
            x, y = rng.integers(0, width), rng.integers(0, height)
            radius = int(rng.integers(side // 16, side // 4))
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
            shape((x - radius, y - radius, x + radius, y + radius), fill=colour)
        image.save(path, "JPEG", quality=90)
    return samples


def epoch_rate(loader: DataLoader) -> float:
    """Images per second of one epoch: every batch is fetched; none is used, so the
    figure is the loader's alone."""
    start = time.perf_counter()
    for _ in loader:
        pass
    return len(loader.dataset) / (time.perf_counter() - start)


def imagefolder_loader(root: Path, size: int, args: argparse.Namespace) -> DataLoader:
    transform = v2.Compose([
        v2.PILToTensor(),
        v2.Resize((size, size), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(MEAN, STD),
    ])
    dataset = torchvision.datasets.ImageFolder(str(root), transform=transform)
    return DataLoader(dataset, batch_size=args.batch_size, shuffle=True,
                      num_workers=args.workers, persistent_workers=args.workers > 0,
                      generator=torch.Generator().manual_seed(0))


def project_loader(samples: list[tuple[str, int]], size: int, cache: str,
                   cache_dir: Path, args: argparse.Namespace) -> tuple[float, DataLoader]:
    """Seconds of the check stage, and the training DataLoader."""
    paths = [path for path, _ in samples]
    shape = (3, size, size)
    start = time.perf_counter()
    if cache == "disk":
        store = ImageStore.open(str(cache_dir))
        store = store if store.image_shape == shape else store.empty_like(shape)
    else:
        store = ImageStore(shape)
    entries, store = check_images(paths, store, keep_pixels=cache != "none",
                                  use_fingerprints=cache == "disk",
                                  num_workers=args.workers)
    if cache == "disk":
        store.save()
    check_seconds = time.perf_counter() - start
    flip = build_transforms([("RandomHorizontalFlip", {})], "data.transforms.train")
    dataset = ImageManifestDataset(
        paths, [label for _, label in samples], channels=3, load_size=size, mean=MEAN,
        std=STD, content_hashes=entries["content_hash"].tolist(), store=store,
        transform=image_transform(flip, size, size),
    )
    config = DataConfig(batch_size=args.batch_size, num_workers=args.workers)
    return check_seconds, build_dataloaders({"train": dataset}, config, seed=0)["train"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--source-size", type=int, default=256, help="JPEG width and height")
    parser.add_argument("--image-size", type=int, default=128, help="size fed to the model")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=default_num_workers())
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-dir", type=Path,
                        default=Path(tempfile.gettempdir()) / "kedro-torch-throughput")
    args = parser.parse_args()

    root = args.data_dir / f"jpeg-{args.images}-{args.source_size}"
    start = time.perf_counter()
    samples = write_images(root, args.images, args.source_size)
    print(f"{len(samples)} JPEGs of {args.source_size}x{args.source_size} in {root} "
          f"(ready in {time.perf_counter() - start:.1f} s)")
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
          f"{os.cpu_count()} CPUs, workers {args.workers}, batch {args.batch_size}, "
          f"image size {args.image_size}, {args.epochs} epochs x {args.repeats} rounds")
    print(f"load average (1 min) at the start: {os.getloadavg()[0]:.2f}")

    names = ["imagefolder", "project/none", "project/memory", "project/disk"]
    rates: dict[str, list[list[float]]] = {name: [] for name in names}
    checks: dict[str, list[float]] = {name: [] for name in names[1:]}
    cache_dir = args.data_dir / "image_cache"
    for round_ in range(args.repeats):
        shutil.rmtree(cache_dir, ignore_errors=True)
        # A first, untimed disk run fills the cache the timed run then finds.
        project_loader(samples, args.image_size, "disk", cache_dir, args)
        loaders = {"imagefolder": imagefolder_loader(root, args.image_size, args)}
        for cache in ("none", "memory", "disk"):
            seconds, loaders[f"project/{cache}"] = project_loader(
                samples, args.image_size, cache, cache_dir, args
            )
            checks[f"project/{cache}"].append(seconds)
        epochs: dict[str, list[float]] = {name: [] for name in names}
        for epoch in range(args.epochs):
            turn = round_ + epoch
            for name in names[turn % len(names):] + names[: turn % len(names)]:
                epochs[name].append(epoch_rate(loaders[name]))
        for name in names:
            rates[name].append(epochs[name])
        line = "  ".join(f"{name} " + "/".join(f"{r:.0f}" for r in epochs[name])
                         for name in names)
        print(f"round {round_ + 1}: images/s per epoch: {line}", flush=True)
        del loaders

    print()
    print(f"load average (1 min) at the end: {os.getloadavg()[0]:.2f}")
    median = {name: [statistics.median(run[e] for run in rates[name])
                     for e in range(args.epochs)] for name in names}
    print(f"{'loader':<16}{'check (s)':>10}" + "".join(
        f"{f'epoch {e + 1} (img/s)':>18}" for e in range(args.epochs)))
    for name in names:
        check = f"{statistics.median(checks[name]):.2f}" if name in checks else "-"
        print(f"{name:<16}{check:>10}" + "".join(f"{r:>18.0f}" for r in median[name]))
    ratio = {
        name: [statistics.median(mine[e] / base[e] for mine, base in
                                 zip(rates[name], rates["imagefolder"], strict=True))
               for e in range(args.epochs)]
        for name in names[1:]
    }
    print()
    print("ratios to imagefolder, same epoch (median of the rounds' ratios):")
    for name in names[1:]:
        print(f"  {name:<16}" + "  ".join(f"epoch {e + 1}: {r:.2f}x"
                                          for e, r in enumerate(ratio[name])))
    last = args.epochs - 1
    print(f"goal: without cache >= 1.0x ({ratio['project/none'][0]:.2f}x in epoch 1), "
          f"with the memory cache >= 3x from epoch 2 "
          f"({ratio['project/memory'][last]:.2f}x in epoch {last + 1})")


if __name__ == "__main__":
    main()
