"""Transforms by name, the image Dataset, samplers and DataLoaders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import SequentialSampler

from kedro_torch.pytorch.cache import ImageStore
from kedro_torch.pytorch.config import DataConfig, TrainingConfig
from kedro_torch.pytorch.data import check_images
from kedro_torch.pytorch.engine import Trainer, seed_everything
from kedro_torch.pytorch.loaders import (
    ImageManifestDataset,
    SeededSampler,
    batch_transform,
    batches_on,
    build_dataloaders,
    build_transforms,
    default_num_workers,
    image_transform,
)
from kedro_torch.pytorch.models import SmallCNN
from kedro_torch.pytorch.tasks.image_classification import ImageClassification
from tests.image_files import write_image

CPU = torch.device("cpu")
AUGMENT = [("RandomResizedCrop", {"size": 12, "scale": (0.3, 1.0)}),
           ("randomhorizontalflip", {}),  # names match whatever their case
           ("ColorJitter", {"brightness": 0.5}),
           ("RandomErasing", {"p": 0.5})]


# --- transforms ------------------------------------------------------------------------


def test_transforms_resolve_by_name_with_kwargs():
    steps = build_transforms(AUGMENT, "data.transforms.train")
    assert [type(s).__name__ for s in steps] == [
        "RandomResizedCrop", "RandomHorizontalFlip", "ColorJitter", "RandomErasing",
    ]
    assert steps[0].size == (12, 12)


def test_unknown_transform_name_lists_the_valid_ones():
    with pytest.raises(ValueError) as error:
        build_transforms([("RandomFlip", {})], "data.transforms.train")
    message = str(error.value)
    assert "data.transforms.train[0].name: unknown name 'RandomFlip'" in message
    assert "RandAugment" in message and "TrivialAugmentWide" in message


def test_bad_transform_arguments_name_the_entry():
    with pytest.raises(ValueError, match=r"data\.transforms\.eval\[1\] \(CenterCrop\)"):
        build_transforms([("CenterCrop", {"size": 8}), ("CenterCrop", {"sise": 8})],
                         "data.transforms.eval")


def test_defaults_fill_only_arguments_a_transform_takes():
    mixup, flip = build_transforms([("MixUp", {}), ("RandomHorizontalFlip", {})], "k",
                                   num_classes=5)
    assert mixup.num_classes == 5
    assert type(flip).__name__ == "RandomHorizontalFlip"


def test_per_image_transform_always_ends_at_the_image_size():
    assert image_transform([], 16, 16) is None
    resize_only = image_transform([], 8, 16)
    assert resize_only(torch.zeros(1, 16, 16, dtype=torch.uint8)).shape == (1, 8, 8)
    crop = image_transform(build_transforms([("RandomCrop", {"size": 5})], "k"), 8, 16)
    assert crop(torch.zeros(3, 16, 16, dtype=torch.uint8)).shape == (3, 8, 8)


# --- the Dataset ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def image_paths(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("loader_images")
    return [str(write_image(root / f"{i:03d}.png", i, size=16)) for i in range(48)]


def dataset(paths, *, store=None, content_hashes=None, transform=None, mixing=None,
            targets=None, normalize_on="loader") -> ImageManifestDataset:
    return ImageManifestDataset(
        paths, targets if targets is not None else [i % 4 for i in range(len(paths))],
        channels=3, load_size=16, mean=[0.5], std=[0.5], content_hashes=content_hashes,
        store=store, transform=transform, batch_transform=mixing, normalize_on=normalize_on,
    )


def test_cached_images_are_exactly_the_decoded_ones(image_paths):
    entries, store = check_images(image_paths, ImageStore((3, 16, 16)), keep_pixels=True)
    hashes = entries["content_hash"].tolist()
    cached = dataset(image_paths, store=store, content_hashes=hashes)
    decoded = dataset(image_paths)
    for index in (0, 17, 47):
        assert torch.equal(cached.raw_image(index), decoded.raw_image(index))
    images, targets = cached.__getitems__([0, 1, 2])
    assert images.shape == (3, 3, 16, 16)
    assert torch.equal(images[1], decoded[1][0])
    assert targets.tolist() == [0, 1, 2]


def test_images_are_scaled_and_normalized_per_channel(tmp_path):
    path = tmp_path / "rgb.png"
    Image.new("RGB", (4, 4), (255, 0, 255)).save(path)
    data = ImageManifestDataset([str(path)], [3], channels=3, load_size=4,
                                mean=[0.0, 0.5, 1.0], std=[1.0, 0.5, 0.25])
    image, target = data[0]
    assert image.dtype == torch.float32
    assert image[:, 0, 0].tolist() == [1.0, -1.0, 0.0]
    assert target.item() == 3


def test_dataset_needs_one_target_per_path():
    with pytest.raises(ValueError, match="2 paths but 1 targets"):
        ImageManifestDataset(["a.png", "b.png"], [0], channels=1, load_size=4,
                             mean=[0.5], std=[0.5])


# --- DataLoaders -----------------------------------------------------------------------


def loaders(paths, seed=0, workers=0, sampler="shuffle", **kwargs):
    datasets = {split: dataset(paths, **kwargs) for split in ("train", "val", "test")}
    config = DataConfig(batch_size=8, eval_batch_size=16, num_workers=workers, sampler=sampler)
    return build_dataloaders(datasets, config, seed)


def test_automatic_workers_only_where_there_is_work_for_them(image_paths):
    """``num_workers: None``: no workers for a split whose every image is cached at its
    final size with no per-image transform; one per CPU wherever images are decoded or
    transformed."""
    entries, store = check_images(image_paths, ImageStore((3, 16, 16)), keep_pixels=True)
    hashes = entries["content_hash"].tolist()
    flip = image_transform(build_transforms([("RandomHorizontalFlip", {})], "t"), 16, 16)
    _, partial = check_images(image_paths[:2], ImageStore((3, 16, 16)), keep_pixels=True)
    datasets = {
        "copy_only": dataset(image_paths, store=store, content_hashes=hashes),
        "transformed": dataset(image_paths, store=store, content_hashes=hashes, transform=flip),
        "partly_cached": dataset(image_paths, store=partial, content_hashes=hashes),
        "uncached": dataset(image_paths),
    }
    built = build_dataloaders(datasets, DataConfig(batch_size=8, eval_batch_size=16), seed=0)
    assert {split: loader.num_workers for split, loader in built.items()} == {
        "copy_only": 0, "transformed": default_num_workers(),
        "partly_cached": default_num_workers(), "uncached": default_num_workers(),
    }
    assert not built["copy_only"].persistent_workers
    # Copied in the main process, the batch is the one workers decoding the files give.
    assert torch.equal(first_batch(built["copy_only"])[0], first_batch(built["uncached"])[0])


def first_batch(loader) -> tuple[torch.Tensor, torch.Tensor]:
    return next(iter(loader))


def test_only_train_shuffles_and_eval_uses_its_batch_size(image_paths):
    built = loaders(image_paths)
    # Each sampler is sharded across the ranks of whichever process group iterates it.
    assert isinstance(built["train"].sampler.sampler, SeededSampler)
    assert built["train"].sampler.pad
    assert built["train"].batch_size == 8
    for split in ("val", "test"):
        assert isinstance(built[split].sampler.sampler, SequentialSampler)
        assert not built[split].sampler.pad
        images, targets = first_batch(built[split])
        assert images.shape == (16, 3, 16, 16)
        assert targets.tolist() == [i % 4 for i in range(16)]
    train_targets = torch.cat([targets for _, targets in built["train"]])
    assert Counter(train_targets.tolist()) == Counter(i % 4 for i in range(48))
    assert train_targets.tolist() != [i % 4 for i in range(48)]


def test_each_epoch_shuffles_differently(image_paths):
    train = loaders(image_paths)["train"]
    assert not torch.equal(first_batch(train)[0], first_batch(train)[0])


def test_same_seed_gives_identical_augmented_batches_with_any_number_of_workers(image_paths):
    """Two runs with one seed see the same first batch, augmentations included."""
    transform = image_transform(build_transforms(AUGMENT, "k"), 12, 16)
    before = torch.random.get_rng_state()
    alone = first_batch(loaders(image_paths, seed=7, transform=transform)["train"])
    assert torch.equal(torch.random.get_rng_state(), before)  # the run's own RNG untouched
    again = first_batch(loaders(image_paths, seed=7, transform=transform)["train"])
    in_workers = first_batch(loaders(image_paths, seed=7, workers=2, transform=transform)["train"])
    other_seed = first_batch(loaders(image_paths, seed=8, transform=transform)["train"])
    assert alone[0].shape == (8, 3, 12, 12)
    for batch in (again, in_workers):
        assert torch.equal(batch[0], alone[0])
        assert torch.equal(batch[1], alone[1])
    assert not torch.equal(other_seed[0], alone[0])
    # The augmentations did change the images: not merely a reordering.
    plain = loaders(image_paths, seed=7)["train"].dataset
    assert not any(torch.equal(alone[0][0], plain[i][0][:, :12, :12]) for i in range(48))


def test_balanced_sampler_draws_classes_equally_often(image_paths):
    targets = [0] * 40 + [1] * 8
    built = loaders(image_paths, sampler="balanced", targets=targets)
    drawn = Counter()
    for _ in range(5):
        drawn.update(torch.cat([t for _, t in built["train"]]).tolist())
    assert 0.4 < drawn[1] / (drawn[0] + drawn[1]) < 0.6  # 8 of 48 without balancing


def test_mixup_makes_soft_targets_reproducibly(image_paths):
    mixing = batch_transform(build_transforms([("MixUp", {"alpha": 1.0}),
                                               ("CutMix", {"alpha": 1.0})], "k",
                                              num_classes=4))
    images, targets = first_batch(loaders(image_paths, seed=3, mixing=mixing)["train"])
    assert targets.shape == (8, 4)
    assert torch.allclose(targets.sum(dim=1), torch.ones(8))
    assert (targets.max(dim=1).values < 1).any()  # at least one image really mixed
    again = first_batch(loaders(image_paths, seed=3, mixing=mixing)["train"])
    assert torch.equal(again[0], images)
    assert torch.equal(again[1], targets)
    # Evaluation batches keep hard targets.
    assert first_batch(loaders(image_paths, mixing=mixing)["test"])[1].dim() == 1


def test_batches_normalized_on_the_device_are_the_loaders_own_floats(image_paths):
    """``normalize_on: device`` hands uint8 pixels to the device and normalizes them
    there: the model sees exactly the floats the workers would have made."""
    transform = image_transform(build_transforms(AUGMENT, "k"), 12, 16)
    on_loader = loaders(image_paths, seed=5, workers=2, transform=transform)
    on_device = loaders(image_paths, seed=5, workers=2, transform=transform,
                        normalize_on="device")
    expected = list(batches_on(on_loader["train"], CPU))
    received = list(batches_on(on_device["train"], CPU))
    assert len(received) == len(expected) == 6
    for (images, targets), (floats, labels) in zip(received, expected, strict=True):
        assert images.dtype == torch.float32
        assert torch.equal(images, floats)
        assert torch.equal(targets, labels)
    pixels, _ = first_batch(on_device["test"])
    assert pixels.dtype == torch.uint8
    assert pixels.shape == (16, 3, 12, 12)


def test_batch_transforms_need_batches_normalized_in_the_loader(image_paths):
    mixing = batch_transform(build_transforms([("MixUp", {"alpha": 1.0})], "k", num_classes=4))
    with pytest.raises(ValueError, match="need the batches normalized in the loader"):
        dataset(image_paths, mixing=mixing, normalize_on="device")


def test_training_is_the_same_wherever_the_batches_are_normalized(image_paths):
    def train(normalize_on: str) -> list[dict[str, float]]:
        built = loaders(image_paths, seed=1, normalize_on=normalize_on)
        seed_everything(0)
        model = SmallCNN(3, 4, width=8)
        trainer = Trainer(model, [torch.optim.SGD(model.parameters(), lr=0.1)],
                          nn.CrossEntropyLoss(), CPU,
                          TrainingConfig(epochs=2, progress_bar=False),
                          task=ImageClassification())
        return trainer.fit(built["train"], built["val"])

    assert train("device") == train("loader")


# --- memory ------------------------------------------------------------------------------

PEAK_MEMORY_SCRIPT = """
import json, sys
from kedro_torch.pytorch.data import check_images
from kedro_torch.pytorch.models import SmallCNN
from kedro_torch.pytorch.cache import ImageStore
from kedro_torch.pytorch.config import DataConfig, TrainingConfig
from kedro_torch.pytorch.loaders import ImageManifestDataset, build_dataloaders

def peak_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])

def build(paths, keep_pixels):
    entries, store = check_images(paths, ImageStore((3, 96, 96)), keep_pixels=keep_pixels)
    data = ImageManifestDataset(paths, [0] * len(paths), channels=3, load_size=96,
                                mean=[0.5], std=[0.5], content_hashes=entries["content_hash"],
                                store=store)
    return build_dataloaders({"train": data}, DataConfig(batch_size=8, num_workers=0), seed=0)

paths = json.loads(sys.argv[1])
peaks = []
for count, keep_pixels in ((50, False), (len(paths), False), (len(paths), True)):
    loaders = build(paths[:count], keep_pixels)
    peaks.append(peak_kib())
print(json.dumps(peaks))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads Linux's VmHWM")
def test_building_loaders_holds_no_decoded_images_unless_cached_in_memory(tmp_path):
    """Peak memory, in a fresh process: 50 images, 400 images, 400 with the memory cache."""
    paths = [str(write_image(tmp_path / f"{i}.png", i, size=96)) for i in range(400)]
    result = subprocess.run(
        [sys.executable, "-c", PEAK_MEMORY_SCRIPT, json.dumps(paths)],
        capture_output=True, text=True, check=True, env=os.environ,
    )
    small, large, large_cached = json.loads(result.stdout)
    decoded_kib = 400 * 3 * 96 * 96 // 1024  # 400 images, decoded: 10.5 MiB
    assert large - small < decoded_kib / 8
    assert large_cached - large > decoded_kib * 0.9
