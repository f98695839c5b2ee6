"""Manifests, splits, transforms, the image Dataset and the DataLoaders."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch.utils.data import RandomSampler, SequentialSampler, TensorDataset

from kedro_torch.data import (
    ImageManifestDataset,
    LoaderSettings,
    build_dataloaders,
    build_transform,
    encode_labels,
    manifest_from_listing,
    stratified_split,
)

FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}


def listing(relative_paths: list[str]) -> pd.DataFrame:
    """A listing as ImageFolderDataset loads it: openable path plus relative path."""
    return pd.DataFrame(
        {"path": [f"/root/{p}" for p in relative_paths], "relative_path": relative_paths}
    )


# --- manifest_from_listing -------------------------------------------------------


def test_manifest_keeps_images_in_class_folders_and_labels_them():
    manifest = manifest_from_listing(
        listing(
            [
                "dog/b.png",
                "cat/a.png",
                "cat/.hidden.png",  # hidden file
                ".DS_Store",  # hidden, root level
                "cat/.ipynb_checkpoints/c.png",  # inside a hidden folder
                "cat/notes.txt",  # not an image
                "dog/archive.zip",  # not an image
                "root.png",  # image outside any class folder
                "dog/UPPER.PNG",  # extensions match whatever their case
                "dog/mixed.JpEg",
                "bird/nested/deep.webp",  # labelled by the top-level folder
            ]
        )
    )
    assert list(manifest.columns) == ["path", "relative_path", "label"]
    # Sorted by relative path, so the manifest does not depend on listing order.
    assert manifest["relative_path"].tolist() == [
        "bird/nested/deep.webp", "cat/a.png", "dog/UPPER.PNG", "dog/b.png", "dog/mixed.JpEg",
    ]
    assert manifest["label"].tolist() == ["bird", "cat", "dog", "dog", "dog"]
    assert manifest["path"].tolist() == [f"/root/{p}" for p in manifest["relative_path"]]


def test_manifest_does_not_depend_on_listing_order():
    paths = [f"c{i % 3}/img{i}.png" for i in range(12)]
    shuffled = paths.copy()
    random.Random(0).shuffle(shuffled)
    pd.testing.assert_frame_equal(
        manifest_from_listing(listing(paths)), manifest_from_listing(listing(shuffled))
    )


@pytest.mark.parametrize(
    "paths", [["cat/readme.md", "dog/.x.png", "top.png"], ["a/b.txt"]]
)
def test_manifest_without_any_image_raises(paths):
    with pytest.raises(ValueError, match="no images found"):
        manifest_from_listing(listing(paths))


# --- labels and splits -------------------------------------------------------------


def test_encode_labels_in_sorted_order():
    assert encode_labels(["zebra", "ant", "moose", "ant"]) == {"ant": 0, "moose": 1, "zebra": 2}
    assert encode_labels(["3", "10", "2"]) == {"10": 0, "2": 1, "3": 2}  # string order


def balanced(n_per_class: int, classes: str = "abc") -> tuple[list[str], list[str]]:
    keys = [f"{c}/{i:03d}.png" for c in classes for i in range(n_per_class)]
    return keys, [key.split("/")[0] for key in keys]


def test_split_is_deterministic_for_a_seed_and_depends_on_it():
    keys, labels = balanced(20)
    first = stratified_split(keys, labels, FRACTIONS, seed=1)
    assert first.tolist() == stratified_split(keys, labels, FRACTIONS, seed=1).tolist()
    assert first.tolist() != stratified_split(keys, labels, FRACTIONS, seed=2).tolist()


def test_split_does_not_depend_on_input_order():
    keys, labels = balanced(20)
    by_key = dict(zip(keys, stratified_split(keys, labels, FRACTIONS, seed=5), strict=True))
    order = np.random.default_rng(0).permutation(len(keys))
    shuffled_keys = [keys[i] for i in order]
    shuffled_labels = [labels[i] for i in order]
    shuffled = stratified_split(shuffled_keys, shuffled_labels, FRACTIONS, seed=5)
    assert dict(zip(shuffled_keys, shuffled, strict=True)) == by_key


def test_split_puts_every_class_in_every_split_in_proportion():
    keys, labels = balanced(20)
    # An unbalanced extra class, too.
    keys += [f"d/{i}.png" for i in range(7)]
    labels += ["d"] * 7
    assignment = stratified_split(keys, labels, FRACTIONS, seed=0)
    assert set(assignment) == {"train", "val", "test"}
    counts = Counter(zip(labels, assignment, strict=True))
    for label in "abc":
        assert counts[label, "train"] == 14
        assert counts[label, "val"] == 3
        assert counts[label, "test"] == 3
    for split in ("train", "val", "test"):
        assert counts["d", split] >= 1
    assert sum(counts["d", s] for s in ("train", "val", "test")) == 7


def test_split_without_val_fraction_has_no_val_rows():
    keys, labels = balanced(10)
    assignment = stratified_split(keys, labels, {"train": 0.8, "val": 0.0, "test": 0.2}, 0)
    assert Counter(assignment) == {"train": 24, "test": 6}


def test_split_refuses_a_class_too_small_for_every_split():
    keys, labels = balanced(10, "ab")
    keys += ["tiny/1.png", "tiny/2.png"]
    labels += ["tiny", "tiny"]
    with pytest.raises(ValueError, match="class 'tiny' has 2 images"):
        stratified_split(keys, labels, FRACTIONS, seed=0)


def test_split_refuses_a_class_with_a_single_image():
    keys, labels = balanced(10, "ab")
    with pytest.raises(ValueError, match="class 'single' has 1 images"):
        stratified_split([*keys, "single/1.png"], [*labels, "single"], FRACTIONS, seed=0)


# --- transform and Dataset ----------------------------------------------------------


def test_transform_resizes_scales_and_normalises():
    transform = build_transform(8, mean=[0.5], std=[0.5])
    white = transform(Image.new("L", (12, 10), color=255))
    black = transform(Image.new("L", (12, 10), color=0))
    assert white.shape == (1, 8, 8)
    assert white.dtype == torch.float32
    # (1.0 - 0.5) / 0.5 and (0.0 - 0.5) / 0.5
    assert torch.allclose(white, torch.ones(1, 8, 8))
    assert torch.allclose(black, -torch.ones(1, 8, 8))


def test_transform_normalises_each_channel():
    transform = build_transform(4, mean=[0.0, 0.5, 1.0], std=[1.0, 0.5, 0.25])
    out = transform(Image.new("RGB", (4, 4), color=(255, 255, 255)))
    assert out.shape == (3, 4, 4)
    assert torch.allclose(out[0], torch.full((4, 4), 1.0))
    assert torch.allclose(out[1], torch.full((4, 4), 1.0))
    assert torch.allclose(out[2], torch.full((4, 4), 0.0))


@pytest.fixture
def png_files(tmp_path):
    """A grayscale and an RGB PNG with known pixels, written to disk with PIL."""
    gray = np.arange(16, dtype=np.uint8).reshape(4, 4) * 16  # 0, 16, ..., 240
    gray_path = tmp_path / "gray.png"
    Image.fromarray(gray).save(gray_path)
    rgb_path = tmp_path / "red.png"
    Image.new("RGB", (4, 4), color=(255, 0, 0)).save(rgb_path)
    return {"gray": (str(gray_path), gray), "rgb": str(rgb_path)}


def test_dataset_decodes_grayscale_png(png_files):
    path, pixels = png_files["gray"]
    dataset = ImageManifestDataset([path], [3], channels=1,
                                   transform=build_transform(4, mean=[0.0], std=[1.0]))
    assert len(dataset) == 1
    image, target = dataset[0]
    assert image.shape == (1, 4, 4)
    assert torch.allclose(image[0], torch.from_numpy(pixels).float() / 255)
    assert target.dtype == torch.long
    assert target.item() == 3


def test_dataset_decodes_rgb_png(png_files):
    dataset = ImageManifestDataset([png_files["rgb"]], [0], channels=3,
                                   transform=build_transform(4, mean=[0.0], std=[1.0]))
    image, _ = dataset[0]
    assert image.shape == (3, 4, 4)
    assert torch.allclose(image[:, 0, 0], torch.tensor([1.0, 0.0, 0.0]))


def test_dataset_converts_rgb_file_to_one_channel(png_files):
    dataset = ImageManifestDataset([png_files["rgb"]], [0], channels=1,
                                   transform=build_transform(4, mean=[0.0], std=[1.0]))
    image, _ = dataset[0]
    assert image.shape == (1, 4, 4)
    # PIL's luminance: L = R * 299/1000 + G * 587/1000 + B * 114/1000 -> 76 for pure red.
    assert torch.allclose(image, torch.full((1, 4, 4), 76 / 255))


def test_dataset_converts_grayscale_file_to_three_channels(png_files):
    path, pixels = png_files["gray"]
    dataset = ImageManifestDataset([path], [0], channels=3,
                                   transform=build_transform(4, mean=[0.0], std=[1.0]))
    image, _ = dataset[0]
    assert image.shape == (3, 4, 4)
    for channel in image:
        assert torch.allclose(channel, torch.from_numpy(pixels).float() / 255)


def test_dataset_needs_one_target_per_path():
    with pytest.raises(ValueError, match="2 paths but 1 targets"):
        ImageManifestDataset(["a.png", "b.png"], [0], channels=1,
                             transform=build_transform(4, [0.5], [0.5]))


# --- DataLoaders -----------------------------------------------------------------


def loaders(seed: int):
    datasets = {
        split: TensorDataset(torch.arange(40).float().unsqueeze(1), torch.arange(40))
        for split in ("train", "val", "test")
    }
    settings = LoaderSettings(batch_size=8, eval_batch_size=16, num_workers=0, seed=seed)
    return build_dataloaders(datasets, settings)


def first_batch_targets(loader) -> list[int]:
    return next(iter(loader))[1].tolist()


def test_only_train_shuffles_and_eval_uses_its_batch_size():
    built = loaders(seed=0)
    assert set(built) == {"train", "val", "test"}
    assert isinstance(built["train"].sampler, RandomSampler)
    assert built["train"].batch_size == 8
    for split in ("val", "test"):
        assert isinstance(built[split].sampler, SequentialSampler)
        assert built[split].batch_size == 16
        assert first_batch_targets(built[split]) == list(range(16))
    train_targets = torch.cat([targets for _, targets in built["train"]])
    assert sorted(train_targets.tolist()) == list(range(40))
    assert train_targets.tolist() != list(range(40))


def test_same_seed_gives_same_first_batch_order():
    assert first_batch_targets(loaders(3)["train"]) == first_batch_targets(loaders(3)["train"])
    assert first_batch_targets(loaders(3)["train"]) != first_batch_targets(loaders(4)["train"])


def test_each_epoch_shuffles_differently():
    train = loaders(0)["train"]
    assert first_batch_targets(train) != first_batch_targets(train)
