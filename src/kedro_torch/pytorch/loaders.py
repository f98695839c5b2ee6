"""Feeding checked images to a model: transforms, the Dataset, samplers, DataLoaders.

Plain PyTorch. Per image, a ``(channels, size, size)`` uint8 tensor comes from the
:class:`~kedro_torch.pytorch.cache.ImageStore` when it holds the image, or is decoded
from the file; the per-image transforms (``torchvision.transforms.v2``, chosen by
name) run on it; then a whole batch is converted to float and normalized at once,
and the batch transforms (MixUp, CutMix) run on it. With ``normalize_on="device"``
the batch stays uint8 and :func:`batches_on` normalizes it on the training device,
with the same operations, after a copy of a quarter of the bytes.

Randomness: the training sampler pairs every index with a seed drawn from one
seeded generator, and each image's transforms run under that seed. So the same
seed gives the same augmented batches whatever ``num_workers`` is, and in the
main process the augmentations leave the global random state untouched.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch.utils.data import (
    DataLoader,
    Dataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
    WeightedRandomSampler,
    get_worker_info,
)
from torchvision.transforms import v2

from kedro_torch.pytorch import images
from kedro_torch.pytorch.cache import ImageStore
from kedro_torch.pytorch.config import DataConfig
from kedro_torch.pytorch.distributed import shard_for_this_rank
from kedro_torch.pytorch.interrupts import leave_ctrl_c_to_the_main_process
from kedro_torch.pytorch.optimizers import classes_in, resolve

logger = logging.getLogger(__name__)

TransformSpec = tuple[str, Mapping[str, Any]]


def default_num_workers() -> int:
    """The CPUs this process may run on (fewer than ``os.cpu_count()`` in a container)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


# --- transforms -----------------------------------------------------------------------


def transform_classes() -> dict[str, type]:
    return classes_in(v2, v2.Transform)


def build_transforms(
    specs: Sequence[TransformSpec], key: str, **defaults: Any
) -> list[v2.Transform]:
    """Transforms by ``torchvision.transforms.v2`` class name, with their kwargs.

    ``defaults`` fill arguments a class takes but the spec leaves out (MixUp and
    CutMix need ``num_classes``). Errors name the YAML key of the failing entry.
    """
    built = []
    for i, (name, kwargs) in enumerate(specs):
        cls = resolve(name, transform_classes(), f"{key}[{i}].name")
        accepted = inspect.signature(cls).parameters
        filled = {k: v for k, v in defaults.items() if k in accepted} | dict(kwargs)
        try:
            built.append(cls(**filled))
        except (TypeError, ValueError) as error:
            raise ValueError(f"{key}[{i}] ({cls.__name__}): {error}") from error
    return built


def image_transform(
    steps: Sequence[v2.Transform], image_size: int, load_size: int
) -> v2.Transform | None:
    """The per-image steps, ending at ``image_size`` whatever the steps did to the size."""
    if not steps and load_size == image_size:
        return None
    # Resize returns its input untouched when the size already matches.
    return v2.Compose([*steps, v2.Resize((image_size, image_size), antialias=True)])


def batch_transform(steps: Sequence[v2.Transform]) -> v2.Transform | None:
    """One of the steps per batch, as torchvision's reference recipe picks MixUp or CutMix."""
    if not steps:
        return None
    return steps[0] if len(steps) == 1 else v2.RandomChoice(list(steps))


def normalization_constants(
    mean: Sequence[float], std: Sequence[float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)`` such that ``pixels * scale - shift`` is ``(pixels / 255 - mean) / std``.

    Converting uint8 pixels to float first, then scaling and shifting in place, is
    about 6x faster than one mixed-type multiplication; training and inference both
    normalize this way, so they give the same floats.
    """
    std_tensor = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
    scale = 1 / (255 * std_tensor)
    return scale, torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1) / std_tensor


# --- the Dataset ------------------------------------------------------------------------


class ImageManifestDataset(Dataset):
    """Labelled images by path, from the store when it holds them, else decoded on access
    (from files, or through another ``source`` of images such as a torchvision dataset).

    Holds paths, targets and where each image sits in the store, never decoded
    images of its own. An item is an index, or ``(index, seed)`` to run the
    image's transforms under that seed. ``__getitems__`` returns whole finished
    batches ``(images, targets)``: normalizing a batch at once is far cheaper than
    image by image; :meth:`collate` passes them through the DataLoader unchanged.
    """

    def __init__(
        self,
        paths: Sequence[str],
        targets: Sequence[int],
        *,
        channels: int,
        load_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        content_hashes: Sequence[str] | None = None,
        store: ImageStore | None = None,
        transform: v2.Transform | None = None,
        batch_transform: v2.Transform | None = None,
        source: images.ImageSource = images.FILES,
        normalize_on: str = "loader",
    ):
        if len(paths) != len(targets):
            raise ValueError(f"{len(paths)} paths but {len(targets)} targets")
        if normalize_on == "device" and batch_transform is not None:
            raise ValueError("batch transforms (MixUp, CutMix) mix normalized floats: they "
                             "need the batches normalized in the loader, not on the device")
        self.paths = list(paths)
        self.targets = torch.as_tensor(targets, dtype=torch.long)
        self.channels, self.load_size = channels, load_size
        self.transform, self.batch_transform = transform, batch_transform
        self.source = source
        self.store = store if store is not None and len(store) else None
        self._chunks, self._rows = (
            self.store.locate(content_hashes) if self.store is not None else (None, None)
        )
        self.normalization = normalization_constants(mean, std)
        self.normalize_on = normalize_on

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def fully_cached(self) -> bool:
        """Whether the store holds every image, so that none is decoded on access."""
        return self._chunks is not None and bool((self._chunks >= 0).all())

    def raw_image(self, index: int) -> torch.Tensor:
        """The decoded, resized uint8 image, before any transform."""
        if self._chunks is not None and self._chunks[index] >= 0:
            return self.store.image(int(self._chunks[index]), int(self._rows[index]))
        return torch.from_numpy(
            self.source.decode(self.paths[index], self.load_size, self.channels)
        )

    def _transformed(self, index: int, seed: int | None) -> torch.Tensor:
        image = self.raw_image(index)
        if self.transform is None:
            return image
        if seed is None:
            return self.transform(image)
        with seeded(seed):
            return self.transform(image)

    def _normalized(self, batch: torch.Tensor) -> torch.Tensor:
        if self.normalize_on == "device":
            return batch
        if get_worker_info() is None:
            out = torch.empty(batch.shape, dtype=torch.float32)
        else:
            # Written straight into shared memory, as default_collate does: the batch
            # then reaches the main process without one more copy of its floats.
            storage = torch.UntypedStorage._new_shared(batch.numel() * 4)
            out = torch.empty(0, dtype=torch.float32).set_(storage).view(batch.shape)
        return normalize(batch, out, *self.normalization)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, seed = item if isinstance(item, tuple) else (item, None)
        image = self._normalized(self._transformed(index, seed).unsqueeze(0))[0]
        return image, self.targets[index]

    def __getitems__(self, items: Sequence) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = [item if isinstance(item, tuple) else (item, None) for item in items]
        batch = torch.stack([self._transformed(index, seed) for index, seed in pairs])
        batch = self._normalized(batch)
        targets = self.targets[[index for index, _ in pairs]]
        seed = pairs[0][1]
        if self.batch_transform is not None and seed is not None:
            with seeded(seed + 1):
                batch, targets = self.batch_transform(batch, targets)
        return batch, targets

    @staticmethod
    def collate(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return batch


def normalize(pixels: torch.Tensor, out: torch.Tensor, scale: torch.Tensor,
              shift: torch.Tensor) -> torch.Tensor:
    """uint8 ``pixels`` as normalized floats in ``out``: the loader's and the device's way."""
    return out.copy_(pixels).mul_(scale).sub_(shift)


def batches_on(loader: Iterable, device: torch.device) -> Iterator[tuple[torch.Tensor, ...]]:
    """A loader's ``(images, targets)`` on ``device``; uint8 images (``data.normalize_on:
    device``) are normalized there, as the loader's workers would have."""
    constants = None
    for inputs, targets in loader:
        inputs = inputs.to(device, non_blocking=True)
        if inputs.dtype == torch.uint8:
            if constants is None:
                constants = [c.to(device) for c in loader.dataset.normalization]
            inputs = normalize(inputs, torch.empty(inputs.shape, device=device), *constants)
        yield inputs, targets.to(device, non_blocking=True)


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block under ``seed`` on the CPU generator, restoring its state afterwards.

    Only the CPU generator: transforms draw from it, and ``torch.manual_seed``
    also reseeds every accelerator, which costs about 150 µs per image.
    """
    generator = torch.default_generator
    state = generator.get_state()
    generator.manual_seed(seed)
    try:
        yield
    finally:
        generator.set_state(state)


# --- samplers and DataLoaders ------------------------------------------------------------


class SeededSampler(Sampler):
    """Pairs each index of ``sampler`` with a seed for that sample's augmentations."""

    def __init__(self, sampler: Sampler, generator: torch.Generator):
        self.sampler, self.generator = sampler, generator

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = list(self.sampler)
        seeds = torch.randint(0, 2**62, (len(indices),), generator=self.generator).tolist()
        return iter(zip(indices, seeds, strict=True))

    def __len__(self) -> int:
        return len(self.sampler)


def class_balanced_sampler(targets: torch.Tensor, generator: torch.Generator) -> Sampler:
    """Draws every class equally often on average: weights 1 / (images of its class)."""
    counts = torch.bincount(targets)
    weights = 1.0 / counts[targets].to(torch.float64)
    return WeightedRandomSampler(weights, len(targets), replacement=True, generator=generator)


def build_dataloaders(
    datasets: dict[str, ImageManifestDataset], config: DataConfig, seed: int,
    pin_memory: bool = False, shard: bool = True,
) -> dict[str, DataLoader]:
    """One DataLoader per split, as the ``data`` parameters say; ``train`` is shuffled
    (or class-balanced) and seeded with ``seed``.

    With ``shard``, each sampler is sharded across the ranks of the process group that
    iterates it: the training split padded so that every rank runs as many batches,
    the others without padding, so that their metrics count each image once.
    """
    loaders, chosen = {}, {}
    for split, dataset in datasets.items():
        workers = config.num_workers
        if workers is None:
            workers = chosen[split] = auto_num_workers(dataset)
        is_train = split == "train"
        generator = torch.Generator().manual_seed(seed) if is_train else None
        if is_train and config.sampler == "balanced":
            sampler = SeededSampler(class_balanced_sampler(dataset.targets, generator), generator)
        elif is_train:
            sampler = SeededSampler(RandomSampler(dataset, generator=generator), generator)
        else:
            sampler = SequentialSampler(dataset)
        loaders[split] = DataLoader(
            dataset,
            batch_size=config.batch_size if is_train else config.validation_batch_size,
            sampler=shard_for_this_rank(sampler, pad=is_train) if shard else sampler,
            collate_fn=dataset.collate,
            num_workers=workers,
            persistent_workers=config.persistent_workers and workers > 0,
            prefetch_factor=config.prefetch_factor if workers > 0 else None,
            pin_memory=pin_memory,
            generator=generator,
            worker_init_fn=leave_ctrl_c_to_the_main_process,
        )
    if chosen:
        logger.info("DataLoader workers, chosen per split: %s",
                    ", ".join(f"{split} {n}" for split, n in chosen.items()))
    return loaders


def auto_num_workers(dataset: ImageManifestDataset) -> int:
    """Workers for ``num_workers: null``: one per CPU, or none where they could only copy.

    When the cache holds every image of a split at its final size and no per-image
    transform runs, a batch is one copy and one normalization, well under a
    millisecond in the main process; starting worker processes and passing batches
    back from them costs more than that saves (0.8 s of a 2-epoch resnet18 run on
    the digits, whose whole data pass takes 0.03 s).
    """
    if dataset.transform is None and dataset.fully_cached:
        return 0
    return default_num_workers()
