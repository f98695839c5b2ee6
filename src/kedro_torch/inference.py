"""Predicting with a trained model: raw images in, labels and probabilities out.

Plain PyTorch, pandas and PIL, so a script, a notebook, the inference pipeline and
the MLflow model all predict the same way. A :class:`ModelSpec` is the small,
JSON-able description that rebuilds the model and its evaluation transform from a
``state_dict``; nothing here unpickles anything.
"""

from __future__ import annotations

import dataclasses
import io
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageOps
from torch import nn
from torchvision.transforms import v2

from kedro_torch import data, images, models

logger = logging.getLogger(__name__)

# What PIL mode an image array of a given number of channels is in.
ARRAY_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


@dataclass(frozen=True)
class ModelSpec:
    """What rebuilds a trained model and the transform its inputs need."""

    model_name: str
    channels: int
    image_size: int
    mean: list[float]
    std: list[float]
    model_kwargs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ModelSpec:
        return cls(**values)

    def build_model(self, state_dict: Mapping[str, torch.Tensor], num_classes: int) -> nn.Module:
        """The architecture with these exact weights, in eval mode.

        Loading is strict: weights that do not fit the spec are an error here,
        not a silently half-initialised model.
        """
        model = models.build_model(self.model_name, num_classes, self.channels,
                                   **self.model_kwargs)
        model.load_state_dict(models.strip_wrapper_prefixes(state_dict))
        return model.eval()

    def transform(self) -> v2.Transform:
        """Decoded image -> normalised tensor, resized as training decoding resizes."""
        return v2.Compose([
            v2.PILToTensor(),
            v2.Resize((self.image_size, self.image_size), antialias=True),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(self.mean), std=list(self.std)),
        ])

    @property
    def mode(self) -> str:
        return {1: "L", 3: "RGB"}[self.channels]

    def load_batch(self, paths: Sequence[str]) -> torch.Tensor:
        """The images at ``paths`` as the model's input: one normalised tensor batch."""
        transform = self.transform()
        return torch.stack([transform(open_image(path, self.channels)) for path in paths])


def open_image(path: str, channels: int) -> Image.Image:
    """An image file in ``channels`` channels, converted exactly as training converts it."""
    with Image.open(io.BytesIO(images.read_bytes(path))) as image:
        image.load()
        ImageOps.exif_transpose(image, in_place=True)
        return images.to_channels(image, channels)


def image_files(listing: pd.DataFrame) -> pd.DataFrame:
    """The rows of a folder listing that name image files, at any depth.

    Hidden files and files of other types are skipped and counted in the log,
    as in training; whether an image decodes is found out when it is read.
    """
    if "is_dir" in listing:  # folders are listed too, for training's empty-class check
        listing = listing[~listing["is_dir"].astype(bool)]
    relative = listing["relative_path"].map(PurePosixPath)
    hidden = relative.map(lambda p: any(part.startswith(".") for part in p.parts))
    is_image = relative.map(lambda p: p.suffix.lower() in data.IMAGE_EXTENSIONS)
    skipped = {"hidden": int(hidden.sum()), "not an image": int((~hidden & ~is_image).sum())}
    if any(skipped.values()):
        logger.info(
            "Skipped files: %s", ", ".join(f"{n} {why}" for why, n in skipped.items() if n)
        )
    return listing[~hidden & is_image].reset_index(drop=True)


def image_from_array(pixels: np.ndarray, mode: str) -> Image.Image:
    """A uint8 pixel array, (H, W) or (H, W, C) with C in 1, 3, 4, as a PIL image in ``mode``."""
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8:
        raise ValueError(f"image arrays must hold uint8 pixel values (0-255), got {pixels.dtype}")
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    channels = 1 if pixels.ndim == 2 else pixels.shape[2] if pixels.ndim == 3 else None
    if channels not in ARRAY_MODES:
        raise ValueError(
            f"an image array must have shape (H, W) or (H, W, C) with C in 1, 3, 4; "
            f"got {pixels.shape}"
        )
    image = Image.fromarray(pixels, ARRAY_MODES[channels])
    return image if image.mode == mode else image.convert(mode)


class ImageClassifier:
    """A trained model with its evaluation transform and class names.

    Accepts what people have at hand: file paths (any fsspec URL) or pixel arrays.
    """

    def __init__(self, model: nn.Module, spec: ModelSpec, class_names: Sequence[str],
                 device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.spec = spec
        self.class_names = list(class_names)
        self.transform = spec.transform()

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, torch.Tensor], spec: ModelSpec,
                        label_map: Mapping[str, int], device: torch.device | str = "cpu"
                        ) -> ImageClassifier:
        class_names = sorted(label_map, key=label_map.get)
        return cls(spec.build_model(state_dict, len(class_names)), spec, class_names, device)

    @torch.inference_mode()
    def probabilities(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Softmax probabilities, one row per image, on the CPU."""
        batch = torch.stack([self.transform(image) for image in images]).to(self.device)
        return self.model(batch).float().softmax(dim=1).cpu()

    def predict_images(self, images: Sequence[Image.Image], top_k: int,
                       batch_size: int = 64) -> pd.DataFrame:
        """One row per image: label, probability and the ``top_k`` best guesses."""
        if not images:
            return predictions_table(torch.empty(0, len(self.class_names)), self.class_names,
                                     top_k)
        probabilities = torch.cat([
            self.probabilities(images[start : start + batch_size])
            for start in range(0, len(images), batch_size)
        ])
        return predictions_table(probabilities, self.class_names, top_k)

    def predict_arrays(self, arrays: Sequence[np.ndarray], top_k: int,
                       batch_size: int = 64) -> pd.DataFrame:
        images = [image_from_array(pixels, self.spec.mode) for pixels in arrays]
        return self.predict_images(images, top_k, batch_size)

    def predict_paths(self, paths: Sequence[str], top_k: int, batch_size: int = 64
                      ) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Predictions for the files that decode, and a table of those that do not.

        Both tables are indexed by the path's position in ``paths``, so a caller
        can put them back in input order. A broken file is reported, never fatal.
        Files are decoded one batch at a time, so memory does not grow with the
        number of files.
        """
        tables, failures = [], []
        for start in range(0, len(paths), batch_size):
            decoded, positions = [], []
            for position in range(start, min(start + batch_size, len(paths))):
                try:
                    decoded.append(open_image(paths[position], self.spec.channels))
                    positions.append(position)
                except Image.UnidentifiedImageError:
                    failures.append((position, paths[position],
                                     "not an image file PIL can decode"))
                except (OSError, ValueError, Image.DecompressionBombError) as error:
                    failures.append((position, paths[position],
                                     f"{type(error).__name__}: {error}"))
            if decoded:
                table = self.predict_images(decoded, top_k, batch_size)
                table.index = pd.Index(positions, name="position")
                tables.append(table)
        for _, path, error in failures:
            logger.warning("Could not read %s: %s", path, error)
        predictions = pd.concat(tables) if tables else self.predict_images([], top_k)
        predictions.insert(0, "path", [paths[i] for i in predictions.index])
        failed = pd.DataFrame(failures, columns=["position", "path", "error"])
        return predictions, failed.set_index("position")


def predictions_table(probabilities: torch.Tensor, class_names: Sequence[str],
                      top_k: int) -> pd.DataFrame:
    """label and probability of the best class, then top1..topk labels and probabilities.

    Flat columns (not lists) so the table reads the same in CSV, pandas and JSON.
    """
    top = probabilities.topk(min(top_k, len(class_names)), dim=1)
    names = np.asarray(class_names, dtype=object)
    columns: dict[str, Any] = {}
    for rank in range(top.indices.shape[1]):
        columns[f"top{rank + 1}_label"] = names[top.indices[:, rank].numpy()]
        columns[f"top{rank + 1}_probability"] = top.values[:, rank].numpy()
    table = pd.DataFrame(columns)
    table.insert(0, "label", table["top1_label"])
    table.insert(1, "probability", table["top1_probability"])
    return table
