"""A folder of images with their masks: ``images/`` and ``masks/``, paired by file stem
(the catalog's ``raw_images``, read as a listing).

An image without a mask stays in the manifest, without a ``mask_path``: the pair
check sets it aside with its reason, so the data-quality report names it. A mask
without an image is only counted in the log.
"""

from __future__ import annotations

import logging
from pathlib import PurePosixPath

import pandas as pd

from kedro_torch.pytorch import data
from kedro_torch.pytorch.config import DataConfig
from kedro_torch.pytorch.inference import image_files
from kedro_torch.pytorch.sources.base import Source

logger = logging.getLogger(__name__)

IMAGES, MASKS = "images", "masks"


class MaskFolderSource(Source):
    entry = "raw_images"

    def ingest(self, loaded: pd.DataFrame, config: DataConfig) -> pd.DataFrame:
        return pairs_from_listing(loaded)

    def judge(self, loaded: pd.DataFrame, config: DataConfig, name: str | None) -> None:
        pairs_from_listing(loaded)


def pairs_from_listing(listing: pd.DataFrame) -> pd.DataFrame:
    """``path``, ``relative_path`` and ``mask_path`` (None: no mask) of every image in
    ``images/``, sorted."""
    files = image_files(listing)
    relative = files["relative_path"].map(PurePosixPath)
    nested = relative.map(lambda p: len(p.parts) > 1)
    top = relative.map(lambda p: p.parts[0]).where(nested, "")
    # images/a/b.png pairs with masks/a/b.png, or masks/a/b.jpg
    stem = relative.map(lambda p: str(p.relative_to(p.parts[0]).with_suffix("")) if
                        len(p.parts) > 1 else "")
    folder = listing.attrs.get("folder", "the folder")
    found = {name: files[top == name].assign(stem=stem[top == name]) for name in (IMAGES, MASKS)}
    for name, frame in found.items():
        if frame.empty:
            raise data.DataError(
                f"{folder} has no images in {name}/: a segmentation folder holds images/ and "
                "masks/, a mask for each image under the same file name (stem)")
    masks = found[MASKS].drop_duplicates("stem").set_index("stem")["path"]
    images = found[IMAGES]
    orphans = len(set(masks.index) - set(images["stem"]))
    if orphans:
        logger.info("%d masks in %s/masks have no image", orphans, folder)
    manifest = pd.DataFrame({
        "path": images["path"].to_numpy(),
        "relative_path": images["relative_path"].to_numpy(),
        "mask_path": images["stem"].map(masks).astype(object).to_numpy(),
    }).sort_values("relative_path", ignore_index=True)
    manifest["mask_path"] = manifest["mask_path"].where(manifest["mask_path"].notna(), None)
    logger.info("Found %d images, %d with a mask", len(manifest),
                     int(manifest["mask_path"].notna().sum()))
    return manifest
