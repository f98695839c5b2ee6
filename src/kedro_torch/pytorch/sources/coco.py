"""A folder of images with a COCO annotation file (the catalog's ``raw_images``, read as
a listing; the file is ``data.detection.annotations``, relative to the folder).

A COCO image is the listed file at its ``file_name``, or else the one listed file whose
path ends with it: COCO files often name bare files that sit in a subfolder. An image
the folder does not hold stays in the manifest, for the file check to report missing;
listed images the file does not name, and crowd annotations (``iscrowd``: one box
round many objects, which no detector is trained on), are only counted in the log.
"""

from __future__ import annotations

import json
import logging
import numbers
import posixpath
from collections import Counter
from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import Any

import pandas as pd

from kedro_torch.pytorch import data, images
from kedro_torch.pytorch.config import DataConfig, ParameterError
from kedro_torch.pytorch.inference import image_files
from kedro_torch.pytorch.sources.base import Source

logger = logging.getLogger(__name__)

# What each entry of a COCO file's lists needs, for a box.
FIELDS = {"images": ("id", "file_name"), "annotations": ("image_id", "category_id", "bbox"),
          "categories": ("id", "name")}
PROBLEMS_SHOWN = 10


class CocoSource(Source):
    entry = "raw_images"

    def ingest(self, loaded: pd.DataFrame, config: DataConfig) -> pd.DataFrame:
        return manifest_from_coco(loaded, read_coco(loaded, config.detection.annotations))

    def judge(self, loaded: pd.DataFrame, config: DataConfig, name: str | None) -> None:
        """Before the run: the file is there and COCO, the classes are given and each is
        a category of the file (a class none names would train on no box), and each image
        is found once."""
        annotations = config.detection.annotations
        coco = read_coco(loaded, annotations)
        if not config.detection.classes:
            names = [str(c["name"]) for c in sorted(coco["categories"], key=lambda c: c["id"])]
            raise ParameterError(
                "data.detection.classes is required: the model's classes, in the order it "
                f"numbers them. The categories of {annotations!r}, in id order: "
                f"{json.dumps(names)}")
        category_ids(coco, config.detection.classes)
        manifest_from_coco(loaded, coco)

    def describe(self, config: DataConfig) -> dict[str, Any]:
        return {"type": "coco", "annotations": config.detection.annotations}


def read_coco(listing: pd.DataFrame, annotations: str) -> dict[str, Any]:
    """The COCO file ``annotations`` (relative to the listed folder), refused with a
    :class:`~kedro_torch.pytorch.data.DataError` unless each entry has what a box needs."""
    folder = listing.attrs.get("folder", "")
    files = listing[~listing["is_dir"].astype(bool)]
    found = files["path"][files["relative_path"] == posixpath.normpath(annotations)]
    if found.empty:
        raise data.DataError(
            f"the COCO annotation file {annotations!r} is not in the image folder {folder!r}: "
            "data.detection.annotations names it, relative to that folder")
    try:
        coco = json.loads(images.read_bytes(found.iloc[0]))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise data.DataError(
            f"the COCO annotation file {annotations!r} in {folder!r} is not JSON: {error}"
        ) from error
    lacking = [key for key in FIELDS if not isinstance(coco, dict)
               or not isinstance(coco.get(key), list)]
    if lacking:
        raise data.DataError(
            f"the COCO annotation file {annotations!r} has no {' or '.join(map(repr, lacking))} "
            "list: a COCO file holds the lists 'images', 'annotations' and 'categories'")
    problems = _problems(coco)
    if problems:
        shown = problems[:PROBLEMS_SHOWN]
        more = len(problems) - len(shown)
        raise data.DataError("\n".join([
            f"the COCO annotation file {annotations!r} cannot be used:",
            *(f"- {problem}" for problem in shown), *([f"- and {more} more"] if more else [])]))
    return coco


def _problems(coco: dict[str, Any]) -> list[str]:
    """Entries of a COCO file without what a box needs, and images named twice."""
    problems = []
    for key, fields in FIELDS.items():
        for index, item in enumerate(coco[key]):
            lacking = fields if not isinstance(item, dict) else [f for f in fields
                                                                if f not in item]
            if lacking:
                problems.append(f"{key}[{index}] has no {', '.join(map(repr, lacking))}")
    if problems:
        return problems
    ids = Counter(image["id"] for image in coco["images"])
    problems += [f"image id {key!r} is given to {n} images" for key, n in ids.items() if n > 1]
    for index, note in enumerate(coco["annotations"]):
        box = note["bbox"]
        if not (isinstance(box, list) and len(box) == 4 and all(
                isinstance(v, numbers.Real) and not isinstance(v, bool) for v in box)):
            problems.append(f"annotations[{index}] has bbox {box!r}, not [x, y, width, height]")
        if note["image_id"] not in ids:
            problems.append(f"annotations[{index}] names image id {note['image_id']!r}, "
                            "which no image has")
    return problems


def manifest_from_coco(listing: pd.DataFrame, coco: dict[str, Any]) -> pd.DataFrame:
    """The detection manifest of a listed folder and its COCO file (as :func:`read_coco`
    gives it), with each image's COCO id in ``image_id``; a box's label is its category's
    name, or the category id as written where no category has it, for the task to
    report as an unknown label."""
    files = image_files(listing)
    listed = dict(zip(files["relative_path"], files["path"], strict=True))
    by_ending: dict[str, list[str]] = {}
    for relative in listed:
        parts = PurePosixPath(relative).parts
        for start in range(1, len(parts)):
            by_ending.setdefault("/".join(parts[start:]), []).append(relative)
    names = {c["id"]: str(c["name"]) for c in coco["categories"]}
    boxes: dict[Any, list[list]] = {image["id"]: [] for image in coco["images"]}
    crowds = 0
    for note in coco["annotations"]:
        if note.get("iscrowd"):
            crowds += 1
            continue
        x, y, width, height = map(float, note["bbox"])
        label = names.get(note["category_id"], str(note["category_id"]))
        boxes[note["image_id"]].append([label, x, y, x + width, y + height])
    rows, ambiguous = [], []
    for image in coco["images"]:
        written = posixpath.normpath(str(image["file_name"]))
        ending = by_ending.get(written, [])
        if written not in listed and len(ending) > 1:
            ambiguous.append(f"{written!r} ends both {ending[0]!r} and {ending[1]!r}")
            continue
        relative = written if written in listed or not ending else ending[0]
        rows.append({"path": listed.get(relative), "relative_path": relative,
                     "boxes": boxes[image["id"]], "image_id": image["id"]})
    if ambiguous:
        more = len(ambiguous) - PROBLEMS_SHOWN
        raise data.DataError(
            "COCO file names that end more than one listed image, so that which one is meant "
            f"is unknown (write the path relative to the folder): "
            f"{'; '.join(ambiguous[:PROBLEMS_SHOWN])}" + (f" and {more} more" if more > 0 else ""))
    found = {row["relative_path"] for row in rows if row["path"] is not None}
    logger.info("COCO: %d images, %d not in the folder; %d listed images it does not name "
                "(ignored); %d crowd annotations skipped", len(rows), len(rows) - len(found),
                len(listed) - len(found), crowds)
    return data.detection_manifest(pd.DataFrame(rows, columns=[
        "path", "relative_path", "boxes", "image_id"]), listing.attrs.get("folder", ""))


def category_ids(coco: dict[str, Any], classes: Sequence[str]) -> list[int]:
    """The COCO category id of each class (by name; the lowest id where two categories
    share a name), for results in COCO's terms; a class no category names is refused."""
    ids: dict[str, int] = {}
    for category in sorted(coco["categories"], key=lambda c: c["id"]):
        ids.setdefault(str(category["name"]), category["id"])
    unknown = [name for name in classes if name not in ids]
    if unknown:
        raise data.DataError(
            f"data.detection.classes names {', '.join(map(repr, unknown))}, which no category "
            f"of the COCO file has; its categories are {json.dumps(list(ids))}")
    return [ids[name] for name in classes]
