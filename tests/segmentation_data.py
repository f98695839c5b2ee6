"""Segmentation data written by the tests: image folders with their masks, a PASCAL VOC
2012 root as torchvision reads it, and the broken pairs users meet.

Each class has its own colour (under a little noise), so a few epochs on these tiny
images learn something; the bundled shapes set is the one that makes a model learn
outlines.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from kedro_torch.pytorch.segmentation import palette

# PASCAL VOC marks the pixels along each object's outline 255: "void", counted nowhere.
VOC_VOID = 255


def voc_palette() -> list[int]:
    """PASCAL VOC's colour map, flat (r, g, b, r, g, ...) for ``Image.putpalette``;
    index 255 is VOC's light "void" colour."""
    return [value for rgb in palette(256) for value in rgb]


def _class_colours(classes: int) -> np.ndarray:
    """One far-apart colour per class, background (0) included."""
    hues = np.arange(classes) / classes
    return np.stack([127 + 100 * np.cos(2 * np.pi * (hues + shift))
                     for shift in (0, 1 / 3, 2 / 3)], axis=1)


def _objects(index: int, size: int, classes: int, rng: np.random.Generator
             ) -> list[tuple[int, str, list[float]]]:
    """(class, "rectangle" or "ellipse", box) for one image's 1-2 objects. The first
    object's class cycles with ``index``, so that a set of at least ``classes - 1``
    images holds every class."""
    labels = [1 + index % (classes - 1)]
    if rng.random() < 0.5:
        labels.append(int(rng.integers(1, classes)))
    objects = []
    for label in labels:
        side = rng.uniform(size / 4, size / 2)
        left, top = rng.uniform(2, size - 2 - side, size=2)
        kind = "rectangle" if rng.random() < 0.5 else "ellipse"
        objects.append((label, kind, [left, top, left + side, top + side]))
    return objects


def _draw_pair(index: int, size: int, classes: int, rng: np.random.Generator,
               void_width: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An RGB image and its mask of class indices; ``void_width`` > 0 draws a
    ``VOC_VOID`` outline of that width round each object, as VOC does."""
    colours = _class_colours(classes)
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    for label, kind, box in _objects(index, size, classes, rng):
        shape = draw.rectangle if kind == "rectangle" else draw.ellipse
        if void_width:
            grown = [box[0] - void_width, box[1] - void_width,
                     box[2] + void_width, box[3] + void_width]
            shape(grown, fill=VOC_VOID)
        shape(box, fill=label)
    indices = np.asarray(mask)
    # Void pixels take the colour of the object they surround's edge: the background's.
    pixels = colours[np.where(indices == VOC_VOID, 0, indices)]
    pixels = pixels + rng.normal(0, 8, size=pixels.shape)
    return np.clip(pixels, 0, 255).astype(np.uint8), indices.copy()


def write_folder_pair(root: Path, count: int = 12, size: int = 32, classes: int = 3,
                      seed: int = 0) -> Path:
    """``root/images/iNNN.png`` (RGB) and ``root/masks/iNNN.png`` ("L", class indices:
    0 background, 1..classes-1 filled rectangles and circles), the layout of the
    ``mask_folder`` source. Every image has at least one object and background, and
    every class is in the set once ``count >= classes - 1``."""
    if classes < 2:
        raise ValueError(f"classes must be at least 2 (background and one object), got {classes}")
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for index in range(count):
        image, mask = _draw_pair(index, size, classes, rng)
        Image.fromarray(image).save(root / "images" / f"i{index:03d}.png")
        Image.fromarray(mask).save(root / "masks" / f"i{index:03d}.png")
    return root


def write_voc_root(root: Path, count: int = 12, size: int = 32, classes: int = 3,
                   seed: int = 0) -> Path:
    """A PASCAL VOC 2012 segmentation root that ``torchvision.datasets.VOCSegmentation(
    root, year="2012", image_set=...)`` opens without a download: JPEG images,
    palette ("P") PNG masks of class indices with VOC's colours and a 1-2 pixel
    ``VOC_VOID`` outline round each object, and the train (about 2/3), val and
    trainval id lists. Returns ``root``."""
    rng = np.random.default_rng(seed)
    voc = root / "VOCdevkit" / "VOC2012"
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / folder).mkdir(parents=True, exist_ok=True)
    ids = [f"2012_{index:06d}" for index in range(count)]
    for index, image_id in enumerate(ids):
        image, mask = _draw_pair(index, size, classes, rng,
                                 void_width=int(rng.integers(1, 3)))
        Image.fromarray(image).save(voc / "JPEGImages" / f"{image_id}.jpg", quality=95)
        indexed = Image.fromarray(mask).convert("P")  # indices kept
        indexed.putpalette(voc_palette())
        indexed.save(voc / "SegmentationClass" / f"{image_id}.png")
    train_count = round(count * 2 / 3)
    splits = {"train": ids[:train_count], "val": ids[train_count:], "trainval": ids}
    for name, split_ids in splits.items():
        (voc / "ImageSets" / "Segmentation" / f"{name}.txt").write_text(
            "".join(f"{image_id}\n" for image_id in split_ids))
    return root


def write_bad_pairs(root: Path) -> dict[str, str]:
    """Adds to a folder pair from :func:`write_folder_pair` the three broken pairs a
    mask folder turns up: a mask of another size than its image, a mask with a class
    value no class has (77), and an image without a mask. Returns {stem: what is
    wrong}."""
    with Image.open(next(iter(sorted((root / "images").glob("*.png"))))) as sample:
        width, height = sample.size
    rng = np.random.default_rng(77)
    broken = {"bad_size": "wrong_size", "bad_class": "unknown_class", "bad_orphan": "no_mask"}
    for stem in broken:
        pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "images" / f"{stem}.png")
    small = np.zeros((height // 2, width // 2), np.uint8)
    small[: height // 4, : width // 4] = 1
    Image.fromarray(small).save(root / "masks" / "bad_size.png")
    unknown = np.zeros((height, width), np.uint8)
    unknown[height // 4: height // 2, width // 4: width // 2] = 77
    Image.fromarray(unknown).save(root / "masks" / "bad_class.png")
    return broken
