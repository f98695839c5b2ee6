"""A PASCAL VOC year folder, such as ``VOCdevkit/VOC2012`` (the catalog's ``raw_images``,
read as a listing): each ``Annotations/<name>.xml`` gives one image,
``JPEGImages/<filename>``, and the boxes of its objects.

VOC's pixels are numbered from 1 and its boxes include their last pixel, so a box
``xmin ymin xmax ymax`` has the corners ``xmin - 1, ymin - 1, xmax, ymax``. Objects
marked ``<difficult>1`` are kept as boxes like any other: VOC's own evaluation ignores
them, this project's counts them. ``ImageSets/`` is not read: the project makes its
splits itself, by content hash. An XML file may not declare a DTD: its entities could
expand without bound (the "billion laughs"), so the parser never sees one.
"""

from __future__ import annotations

import json
import logging
import posixpath
from concurrent.futures import ThreadPoolExecutor
from pathlib import PurePosixPath
from typing import NamedTuple
from xml.etree import ElementTree
from xml.parsers import expat

import pandas as pd

from kedro_torch.pytorch import data, images
from kedro_torch.pytorch.config import DataConfig, ParameterError
from kedro_torch.pytorch.inference import image_files
from kedro_torch.pytorch.sources.base import Source

logger = logging.getLogger(__name__)

ANNOTATIONS, IMAGES = "Annotations", "JPEGImages"
CORNERS = ("xmin", "ymin", "xmax", "ymax")
PROBLEMS_SHOWN = 10


class VocSource(Source):
    entry = "raw_images"

    def ingest(self, loaded: pd.DataFrame, config: DataConfig) -> pd.DataFrame:
        return manifest_from_voc(loaded)

    def judge(self, loaded: pd.DataFrame, config: DataConfig, name: str | None) -> None:
        """Every annotation file is read before the run; a run without its classes is
        told the object names the files hold."""
        manifest = manifest_from_voc(loaded)
        if not config.detection.classes:
            names = sorted({box[0] for boxes in manifest["boxes"] for box in json.loads(boxes)})
            raise ParameterError(
                "data.detection.classes is required: the model's classes, in the order it "
                f"numbers them. The object names of the VOC annotations: {json.dumps(names)}")


class _Annotation(NamedTuple):
    filename: str
    boxes: list[list]


def manifest_from_voc(listing: pd.DataFrame) -> pd.DataFrame:
    """The detection manifest of a listed VOC folder; every annotation file that cannot be
    read is named in one :class:`~kedro_torch.pytorch.data.DataError`."""
    folder = listing.attrs.get("folder", "")
    files = listing[~listing["is_dir"].astype(bool)]
    relative = files["relative_path"].map(PurePosixPath)
    is_xml = relative.map(lambda p: len(p.parts) == 2 and p.parts[0] == ANNOTATIONS
                          and p.suffix.lower() == ".xml" and not p.name.startswith("."))
    xml_files = files[is_xml.astype(bool)]
    if xml_files.empty:
        raise data.DataError(
            f"{folder!r} has no annotation files in {ANNOTATIONS}/: a PASCAL VOC folder holds "
            f"{ANNOTATIONS}/<name>.xml for each image in {IMAGES}/")
    with ThreadPoolExecutor(data.HEADER_THREADS) as pool:
        contents = list(pool.map(images.read_bytes, xml_files["path"]))
    annotations, broken = [], []
    for name, content in zip(xml_files["relative_path"], contents, strict=True):
        try:
            annotations.append(_parse(content))
        except ValueError as error:
            broken.append(f"{name}: {error}")
    if broken:
        more = len(broken) - PROBLEMS_SHOWN
        raise data.DataError("\n".join([
            f"{len(broken)} of the {len(contents)} VOC annotation files in {folder!r} cannot "
            "be read:", *(f"- {problem}" for problem in broken[:PROBLEMS_SHOWN]),
            *([f"- and {more} more"] if more > 0 else [])]))
    listed = image_files(listing)
    listed = dict(zip(listed["relative_path"], listed["path"], strict=True))
    rows = pd.DataFrame({
        "relative_path": [posixpath.normpath(f"{IMAGES}/{a.filename}") for a in annotations],
        "boxes": [a.boxes for a in annotations]})
    rows.insert(0, "path", [listed.get(p) for p in rows["relative_path"]])
    in_images = sum(PurePosixPath(p).parts[0] == IMAGES for p in listed)
    found = int(rows["path"].notna().sum())
    logger.info("VOC: %d annotated images, %d not in %s/; %d images in %s/ without an "
                "annotation (ignored)", len(rows), len(rows) - found, IMAGES,
                in_images - found, IMAGES)
    return data.detection_manifest(rows, folder)


def _parse(content: bytes) -> _Annotation:
    """An annotation file's image file name and boxes, or a ValueError saying what is
    wrong with it."""
    _refuse_declarations(content)
    root = ElementTree.fromstring(content)
    filename = (root.findtext("filename") or "").strip()
    if not filename:
        raise ValueError("no <filename>")
    boxes = []
    for number, item in enumerate(root.findall("object"), 1):
        name = (item.findtext("name") or "").strip()
        box = item.find("bndbox")
        written = [None if box is None else box.findtext(corner) for corner in CORNERS]
        if not name or None in written:
            raise ValueError(f"object {number} has no <name> or no <bndbox> with "
                             f"{', '.join(f'<{corner}>' for corner in CORNERS)}")
        try:
            x_min, y_min, x_max, y_max = map(float, written)
        except ValueError:
            raise ValueError(f"object {number}: its <bndbox> holds {written}, not four "
                             "numbers") from None
        boxes.append([name, x_min - 1, y_min - 1, x_max, y_max])
    return _Annotation(filename, boxes)


def _refuse_declarations(content: bytes) -> None:
    """Stop at a DTD, before its first declaration is read, whatever the file's encoding
    (a malformed file is told as such)."""
    parser = expat.ParserCreate()

    def refuse(*_: object) -> None:
        raise ValueError("it declares a DTD (<!DOCTYPE>), which is refused: its entities "
                       "could expand without bound")

    parser.StartDoctypeDeclHandler = refuse
    try:
        parser.Parse(content, True)
    except expat.ExpatError as error:
        raise ValueError(f"malformed XML: {error}") from None
