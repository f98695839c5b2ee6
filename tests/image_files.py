"""Real image files for the tests, written with PIL, and the broken kinds users meet."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def distinct_pixels(index: int, size: int = 8, channels: int = 3) -> np.ndarray:
    """Pixels no other index gives, so files never turn out to be duplicates."""
    rng = np.random.default_rng(index)
    shape = (size, size, channels) if channels > 1 else (size, size)
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def write_image(path: Path, index: int, size: int = 8, mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(distinct_pixels(index, size, 1 if mode == "L" else 3)).save(path)
    return path


def image_folder(root: Path, counts: dict[str, int], start: int = 0, suffix: str = ".png",
                 size: int = 8) -> Path:
    """``counts[label]`` distinct images in ``root/<label>/``, numbered from ``start``."""
    index = start
    for label, count in counts.items():
        for i in range(count):
            write_image(root / label / f"{start + i:04d}{suffix}", index, size)
            index += 1
    return root


def jpeg_bytes(index: int = 0, size: int = 32) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(distinct_pixels(index, size)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def write_truncated_jpeg(path: Path) -> Path:
    """A real JPEG cut short, as an interrupted download or copy leaves it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = jpeg_bytes(7, 64)
    path.write_bytes(data[: len(data) // 2])
    return path


def write_empty_file(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def write_text_as_jpeg(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("this is a note, not a photo\n")
    return path
