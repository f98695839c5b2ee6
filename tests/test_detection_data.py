"""The committed shapes detection set and the test helpers' detection folders: boxes
inside their images and on the pixels drawn for them."""

from __future__ import annotations

import json
import runpy
from collections import Counter
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
from PIL import Image

from tests.detection_data import (
    CATEGORY_IDS,
    UNKNOWN_CATEGORY,
    write_bad_boxes,
    write_coco_root,
    write_voc_root,
)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
RAW = PROJECT_ROOT / "data" / "01_raw"
SHAPES = RAW / "shapes_detection"


def _files(folder: Path) -> dict[str, bytes]:
    return {path.relative_to(folder).as_posix(): path.read_bytes()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def test_the_detection_writer_writes_the_same_bytes_as_the_committed_set(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(RAW))  # the writer imports the segmentation writer beside it
    script = runpy.run_path(str(RAW / "write_shapes_detection.py"))
    script["main"](tmp_path / "first", count=4)
    script["main"](tmp_path / "second", count=4)
    written = _files(tmp_path / "first")
    assert written == _files(tmp_path / "second")
    # Its first images are the committed set's first images, boxes included.
    committed = json.loads((SHAPES / "annotations.json").read_text())
    coco = json.loads(written.pop("annotations.json"))
    assert coco["categories"] == committed["categories"]
    assert coco["images"] == committed["images"][:4]
    assert coco["annotations"] == [a for a in committed["annotations"] if a["image_id"] <= 4]
    assert written == {name: (SHAPES / name).read_bytes() for name in written}


def test_the_committed_detection_set_has_every_class_and_size_in_its_images():
    coco = json.loads((SHAPES / "annotations.json").read_text())
    assert {path.name for path in SHAPES.iterdir()} == {"images", "annotations.json"}
    assert coco["categories"] == [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"},
                                  {"id": 3, "name": "triangle"}]
    images = {image["id"]: image for image in coco["images"]}
    assert len(images) == 320
    assert sorted(path.name for path in (SHAPES / "images").iterdir()) == sorted(
        image["file_name"] for image in images.values())
    for image in images.values():
        with Image.open(SHAPES / "images" / image["file_name"]) as opened:
            assert (opened.mode, opened.size) == ("RGB", (image["width"], image["height"]))
    sizes = Counter()
    for annotation in coco["annotations"]:
        image = images[annotation["image_id"]]
        x, y, width, height = annotation["bbox"]
        assert x >= 0 and y >= 0 and width > 0 and height > 0
        assert x + width <= image["width"] and y + height <= image["height"]
        assert 0 < annotation["area"] <= width * height
        sizes[np.searchsorted([32**2, 96**2], width * height, side="right")] += 1
    assert set(sizes) == {0, 1, 2}  # COCO's small, medium and large
    assert {a["category_id"] for a in coco["annotations"]} == {1, 2, 3}
    per_image = Counter(a["image_id"] for a in coco["annotations"])
    assert set(per_image) == set(images)
    assert set(per_image.values()) == {2, 3, 4, 5}


def _assert_tight_boxes(path: Path, boxes: list[list[int]]) -> None:
    """Each box (corners, maximum exclusive) bounds drawn pixels exactly, and nothing is
    drawn outside the boxes."""
    with Image.open(path) as image:
        drawn = np.asarray(image.convert("RGB")).mean(axis=2) > 125
    outside = drawn.copy()
    for x_min, y_min, x_max, y_max in boxes:
        inside = drawn[y_min:y_max, x_min:x_max]
        assert inside.mean() > 0.7, (path.name, x_min, y_min, x_max, y_max)
        assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
        outside[y_min:y_max, x_min:x_max] = False
    assert not outside.any(), path.name


def test_the_coco_helper_boxes_the_drawn_objects(tmp_path):
    root = write_coco_root(tmp_path / "coco", count=6)
    coco = json.loads((root / "annotations.json").read_text())
    assert {c["name"]: c["id"] for c in coco["categories"]} == CATEGORY_IDS
    assert {a["category_id"] for a in coco["annotations"]} == set(CATEGORY_IDS.values())
    for image in coco["images"]:
        assert "/" not in image["file_name"]
        boxes = [[x, y, x + w, y + h] for a in coco["annotations"] if a["image_id"] == image["id"]
                 for x, y, w, h in [a["bbox"]]]
        assert 1 <= len(boxes) <= 3
        _assert_tight_boxes(root / "images" / image["file_name"], boxes)


def test_the_voc_helper_writes_voc_xml_with_one_based_inclusive_boxes(tmp_path):
    root = write_voc_root(tmp_path / "voc", count=6)
    main = root / "ImageSets" / "Main"
    train, val = ((main / f"{name}.txt").read_text().split() for name in ("train", "val"))
    assert sorted(train + val) == sorted(path.stem for path in (root / "Annotations").iterdir())
    assert len(train) == 4 and not set(train) & set(val)
    names = set()
    for xml in sorted((root / "Annotations").iterdir()):
        annotation = ElementTree.parse(xml).getroot()
        path = root / "JPEGImages" / annotation.findtext("filename")
        with Image.open(path) as image:
            assert image.format == "JPEG"
            assert image.size == (int(annotation.findtext("size/width")),
                                  int(annotation.findtext("size/height")))
        boxes = []
        for element in annotation.iter("object"):
            names.add(element.findtext("name"))
            assert element.findtext("difficult") == "0"
            x_min, y_min, x_max, y_max = (int(element.findtext(f"bndbox/{key}"))
                                          for key in ("xmin", "ymin", "xmax", "ymax"))
            assert x_min >= 1 and y_min >= 1 and x_max <= image.size[0] and y_max <= image.size[1]
            boxes.append([x_min - 1, y_min - 1, x_max, y_max])
        _assert_tight_boxes(path, boxes)
    assert names == set(CATEGORY_IDS)


def test_the_bad_boxes_helper_breaks_one_box_each_way(tmp_path):
    broken = write_bad_boxes(tmp_path / "bad")
    coco = json.loads((tmp_path / "bad" / "annotations.json").read_text())
    images = {image["id"]: image for image in coco["images"]}
    assert len(images) == 10
    assert all((tmp_path / "bad" / "images" / i["file_name"]).is_file() for i in images.values())
    known = {category["id"] for category in coco["categories"]}
    past_edge, unknown = set(), set()
    for annotation in coco["annotations"]:
        image = images[annotation["image_id"]]
        x, y, width, height = annotation["bbox"]
        if x + width > image["width"]:
            past_edge.add(image["file_name"])
        assert y + height <= image["height"]
        if annotation["category_id"] not in known:
            assert annotation["category_id"] == UNKNOWN_CATEGORY
            unknown.add(image["file_name"])
    assert (past_edge, unknown) == ({broken["outside"]}, {broken["unknown"]})
