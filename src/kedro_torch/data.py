"""Image manifests, splits, transforms, Datasets and DataLoaders.

Plain PyTorch and pandas: usable from a script or a notebook without Kedro. A
*manifest* is a DataFrame with one row per image (``path``, ``label``, ...); every
later stage works from it, so the images themselves are only decoded inside the
``Dataset``, lazily, by whichever DataLoader worker asks for them.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

import fsspec
import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
)
SPLITS = ("train", "val", "test")


def manifest_from_listing(listing: pd.DataFrame) -> pd.DataFrame:
    """Keep the image files of a folder listing and label each by its class folder.

    ``listing`` has ``path`` (openable) and ``relative_path`` (``<class>/<file>``)
    columns, as :class:`kedro_torch.datasets.ImageFolderDataset` loads them.
    Hidden files and files of other types are skipped and counted in the log.
    """
    relative = listing["relative_path"].map(PurePosixPath)
    hidden = relative.map(lambda p: any(part.startswith(".") for part in p.parts))
    is_image = relative.map(lambda p: p.suffix.lower() in IMAGE_EXTENSIONS)
    in_class_folder = relative.map(lambda p: len(p.parts) >= 2)
    keep = ~hidden & is_image & in_class_folder
    skipped = {
        "hidden": int(hidden.sum()),
        "not an image": int((~hidden & ~is_image).sum()),
        "outside a class folder": int((~hidden & is_image & ~in_class_folder).sum()),
    }
    if any(skipped.values()):
        logger.info(
            "Skipped files: %s", ", ".join(f"{n} {why}" for why, n in skipped.items() if n)
        )
    kept = listing[keep]
    if kept.empty:
        raise ValueError(
            "no images found: expected one subfolder per class holding files with "
            f"extensions {', '.join(sorted(IMAGE_EXTENSIONS))}"
        )
    manifest = pd.DataFrame(
        {
            "path": kept["path"].to_numpy(),
            "relative_path": kept["relative_path"].to_numpy(),
            "label": relative[keep].map(lambda p: p.parts[0]).to_numpy(),
        }
    )
    manifest = manifest.sort_values("relative_path", ignore_index=True)
    logger.info(
        "Found %d images in %d classes", len(manifest), manifest["label"].nunique()
    )
    return manifest


def encode_labels(labels: Sequence[str]) -> dict[str, int]:
    """Map class names to indices in sorted order, as ``ImageFolder`` does."""
    return {name: index for index, name in enumerate(sorted(set(labels)))}


def stratified_split(
    keys: Sequence[str], labels: Sequence[str], fractions: dict[str, float], seed: int
) -> np.ndarray:
    """Assign each row to train/val/test, class by class, deterministically.

    Within a class, rows are ordered by a seeded hash of their key (the file's
    relative path) rather than by a shuffle of the whole list, so the same files
    and seed always give the same split, whatever order the files were listed in.
    """
    keys = np.asarray(keys, dtype=object)
    labels = np.asarray(labels, dtype=object)
    order_key = np.array([_seeded_hash(key, seed) for key in keys])
    assignment = np.empty(len(keys), dtype=object)
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        rows = rows[np.argsort(order_key[rows], kind="stable")]
        counts = _split_counts(len(rows), fractions)
        for split, count_before, count in zip(
            SPLITS, np.cumsum([0, *counts[:-1]]), counts, strict=True
        ):
            if count <= 0 and fractions[split] > 0:
                raise ValueError(
                    f"class {label!r} has {len(rows)} images, too few to put at least "
                    f"one in each of train/val/test with fractions {fractions}"
                )
            assignment[rows[count_before : count_before + count]] = split
    return assignment


def _split_counts(n: int, fractions: dict[str, float]) -> list[int]:
    n_test = round(n * fractions["test"])
    n_val = round(n * fractions["val"])
    if fractions["test"] > 0:
        n_test = max(n_test, 1)
    if fractions["val"] > 0:
        n_val = max(n_val, 1)
    return [n - n_val - n_test, n_val, n_test]


def _seeded_hash(key: str, seed: int) -> int:
    digest = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def build_transform(
    image_size: int, mean: Sequence[float], std: Sequence[float]
) -> v2.Transform:
    """Decoded PIL image -> normalised float tensor of shape (C, size, size)."""
    return v2.Compose(
        [
            v2.PILToTensor(),
            v2.Resize((image_size, image_size), antialias=True),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(mean), std=list(std)),
        ]
    )


class ImageManifestDataset(Dataset):
    """Images listed by path, decoded with PIL on access.

    Only paths and integer targets are held, so building the dataset costs no
    memory per image; any fsspec URL works as a path.
    """

    def __init__(
        self,
        paths: Sequence[str],
        targets: Sequence[int],
        channels: int,
        transform: v2.Transform,
    ):
        if len(paths) != len(targets):
            raise ValueError(f"{len(paths)} paths but {len(targets)} targets")
        self.paths = list(paths)
        self.targets = torch.as_tensor(targets, dtype=torch.long)
        self.mode = {1: "L", 3: "RGB"}[channels]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(load_image(self.paths[index], self.mode)), self.targets[index]


def load_image(path: str, mode: str) -> Image.Image:
    """Decode one image file into PIL ``mode`` ("L" or "RGB")."""
    with fsspec.open(path, "rb") as file:
        image = Image.open(file)
        image.load()
    return image if image.mode == mode else image.convert(mode)


@dataclass(frozen=True)
class LoaderSettings:
    batch_size: int
    eval_batch_size: int
    num_workers: int
    seed: int
    pin_memory: bool = False


def build_dataloaders(
    datasets: dict[str, Dataset], settings: LoaderSettings
) -> dict[str, DataLoader]:
    """One DataLoader per split; only ``train`` shuffles, with a seeded generator."""
    loaders = {}
    for split, dataset in datasets.items():
        is_train = split == "train"
        generator = torch.Generator().manual_seed(settings.seed) if is_train else None
        loaders[split] = DataLoader(
            dataset,
            batch_size=settings.batch_size if is_train else settings.eval_batch_size,
            shuffle=is_train,
            generator=generator,
            num_workers=settings.num_workers,
            persistent_workers=settings.num_workers > 0,
            pin_memory=settings.pin_memory,
        )
    return loaders
