"""From raw image files to a checked, labelled, split manifest.

Plain PyTorch, pandas and PIL: usable from a script or a notebook without Kedro. A
*manifest* is a DataFrame with one row per image (``path``, ``relative_path``,
``label``, any extra columns); checking adds what decoding each file found, and
splitting adds ``target`` and ``split``. How the images are then fed to a model is
:mod:`kedro_torch.pytorch.loaders`.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import posixpath
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import fsspec
import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset

from kedro_torch.pytorch import images
from kedro_torch.pytorch.cache import ENTRY_COLUMNS, ImageStore
from kedro_torch.pytorch.config import DataConfig, ParameterError, SplitConfig
from kedro_torch.pytorch.interrupts import leave_ctrl_c_to_the_main_process

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
)
SPLITS = ("train", "val", "test")
# A source's own split of its samples ("train" or "test"), where it has one (a
# torchvision dataset's train=False or split="test"): its test part is the test split.
OWN_SPLIT = "own_split"
# Columns the pipeline adds to a manifest; a manifest table may not bring its own.
RESERVED_COLUMNS = frozenset(
    {"path", "relative_path", "label", "target", "split", "missing", OWN_SPLIT, *ENTRY_COLUMNS}
)
HASH_RULE = "content hash: every class split by data.split.train / val / test"
CHECK_BATCH = 64  # files per message between checking workers and the main process
# The judgement before the run: the bytes of a file read over the network to find its
# header (a file whose header lies further is read whole), the files read at once, and
# the problems a refusal lists before "and N more" (the data-quality report has them all).
HEAD_BYTES = 64 * 1024
HEADER_THREADS = 16
PROBLEMS_SHOWN = 20


class DataError(ValueError):
    """Data the run cannot use: a message for the person who runs it, which names every
    problem found, and what the data-quality report of the refused run holds
    (``report``, None where there is nothing to add to the message)."""

    def __init__(self, message: str, report: dict | None = None):
        super().__init__(message)
        self.report = report


class ImageTable(NamedTuple):
    """A table listing images, and the folder its relative paths start from."""

    frame: pd.DataFrame
    folder: str


# --- sources -----------------------------------------------------------------------


def list_folder(path: str, fs: fsspec.AbstractFileSystem | None = None) -> pd.DataFrame:
    """Every file and subfolder under ``path`` (any fsspec URL), without reading them.

    Columns: ``path`` (openable by fsspec), ``relative_path`` (POSIX, relative to the
    folder) and ``is_dir``. Folders are listed so that an empty class folder can be
    noticed; which files are images, and their labels, is :func:`manifest_from_listing`'s
    business.
    """
    if fs is None:
        fs, path = fsspec.core.url_to_fs(path)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    local = protocol in ("file", "local")
    # The local filesystem lists absolute paths, so a relative root must be one too.
    root = (os.path.abspath(path) if local else fs._strip_protocol(path)).rstrip("/")
    if not fs.isdir(root):
        raise FileNotFoundError(f"image folder {root!r} does not exist or is not a folder")
    found = fs.find(root, withdirs=True, detail=True)
    entries = sorted(
        (name, info["type"] == "directory") for name, info in found.items()
        if name.rstrip("/") != root
    )
    listing = pd.DataFrame({
        "path": pd.Series([name if local else f"{protocol}://{name}" for name, _ in entries],
                          dtype=object),
        "relative_path": pd.Series([posixpath.relpath(name, root) for name, _ in entries],
                                   dtype=object),
        "is_dir": pd.Series([is_dir for _, is_dir in entries], dtype=bool),
    })
    # The folder, for messages about it: an empty listing names nothing else.
    listing.attrs["folder"] = root if local else f"{protocol}://{root}"
    return listing


def manifest_from_listing(listing: pd.DataFrame) -> pd.DataFrame:
    """Keep the image files of a folder listing and label each by its class folder.

    ``listing`` has ``path`` (openable), ``relative_path`` (``<class>/<file>``) and
    ``is_dir`` columns, as :class:`kedro_torch.datasets.ImageFolderDataset` loads it.
    Hidden files and files of other types are skipped and counted in the log; a
    folder without any image, or a class folder left without any image, stops the
    run, naming it.
    """
    found = _images_in(listing)
    if any(found.skipped.values()):
        logger.info("Skipped files: %s",
                    ", ".join(f"{n} {why}" for why, n in found.skipped.items() if n))
    if found.manifest.empty:
        raise DataError(_no_images(listing, found.skipped))
    if found.empty_classes:
        raise DataError(
            f"class folders without any image: {', '.join(map(repr, found.empty_classes))}; "
            f"add images (extensions {_extensions()}) or remove the folders"
        )
    return _sorted_and_counted(found.manifest)


class _FolderImages(NamedTuple):
    manifest: pd.DataFrame  # path, relative_path, label of the images, unsorted
    skipped: dict[str, int]  # files left out, by why
    empty_classes: list[str]  # class folders without any image


def _images_in(listing: pd.DataFrame) -> _FolderImages:
    """The images of a folder listing and what was left out, without a word logged."""
    relative = listing["relative_path"].astype(str).map(posixpath.normpath).map(
        lambda path: path.split("/")).astype(object)
    hidden = relative.map(lambda parts: any(part.startswith(".") for part in parts)).astype(bool)
    is_dir = listing["is_dir"].astype(bool)
    suffix = relative.map(lambda parts: posixpath.splitext(parts[-1])[1].lower())
    is_image = ~is_dir & suffix.isin(IMAGE_EXTENSIONS)
    depth = relative.map(len).astype(int)
    in_class_folder = depth >= 2
    keep = ~hidden & is_image & in_class_folder
    files = ~is_dir & ~hidden
    skipped = {
        "hidden": int((~is_dir & hidden).sum()),
        "not an image": int((files & ~is_image).sum()),
        "outside a class folder": int((files & is_image & ~in_class_folder).sum()),
    }
    labels = relative[keep].map(lambda parts: parts[0])
    class_folders = {parts[0] for parts in relative[is_dir & ~hidden & (depth == 1)]}
    manifest = pd.DataFrame(
        {
            "path": listing["path"][keep].to_numpy(dtype=object),
            "relative_path": listing["relative_path"][keep].to_numpy(dtype=object),
            "label": labels.to_numpy(dtype=object),
        }
    )
    return _FolderImages(manifest, skipped, sorted(class_folders - set(labels)))


def _no_images(listing: pd.DataFrame, skipped: dict[str, int]) -> str:
    folder = listing.attrs.get("folder")
    named = f"the image folder {folder!r}" if folder else "the image folder"
    if listing.empty:
        return (f"{named} is empty: it holds no image files (extensions {_extensions()}); put "
                "them in one subfolder per class")
    found = ", ".join(f"{n} {why}" for why, n in skipped.items() if n) or "only folders"
    return (f"{named} holds no image files (extensions {_extensions()}) in a subfolder per "
            f"class: no images found, only {found}")


def _extensions() -> str:
    return " ".join(sorted(IMAGE_EXTENSIONS))


def manifest_from_table(table: ImageTable, path_column: str, label_column: str,
                        key: str = "data.manifest") -> pd.DataFrame:
    """A manifest from a table of image paths and labels; extra columns are kept.

    Relative paths start from the table's own folder, so a dataset folder holding
    its CSV can be moved or copied anywhere. Rows without a label stop the run.
    """
    frame = table.frame
    extra = _table_columns(frame, path_column, label_column, key)
    unlabelled = _unlabelled(frame[label_column])
    if unlabelled.any():
        rows = frame.index[unlabelled]
        raise DataError(
            f"{int(unlabelled.sum())} manifest rows have no label in column {label_column!r} "
            f"({key}.label_column), e.g. {_listing(frame[path_column][rows].astype(str))}"
        )
    if frame[path_column].isna().any():
        raise DataError(f"manifest rows without a path in column {path_column!r}")
    written = frame[path_column].astype(str)
    manifest = pd.DataFrame(
        {
            "path": written.map(lambda p: _resolve(table.folder, p)).to_numpy(),
            "relative_path": written.to_numpy(),
            "label": frame[label_column].astype(str).to_numpy(),
        }
    )
    for column in extra:
        manifest[column] = frame[column].to_numpy()
    return _sorted_and_counted(manifest)


def pairs_from_table(table: ImageTable, path_column: str, mask_column: str,
                     key: str = "data.manifest") -> pd.DataFrame:
    """A manifest of images with their masks (segmentation) from a table; other columns
    are kept. Paths resolve as :func:`manifest_from_table`'s; a row without a mask is
    kept without one, for the pair check to set aside and report."""
    frame = table.frame
    extra = _table_columns(frame, path_column, mask_column, key, ("path_column", "mask_column"))
    if frame[path_column].isna().any():
        raise DataError(f"manifest rows without a path in column {path_column!r}")
    written, masks = frame[path_column].astype(str), frame[mask_column]
    manifest = pd.DataFrame({
        "path": written.map(lambda p: _resolve(table.folder, p)).to_numpy(),
        "relative_path": written.to_numpy(),
        "mask_path": [None if missing else _resolve(table.folder, str(mask))
                      for mask, missing in zip(masks, _unlabelled(masks), strict=True)],
    })
    for column in extra:
        manifest[column] = frame[column].to_numpy()
    return manifest.sort_values("relative_path", ignore_index=True)


def boxes_from_table(table: ImageTable, path_column: str, label_column: str,
                     box_columns: Sequence[str], key: str = "data.manifest") -> pd.DataFrame:
    """A detection manifest (:func:`detection_manifest`) from a table of one row per box:
    its image, label and corners. A row whose box columns are all empty stands for an
    image without boxes (its label is not read). Paths resolve as
    :func:`manifest_from_table`'s; other columns are kept, and are the image's, so they
    must be the same on each of its rows (a group column, say)."""
    frame = table.frame
    if len(box_columns) != 4:
        raise ParameterError(f"{key}.box_columns names the 4 columns of a box's corners "
                             f"(x_min, y_min, x_max, y_max), got {list(box_columns)}")
    extra = _table_columns(frame, path_column, label_column, key)
    absent = [column for column in box_columns if column not in frame.columns]
    if absent:
        raise DataError(f"{key}.box_columns: the manifest has no column "
                        f"{', '.join(map(repr, absent))}; its columns are "
                        f"{', '.join(map(repr, frame.columns))}")
    extra = [column for column in extra if column not in box_columns]
    if "boxes" in extra:
        raise DataError("the manifest's column 'boxes' clashes with the column the pipeline "
                        "adds; rename it")
    if frame[path_column].isna().any():
        raise DataError(f"manifest rows without a path in column {path_column!r}")
    written = frame[path_column].astype(str)
    empty = pd.DataFrame({column: _unlabelled(frame[column]) for column in box_columns})
    corners = pd.DataFrame({column: pd.to_numeric(frame[column], errors="coerce")
                            for column in box_columns})
    no_box = empty.all(axis=1).to_numpy()
    _refuse_bad_boxes(frame, written, empty, corners, no_box, label_column, key)
    paths = written.map(lambda p: _resolve(table.folder, p))
    boxes: dict[str, list[list]] = {}
    for path, label, corner, skip in zip(paths, frame[label_column], corners.to_numpy(),
                                         no_box, strict=True):
        found = boxes.setdefault(path, [])
        if not skip:
            found.append([str(label), *map(float, corner)])
    for column in extra:
        values = frame[column].groupby(paths.to_numpy(), sort=False).nunique(dropna=False)
        if (values > 1).any():
            image = written[paths == values.index[values > 1][0]].iloc[0]
            raise DataError(f"column {column!r} differs between the rows of image {image!r}: "
                            "a column other than the box and its label holds the image's "
                            "value, the same on each of its rows")
    first = ~paths.duplicated()
    rows = pd.DataFrame({"path": paths[first].to_numpy(),
                         "relative_path": written[first].to_numpy(),
                         "boxes": [boxes[path] for path in paths[first]]})
    for column in extra:
        rows[column] = frame[column][first].to_numpy()
    return detection_manifest(rows, table.folder)


def _refuse_bad_boxes(frame: pd.DataFrame, written: pd.Series, empty: pd.DataFrame,
                      corners: pd.DataFrame, no_box: np.ndarray, label_column: str,
                      key: str) -> None:
    """Rows of a box table whose box is not four numbers and a label, all named at once
    (numbered from 1, the header not counted); where a box lies is the task's check."""
    no_label = _unlabelled(frame[label_column]).to_numpy() & ~no_box
    partial = empty.any(axis=1).to_numpy() & ~no_box
    not_numbers = (corners.isna() & ~empty).to_numpy()
    problems = []
    for position in np.flatnonzero(no_label | partial | not_numbers.any(axis=1)):
        reasons = []
        if no_label[position]:
            reasons.append(f"a box without a label in column {label_column!r} "
                           f"({key}.label_column)")
        if partial[position]:
            blank = empty.columns[empty.iloc[position].to_numpy()]
            reasons.append(f"empty {', '.join(map(repr, blank))} where the other box columns "
                           "are not")
        reasons += [f"{frame[column].iloc[position]!r} in column {column!r} is not a number"
                    for column, bad in zip(corners.columns, not_numbers[position], strict=True)
                    if bad]
        problems.append(f"row {position + 1} {written.iloc[position]!r}: {'; '.join(reasons)}")
    if problems:
        raise DataError(_refusal(
            f"{_count(len(problems), 'row')} of the box table cannot be read", problems,
            f"A row is one box: a label and the four numbers of {key}.box_columns, or, "
            "with the four empty, an image without boxes. Correct the table, and run again."))


def detection_manifest(rows: pd.DataFrame, folder: str) -> pd.DataFrame:
    """The detection manifest of ``rows``, one per image: ``relative_path``, ``boxes``
    (a list of ``[label, x_min, y_min, x_max, y_max]``, written here as JSON) and
    ``path``; other columns are kept. An image without a ``path`` (None) was named but
    not found: it is looked for at its relative path in ``folder``, for the file check to
    report. An image named twice would hold part of its boxes in each row, and is
    refused."""
    manifest = rows.copy()
    manifest["path"] = [_resolve(folder, relative) if pd.isna(path) else path
                        for path, relative in zip(rows["path"], rows["relative_path"],
                                                  strict=True)]
    twice = manifest["path"].duplicated(keep=False)
    if twice.any():
        raise DataError(f"{_count(int(twice.sum()), 'image')} named more than once by the "
                        f"annotations: {_listing(manifest.loc[twice, 'relative_path'])}")
    labels = {box[0] for boxes in rows["boxes"] for box in boxes}
    count = sum(map(len, rows["boxes"]))
    manifest["boxes"] = [json.dumps(boxes) for boxes in rows["boxes"]]
    front = ["path", "relative_path", "boxes"]
    manifest = manifest[front + [c for c in manifest.columns if c not in front]]
    logger.info("Found %d images with %d boxes in %d classes", len(manifest), count,
                len(labels))
    return manifest.sort_values("relative_path", ignore_index=True)


def _table_columns(frame: pd.DataFrame, path_column: str, label_column: str, key: str,
                   names: tuple[str, str] = ("path_column", "label_column")) -> list[str]:
    """The table's columns other than the path and the label, once both are found and
    no other clashes with a column the pipeline adds."""
    for column, name in zip((path_column, label_column), names, strict=True):
        if column not in frame.columns:
            raise DataError(
                f"{key}.{name}: the manifest has no column {column!r}; its columns are "
                f"{', '.join(map(repr, frame.columns))}"
            )
    extra = [c for c in frame.columns if c not in (path_column, label_column)]
    clashing = sorted(set(extra) & RESERVED_COLUMNS)
    if clashing:
        raise DataError(
            f"the manifest's columns {', '.join(map(repr, clashing))} clash with columns "
            "the pipeline adds; rename them"
        )
    return extra


def _unlabelled(labels: pd.Series) -> pd.Series:
    return labels.isna() | (labels.astype(str).str.strip() == "")


def _resolve(folder: str, path: str) -> str:
    if "://" in path or posixpath.isabs(path):
        return path
    if "://" in folder:
        return f"{folder.rstrip('/')}/{posixpath.normpath(path)}"
    return posixpath.normpath(posixpath.join(folder, path))


def _sorted_and_counted(manifest: pd.DataFrame) -> pd.DataFrame:
    # Sorted, so the manifest does not depend on listing order.
    manifest = manifest.sort_values("relative_path", ignore_index=True)
    logger.info(
        "Found %d images in %d classes", len(manifest), manifest["label"].nunique()
    )
    return manifest


# --- judging the data before any work -------------------------------------------------
#
# What can be found without decoding a file, found before the run starts (before MLflow
# opens a run), and reported all at once: a folder without images, class folders
# without any, classes too small for the split; for a table also each row without a
# path or a label, whose file does not exist, or whose file does not start as an image
# (its header, read without decoding). What a file's pixels hold is left to the file
# check, which decodes every file once.


def judge_folder(listing: pd.DataFrame, config: DataConfig, key: str = "data") -> None:
    """Refuse a folder listing the run could not use, naming every problem in one
    :class:`DataError`: no images at all, class folders without any, classes with too
    few images for ``data.split``. Reads no file."""
    found = _images_in(listing)
    folder = listing.attrs.get("folder")
    source = {"type": "folder", "folder": folder}
    if found.manifest.empty:
        message = _no_images(listing, found.skipped)
        raise DataError(message, {"source": source, "refused": message, "problems": [message],
                                  "images_found": 0})
    sizes = found.manifest["label"].value_counts().sort_index()
    fractions = config.split.fractions
    too_small = classes_too_small(sizes, fractions)
    summaries, problems = [], []
    if too_small:
        summaries.append(f"{_classes_have(len(too_small))} too few images for "
                         f"{_split_needs(fractions, f'{key}.split')}")
        problems += [f"class {label!r}: {_count(n, 'image')}" for label, n in too_small.items()]
    if found.empty_classes:
        summaries.append(f"{_count(len(found.empty_classes), 'class folder')} without any "
                         f"image (extensions {_extensions()})")
        problems += [f"class folder {name!r}: no image in it" for name in found.empty_classes]
    if config.split.group_column is not None:
        summaries.append(f"{key}.split.group_column is set")
        problems.append(f"{key}.split.group_column {config.split.group_column!r}: an image "
                        "folder has no columns; groups come with a table (data.source: manifest)")
    if not problems:
        return
    subject = f"the image folder {folder!r}" if folder else "the image folder"
    head = f"{subject} cannot be used: {'; '.join(summaries)}"
    raise DataError(
        _refusal(head, problems, "Add images to these classes or remove their folders, and "
                 "run again."),
        {"source": source, "refused": head, "problems": problems,
         "images_found": len(found.manifest),
         "images_per_class": {str(k): int(v) for k, v in sizes.items()},
         "images_needed_per_class": images_needed(fractions), "classes_too_small": too_small,
         "class_folders_without_images": found.empty_classes},
    )


def judge_table(table: ImageTable, config: DataConfig, name: str | None = None,
                key: str = "data") -> None:
    """Refuse an image table the run could not use, naming every bad row and every class
    too small for the split in one :class:`DataError`.

    Each row's file is looked for and its header read (:func:`check_headers`). A row
    without a path or a label, or whose file does not exist, stops the run, as it would
    later; files that cannot be read stop it above ``data.max_bad_fraction``, and below
    it are left to the file check, which sets them aside. Rows are numbered from 1, the
    header not counted. ``name``: the table, as the message names it.
    """
    frame = table.frame
    _table_columns(frame, config.manifest.path_column, config.manifest.label_column,
                   f"{key}.manifest")
    subject = f"the image table {name!r}" if name else "the image table"
    source = {"type": "manifest", "table": name}
    if frame.empty:
        message = f"{subject} has no rows"
        raise DataError(message, {"source": source, "refused": message, "problems": [message]})
    logger.info("Checking the %d rows of the image table before the run: each file is there "
                "and starts as an image", len(frame))
    rows, sizes, checked = _judge_rows(table, config, key)
    unreadable = sum(not row["stops_the_run"] for row in rows)
    fraction = unreadable / len(frame)
    fractions = config.split.fractions
    too_small = classes_too_small(sizes, fractions)
    group = config.split.group_column
    no_group = group is not None and group not in frame.columns
    stops = any(row["stops_the_run"] for row in rows)
    if not (stops or fraction > config.max_bad_fraction or too_small or no_group):
        if rows:
            logger.info("%d of %d rows cannot be read; the file check will set them aside "
                        "(%s.max_bad_fraction = %g)", len(rows), len(frame), key,
                        config.max_bad_fraction)
        return
    summaries, problems = [], []
    if rows:
        summaries.append(f"{len(rows)} of {len(frame)} rows have problems")
        problems += [f"row {row['row']}"
                     + (f" {row['relative_path']!r}" if row["relative_path"] else "")
                     + f": {row['reason']}" for row in rows]
    if too_small:
        summaries.append(f"{_classes_have(len(too_small))} too few images for "
                         f"{_split_needs(fractions, f'{key}.split')}")
        problems += [f"class {label!r}: {_count(n, 'readable image')}"
                     for label, n in too_small.items()]
    if no_group:
        summaries.append(f"no column {group!r}")
        problems.append(f"{key}.split.group_column: the table has no column {group!r}; its "
                        f"columns are {', '.join(map(repr, frame.columns))}")
    head = f"{subject} cannot be used: {'; '.join(summaries)}"
    rules = []
    if rows:
        rules.append(
            "A row without a path or a label, or whose file does not exist, stops the run; "
            f"files that cannot be read stop it above {key}.max_bad_fraction = "
            f"{config.max_bad_fraction:g} (here {unreadable} of {len(frame)}, {fraction:.1%}) "
            "and are set aside below it.")
    rules.append("Correct the table or its files, and run again.")
    raise DataError(
        _refusal(head, problems, "\n".join(rules)),
        {"source": source, "refused": head, "problems": problems, "files_checked": checked,
         "images_used": 0, "bad_files": rows, "bad_fraction": round(fraction, 6),
         "max_bad_fraction": config.max_bad_fraction,
         "images_per_class": {str(k): int(v) for k, v in sizes.items()},
         "images_needed_per_class": images_needed(fractions), "classes_too_small": too_small},
    )


def _judge_rows(table: ImageTable, config: DataConfig, key: str
                ) -> tuple[list[dict[str, Any]], pd.Series, int]:
    """The table's bad rows (row number, path, label, every reason, and whether the row
    stops the run whatever data.max_bad_fraction says), the readable images per class
    (every label given, 0 where none is readable), and the number of files checked."""
    frame = table.frame
    path_column, label_column = config.manifest.path_column, config.manifest.label_column
    written, labels = frame[path_column], frame[label_column]
    no_path = (written.isna() | (written.astype(str).str.strip() == "")).to_numpy()
    no_label = _unlabelled(labels).to_numpy()
    paths = [None if skip else _resolve(table.folder, str(path))
             for path, skip in zip(written, no_path, strict=True)]
    to_check = [path for path in paths if path is not None]
    checks = iter(check_headers(to_check))
    rows, readable = [], []
    for position, (path, label) in enumerate(zip(paths, labels, strict=True)):
        reasons, stops = [], bool(no_path[position] or no_label[position])
        if no_path[position]:
            reasons.append(f"no path in column {path_column!r} ({key}.manifest.path_column)")
        if no_label[position]:
            reasons.append(f"no label in column {label_column!r} ({key}.manifest.label_column)")
        check = next(checks) if path is not None else None
        if check is not None and check.reason is not None:
            reasons.append(check.reason)
            stops = stops or check.missing
        if not reasons:
            readable.append(str(label))
            continue
        rows.append({"row": position + 1, "path": path,
                     "relative_path": None if no_path[position] else str(written.iloc[position]),
                     "label": None if no_label[position] else str(label),
                     "reason": "; ".join(reasons), "stops_the_run": stops})
    given = sorted({str(label) for label, skip in zip(labels, no_label, strict=True) if not skip})
    sizes = pd.Series(readable, dtype=object).value_counts().reindex(given, fill_value=0)
    return rows, sizes, len(to_check)


def _refusal(head: str, problems: list[str], advice: str) -> str:
    """The message of a refusal: what is wrong, each problem on a line of its own (the
    first :data:`PROBLEMS_SHOWN`), and what to do."""
    lines = [f"{head}:", *(f"- {problem}" for problem in problems[:PROBLEMS_SHOWN])]
    if len(problems) > PROBLEMS_SHOWN:
        lines.append(f"- and {len(problems) - PROBLEMS_SHOWN} more")
    return "\n".join([*lines, advice])


def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"


def _classes_have(n: int) -> str:
    return "1 class has" if n == 1 else f"{n} classes have"


def check_headers(paths: Sequence[str]) -> list[images.FileCheck]:
    """:func:`check_header` of each path, several at a time (most of the time is spent
    waiting on the disk or the network)."""
    images.read_timeout()  # a bad bound is refused here, not given as every file's reason
    results: list[images.FileCheck] = []
    if not paths:
        return results
    pool = ThreadPoolExecutor(min(HEADER_THREADS, len(paths)))
    try:
        for start in range(0, len(paths), 1024):  # not a million futures at once
            results += pool.map(check_header, paths[start:start + 1024])
    finally:
        # On Ctrl-C, the files not yet begun are not read.
        pool.shutdown(wait=False, cancel_futures=True)
    return results


def check_header(path: str) -> images.FileCheck:
    """Whether there is a file at ``path`` that starts as an image: PIL reads its header
    (format, size, mode) and decodes nothing, so a truncated image passes. Over the
    network the first :data:`HEAD_BYTES` are read, within the read bound
    (:func:`~kedro_torch.pytorch.images.read_bytes`). Reasons are worded as
    :func:`~kedro_torch.pytorch.images.check_file` words them."""
    try:
        if "://" not in path:
            if os.path.getsize(path) == 0:
                return images.FileCheck(reason="empty file (0 bytes)")
            with Image.open(path):
                return images.FileCheck()
        return _remote_header(path)
    except FileNotFoundError:
        return images.FileCheck(reason="no file at this path", missing=True)
    except (UnidentifiedImageError, Image.DecompressionBombError) as error:
        return images.FileCheck(reason=images.decode_failure(error))
    except OSError as error:
        return images.FileCheck(reason=f"cannot read: {error}")
    except Exception as error:  # PIL's header parsers raise SyntaxError, ValueError, ...
        return images.FileCheck(reason=images.decode_failure(error))


def _remote_header(path: str) -> images.FileCheck:
    try:
        head = images.read_bytes(path, end=HEAD_BYTES)
    except (FileNotFoundError, TimeoutError):
        raise
    except OSError:  # a range some servers refuse (416 for an empty file, ...)
        head = None
    if head:
        try:
            with Image.open(io.BytesIO(head)):
                return images.FileCheck()
        except Exception:
            if len(head) < HEAD_BYTES:  # that was the whole file
                raise
    data = head if head is not None and len(head) < HEAD_BYTES else images.read_bytes(path)
    if not data:
        return images.FileCheck(reason="empty file (0 bytes)")
    with Image.open(io.BytesIO(data)):
        return images.FileCheck()


# --- checking ------------------------------------------------------------------------


class _FileChecker(Dataset):
    """Lets a DataLoader's workers check files in parallel, in order."""

    def __init__(self, paths: Sequence[str], size: int, channels: int, keep_pixels: bool,
                 source: images.ImageSource):
        self.paths, self.size, self.channels = list(paths), size, channels
        self.keep_pixels, self.source = keep_pixels, source

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> images.FileCheck:
        return self.source.check(self.paths[index], self.size, self.channels, self.keep_pixels)


def _as_list(batch: list) -> list:
    return batch


def check_images(
    paths: Sequence[str],
    store: ImageStore,
    *,
    keep_pixels: bool,
    use_fingerprints: bool = False,
    num_workers: int = 0,
    source: images.ImageSource = images.FILES,
) -> tuple[pd.DataFrame, ImageStore]:
    """Open and decode every file once, at the store's image shape.

    Returns one row of :data:`~kedro_torch.pytorch.cache.ENTRY_COLUMNS` per path (plus
    ``missing``), and the store with this run's entries. With ``keep_pixels`` the
    decoded images go into a new chunk of the store; with ``use_fingerprints``
    files whose fingerprint the store already knows are not read at all. ``source``
    reads the paths: image files, or the samples of a torchvision dataset.
    """
    channels, size, _ = store.image_shape
    images.read_timeout()  # a bad bound is refused here, not in a worker's traceback
    fingerprints = [_fingerprint(source, path) for path in paths] if use_fingerprints else None
    if fingerprints is not None:
        entries = store.checked([f or "" for f in fingerprints]).reset_index()
        entries["fingerprint"] = fingerprints
        entries["missing"] = [f is None for f in fingerprints]
        known = entries["content_hash"].notna().to_numpy()
    else:
        entries = pd.DataFrame({column: [None] * len(paths) for column in ENTRY_COLUMNS})
        entries["missing"] = False
        known = np.zeros(len(paths), dtype=bool)
    todo = np.flatnonzero(~known & ~entries["missing"].to_numpy(dtype=bool))
    chunk, array = store.new_chunk(len(todo)) if keep_pixels and len(todo) else (None, None)
    checker = _FileChecker([paths[i] for i in todo], size, channels, keep_pixels, source)
    loader = DataLoader(checker, batch_size=CHECK_BATCH, num_workers=num_workers,
                        worker_init_fn=leave_ctrl_c_to_the_main_process,
                        collate_fn=_as_list)
    columns = {c: entries[c].to_numpy(dtype=object).copy() for c in [*ENTRY_COLUMNS, "missing"]}
    checks = (check for batch in loader for check in batch)
    for position, (row, check) in enumerate(zip(todo, checks, strict=True)):
        if check.pixels is not None:
            array[position] = check.pixels
        found = {
            "content_hash": check.content_hash, "reason": check.reason, "mode": check.mode,
            "pixel_sum": check.pixel_sum, "pixel_sumsq": check.pixel_sumsq,
            "chunk": chunk if check.pixels is not None else None,
            "row": position if check.pixels is not None else -1, "missing": check.missing,
        }
        for column, value in found.items():
            columns[column][row] = value
    if isinstance(array, np.memmap):
        array.flush()
    entries = pd.DataFrame(columns)
    logger.info(
        "Checked %d files: %d decoded now, %d known from the cache", len(paths), len(todo),
        int(known.sum()),
    )
    kept = entries[~entries["missing"].astype(bool)][list(ENTRY_COLUMNS)]
    return entries, store.with_entries(kept)


def _fingerprint(source: images.ImageSource, path: str) -> str | None:
    try:
        return source.fingerprint(path)
    except FileNotFoundError:
        return None


def set_aside_bad_files(
    manifest: pd.DataFrame, max_bad_fraction: float, key: str = "data.max_bad_fraction"
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split a checked manifest into usable rows and unreadable ones.

    Stops the run when a listed file does not exist (a manifest that points
    nowhere), or when the share of unreadable files exceeds ``max_bad_fraction``.
    """
    missing = manifest["missing"].astype(bool)
    if missing.any():
        raise DataError(
            f"{int(missing.sum())} listed images have no file behind them: "
            f"{_listing(manifest.loc[missing, 'path'])}"
        )
    bad = manifest["reason"].notna()
    fraction = float(bad.mean())
    if fraction > max_bad_fraction:
        examples = (manifest.loc[bad, "relative_path"] + " (" + manifest.loc[bad, "reason"] + ")")
        raise DataError(
            f"{int(bad.sum())} of {len(manifest)} images ({fraction:.1%}) cannot be read, more "
            f"than {key} = {max_bad_fraction}: {_listing(examples)}"
        )
    if bad.any():
        logger.warning(
            "Set aside %d unreadable files (see the data-quality report): %s",
            int(bad.sum()), _listing(manifest.loc[bad, "relative_path"]),
        )
    return manifest[~bad].reset_index(drop=True), manifest[bad].reset_index(drop=True)


def _listing(values: pd.Series, limit: int = 10) -> str:
    shown = ", ".join(map(repr, values.iloc[:limit]))
    return shown + (f" and {len(values) - limit} more" if len(values) > limit else "")


# --- labels and splits ---------------------------------------------------------------


def split_manifest(
    usable: pd.DataFrame, config: SplitConfig, key: str = "data.split"
) -> tuple[pd.DataFrame, dict[str, int], dict[str, list[str]], str]:
    """Encode labels and give every readable image its split.

    Returns the model input (the rows with ``target`` and ``split``, without the
    per-file check columns), the label map, the splits some class missed, and the
    rule that made the split, for the report.
    """
    if config.group_column is not None and config.group_column not in usable.columns:
        raise DataError(f"{key}.group_column: the manifest has no column "
                        f"{config.group_column!r}")
    groups = usable[config.group_column].tolist() if config.group_column else None
    keys = split_keys(usable["content_hash"], groups)
    if OWN_SPLIT in usable.columns:
        assignment, fractions, rule = _carve_from_own_split(keys, usable[OWN_SPLIT], config)
    else:
        assignment = assign_splits(keys, config.fractions, config.seed)
        fractions, rule = config.fractions, HASH_RULE
    missed = check_split(usable["label"], assignment, fractions, key)
    label_map = encode_labels(usable["label"])
    model_input = usable.drop(columns=["reason", "mode", "missing", "pixel_sum", "pixel_sumsq"])
    model_input = model_input.assign(
        target=model_input["label"].map(label_map).astype("int64"), split=assignment
    )
    logger.info("Split sizes: %s", model_input["split"].value_counts().to_dict())
    return model_input, label_map, missed, rule


def _carve_from_own_split(keys: np.ndarray, own_split: pd.Series, config: SplitConfig
                          ) -> tuple[np.ndarray, dict[str, float], str]:
    """The source's test part is the test split; its training part is split into train
    and val by the same hash, in the ratio ``train : val``.

    Rows sharing a key with a test row (copies of a test image, its group) go to test
    too, so that no test image is trained on. The fractions returned are those the
    classes are checked against: the carved ones, and ``test`` as configured.
    """
    carved = {"train": config.train / (config.train + config.val),
              "val": config.val / (config.train + config.val), "test": 0.0}
    test_keys = set(keys[(own_split == "test").to_numpy()])
    assignment = assign_splits(keys, carved, config.seed)
    with_test = np.array([key in test_keys for key in keys], dtype=bool)
    moved = int((with_test & (own_split != "test").to_numpy()).sum())
    assignment[with_test] = "test"
    rule = ("own test split: the source's test split is the test split; train and val are "
            "carved from its training split by content hash, in the ratio data.split.train "
            f": data.split.val ({moved} training images that are copies of test images, or "
            "share their group, went to test)")
    return assignment, carved | {"test": config.test}, rule


def encode_labels(labels: Sequence[str]) -> dict[str, int]:
    """Map class names to indices in sorted order, as ``ImageFolder`` does."""
    return {name: index for index, name in enumerate(sorted(set(labels)))}


def split_keys(content_hashes: Sequence[str], groups: Sequence | None = None) -> np.ndarray:
    """The key each row is split by: rows sharing a key always share a split.

    Without groups the key is the file's content hash, so exact duplicates land
    together and a file keeps its split whatever else is added. With groups, rows
    of a group share its key, and groups holding the same file are joined under
    the smallest of their keys. Rows without a group count as groups of their own.
    """
    hashes = [str(h) for h in content_hashes]
    if groups is None:
        return np.array([f"file:{h}" for h in hashes], dtype=object)
    own = [
        f"file:{h}" if g is None or (isinstance(g, float) and math.isnan(g)) else f"group:{g}"
        for h, g in zip(hashes, groups, strict=True)
    ]
    parent = {key: key for key in own}

    def root(key: str) -> str:
        while parent[key] != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    first_with_hash: dict[str, str] = {}
    for key, digest in zip(own, hashes, strict=True):
        other = first_with_hash.setdefault(digest, key)
        a, b = root(key), root(other)
        if a != b:
            parent[max(a, b)] = min(a, b)
    return np.array([root(key) for key in own], dtype=object)


def assign_splits(keys: Sequence[str], fractions: dict[str, float], seed: int) -> np.ndarray:
    """train/val/test for each key, from a seeded hash of the key alone.

    The hash maps a key to a number in [0, 1) that is compared with the cumulative
    fractions. Nothing else in the data takes part, so adding files never moves a
    file already split (a test image never drifts into training), and every class
    is split in the given proportions in expectation.
    """
    edges = np.cumsum([fractions[split] for split in SPLITS])
    position = np.array([_unit_hash(str(key), seed) for key in keys], dtype=np.float64)
    index = np.minimum(np.searchsorted(edges, position, side="right"), len(SPLITS) - 1)
    return np.asarray(SPLITS, dtype=object)[index]


def _unit_hash(key: str, seed: int) -> float:
    digest = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def check_split(
    labels: Sequence[str], splits: Sequence[str], fractions: dict[str, float],
    key: str = "data.split",
) -> dict[str, list[str]]:
    """Stop on classes too small to split; return the splits some class missed.

    A class is too small when the smallest non-zero fraction of it is under one
    image. A class split without any training image stops the run too; one that
    by chance missed val or test is only reported: its images are all in use.
    """
    counts = pd.crosstab(pd.Series(labels, name="label"), pd.Series(splits, name="split"))
    counts = counts.reindex(columns=list(SPLITS), fill_value=0)
    too_small = classes_too_small(counts.sum(axis=1), fractions)
    if too_small:
        raise DataError(
            f"classes with too few images for {_split_needs(fractions, key)}: "
            + ", ".join(f"{label!r} ({n})" for label, n in too_small.items())
        )
    no_train = counts.index[counts["train"] == 0]
    if len(no_train):
        raise DataError(
            f"classes without any training image under {key}.seed: "
            f"{', '.join(map(repr, no_train))}; change {key}.seed or add images"
        )
    missed = {
        split: [str(label) for label in counts.index[counts[split] == 0]]
        for split in ("val", "test") if fractions[split] > 0
    }
    for split, labels_missed in missed.items():
        if labels_missed:
            logger.warning("No %s images for classes %s", split, ", ".join(labels_missed))
    return {split: names for split, names in missed.items() if names}


def images_needed(fractions: dict[str, float]) -> int:
    """The images a class needs to be split: one in the smallest non-zero fraction."""
    return math.ceil(1 / min(f for f in fractions.values() if f > 0) - 1e-9)


def classes_too_small(sizes: pd.Series, fractions: dict[str, float]) -> dict[str, int]:
    """The classes (``sizes``: images per class) with fewer images than the split needs."""
    needed = images_needed(fractions)
    return {str(label): int(n) for label, n in sizes.items() if n < needed}


def _split_needs(fractions: dict[str, float], key: str) -> str:
    return (f"{key} (at least {images_needed(fractions)} each for "
            f"{', '.join(f'{s} {fractions[s]:g}' for s in SPLITS)})")


# --- statistics and report -----------------------------------------------------------


def fitted_normalization(config: DataConfig, train: pd.DataFrame) -> dict[str, Any]:
    """The mean and std the images are normalized with: computed from the training
    split's pixel sums (``data.normalize`` null), or the parameters'."""
    if config.normalize.computed:
        return normalization_from_sums(train["pixel_sum"], train["pixel_sumsq"],
                                       config.decode_size**2) | {"source": "training split"}
    return {"mean": config.normalize.mean, "std": config.normalize.std, "source": "parameters"}


def normalization_from_sums(
    pixel_sums: Sequence[np.ndarray], pixel_sumsqs: Sequence[np.ndarray], pixels_per_image: int
) -> dict[str, list[float]]:
    """Per-channel mean and std of pixel values scaled to [0, 1], from per-image sums."""
    count = len(pixel_sums) * pixels_per_image
    total = np.sum(np.stack(list(pixel_sums)), axis=0) / 255
    total_sq = np.sum(np.stack(list(pixel_sumsqs)), axis=0) / 255**2
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0))
    return {"mean": [round(float(v), 6) for v in mean],
            "std": [round(float(max(v, 1e-6)), 6) for v in std]}


def quality_report(
    checked: pd.DataFrame,
    bad: pd.DataFrame,
    model_input: pd.DataFrame,
    missed_splits: dict[str, list[str]],
    max_bad_fraction: float,
    *,
    source: dict[str, Any],
    split_rule: str,
) -> dict:
    """What the data-quality check found, for people: where the images came from,
    unreadable files, duplicates, the image modes met, and the class and split sizes
    that came out, with the rule that split them."""
    duplicates = model_input[model_input.duplicated("content_hash", keep=False)]
    sets = [
        {"paths": group["relative_path"].tolist(), "labels": sorted(set(group["label"]))}
        for _, group in duplicates.groupby("content_hash", sort=True)
    ]
    return {
        "source": dict(source),
        "files_checked": len(checked),
        "images_used": len(model_input),
        "bad_files": [
            {"path": row.path, "relative_path": row.relative_path, "label": row.label,
             "reason": row.reason}
            for row in bad.itertuples()
        ],
        "bad_fraction": round(len(bad) / max(len(checked), 1), 6),
        "max_bad_fraction": max_bad_fraction,
        "duplicates": {
            "files": len(duplicates),
            "extra_copies": len(duplicates) - len(sets),
            "sets_with_conflicting_labels": sum(len(s["labels"]) > 1 for s in sets),
            "sets": sets,
        },
        "image_modes": dict(sorted(Counter(checked["mode"].dropna()).items())),
        "images_per_class": {
            str(k): int(v) for k, v in model_input["label"].value_counts().sort_index().items()
        },
        "images_per_split": {
            s: int((model_input["split"] == s).sum()) for s in SPLITS
        },
        "split_rule": split_rule,
        "classes_missing_from_split": missed_splits,
    }
