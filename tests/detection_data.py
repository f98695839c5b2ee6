"""Detection data written by the tests: a COCO folder, a PASCAL VOC folder, and a COCO
folder with the broken boxes users meet.

Bright squares and circles on a dark background, plain or noisy, each object in a
quarter of the image of its own: no object hides another, so every box bounds exactly
the pixels drawn for it, and a test can find them again by their brightness.
"""

from __future__ import annotations

import json
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
from PIL import Image, ImageDraw

CATEGORY_IDS = {"square": 1, "circle": 2}
UNKNOWN_CATEGORY = 9


def _draw(index: int, size: int, rng: np.random.Generator
          ) -> tuple[np.ndarray, list[tuple[str, list[int]]]]:
    """An RGB image and its 1-3 objects as (class, [x_min, y_min, x_max, y_max]),
    x_max and y_max exclusive. The first object's class alternates with ``index``, so
    that two images hold both classes."""
    pixels = np.empty((size, size, 3))
    pixels[...] = rng.uniform(0, 80, size=3)
    cell = size // 2
    objects = []
    for number, quarter in enumerate(rng.permutation(4)[: rng.integers(1, 4)]):
        name = list(CATEGORY_IDS)[(index if number == 0 else rng.integers(2)) % 2]
        side = int(rng.integers(cell // 2, cell - 2))
        left = quarter % 2 * cell + int(rng.integers(1, cell - side))
        top = quarter // 2 * cell + int(rng.integers(1, cell - side))
        canvas = Image.new("L", (size, size), 0)
        draw = ImageDraw.Draw(canvas)
        shape = draw.rectangle if name == "square" else draw.ellipse
        shape([left, top, left + side - 1, top + side - 1], fill=1)
        region = np.asarray(canvas, dtype=bool)
        pixels[region] = rng.uniform(170, 255, size=3)
        ys, xs = np.nonzero(region)
        objects.append((name, [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]))
    if rng.random() < 0.5:
        pixels += rng.normal(0, 6, size=pixels.shape)
    return np.clip(pixels, 0, 255).astype(np.uint8), objects


def _add_to_coco(coco: dict, file_name: str, size: int,
                 objects: list[tuple[int, list[int]]]) -> None:
    """Adds an image and its objects' (category id, corners) as COCO [x, y, w, h]."""
    image_id = len(coco["images"]) + 1
    coco["images"].append({"id": image_id, "file_name": file_name, "width": size, "height": size})
    for category_id, (x_min, y_min, x_max, y_max) in objects:
        coco["annotations"].append({
            "id": len(coco["annotations"]) + 1, "image_id": image_id,
            "category_id": category_id, "bbox": [x_min, y_min, x_max - x_min, y_max - y_min],
            "area": (x_max - x_min) * (y_max - y_min), "iscrowd": 0,
        })


def write_coco_root(root: Path, count: int = 16, size: int = 48, seed: int = 0) -> Path:
    """``root/images/iNNN.png`` (RGB) and ``root/annotations.json`` (COCO, bare file
    names; categories 1 square, 2 circle), the layout of the ``coco`` source. Every
    image has 1-3 objects, and every class is in the set once ``count >= 2``."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    coco: dict = {"images": [], "annotations": [],
                  "categories": [{"id": i, "name": name} for name, i in CATEGORY_IDS.items()]}
    for index in range(count):
        pixels, objects = _draw(index, size, rng)
        file_name = f"i{index:03d}.png"
        Image.fromarray(pixels).save(root / "images" / file_name)
        _add_to_coco(coco, file_name, size,
                     [(CATEGORY_IDS[name], box) for name, box in objects])
    (root / "annotations.json").write_text(json.dumps(coco, indent=1))
    return root


def write_voc_root(root: Path, count: int = 16, size: int = 48, seed: int = 0) -> Path:
    """A PASCAL VOC year folder (what ``VOCdevkit/VOC2012`` holds): ``JPEGImages/``,
    ``Annotations/`` (VOC XML, corners in VOC's 1-based pixels, last pixel included)
    and ``ImageSets/Main/`` train (about 2/3) and val id lists. Returns ``root``."""
    rng = np.random.default_rng(seed)
    for folder in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    ids = [f"2007_{index:06d}" for index in range(count)]
    for index, image_id in enumerate(ids):
        pixels, objects = _draw(index, size, rng)
        Image.fromarray(pixels).save(root / "JPEGImages" / f"{image_id}.jpg", quality=95)
        annotation = ElementTree.Element("annotation")
        ElementTree.SubElement(annotation, "filename").text = f"{image_id}.jpg"
        dimensions = ElementTree.SubElement(annotation, "size")
        for key, value in (("width", size), ("height", size), ("depth", 3)):
            ElementTree.SubElement(dimensions, key).text = str(value)
        for name, (x_min, y_min, x_max, y_max) in objects:
            element = ElementTree.SubElement(annotation, "object")
            ElementTree.SubElement(element, "name").text = name
            ElementTree.SubElement(element, "difficult").text = "0"
            box = ElementTree.SubElement(element, "bndbox")
            for key, value in zip(("xmin", "ymin", "xmax", "ymax"),
                                  (x_min + 1, y_min + 1, x_max, y_max), strict=True):
                ElementTree.SubElement(box, key).text = str(value)
        ElementTree.indent(annotation)
        ElementTree.ElementTree(annotation).write(root / "Annotations" / f"{image_id}.xml")
    train_count = round(count * 2 / 3)
    for name, split_ids in (("train", ids[:train_count]), ("val", ids[train_count:])):
        (root / "ImageSets" / "Main" / f"{name}.txt").write_text(
            "".join(f"{image_id}\n" for image_id in split_ids))
    return root


def write_bad_boxes(root: Path) -> dict[str, str]:
    """A COCO folder of 8 good images from :func:`write_coco_root` and two broken ones:
    one whose first box reaches past the image's right edge, one whose first object
    has a category id the file does not list. Returns {"outside": file name,
    "unknown": file name}."""
    write_coco_root(root, count=8)
    coco = json.loads((root / "annotations.json").read_text())
    size = coco["images"][0]["width"]
    rng = np.random.default_rng(9)
    broken = {"outside": "outside.png", "unknown": "unknown.png"}
    for problem, file_name in broken.items():
        pixels, objects = _draw(0, size, rng)
        Image.fromarray(pixels).save(root / "images" / file_name)
        labelled = [(CATEGORY_IDS[name], box) for name, box in objects]
        category_id, (x_min, y_min, _, y_max) = labelled[0]
        labelled[0] = ((category_id, [x_min, y_min, size + 5, y_max]) if problem == "outside"
                       else (UNKNOWN_CATEGORY, labelled[0][1]))
        _add_to_coco(coco, file_name, size, labelled)
    (root / "annotations.json").write_text(json.dumps(coco, indent=1))
    return broken
