"""Predicting with a trained model: raw images in, labels and probabilities out.

Plain PyTorch, pandas and PIL, so a script, a notebook, the inference pipeline and
the MLflow model all predict the same way. A :class:`ModelSpec` is the small,
JSON-able description that rebuilds the model and its evaluation preprocessing
from a ``state_dict``; nothing here unpickles anything. Images are prepared
exactly as the validation and test splits were in training (decoded at
``load_size``, the eval transforms, resized to ``image_size``, normalized), so a
file predicted here gets the probabilities evaluation measured on it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import nn

from kedro_torch.pytorch import data, images, loaders, models
from kedro_torch.pytorch.config import DataConfig, ModelConfig

logger = logging.getLogger(__name__)

# What PIL mode an image array of a given number of channels is in.
ARRAY_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


@dataclass(frozen=True)
class ModelSpec:
    """What rebuilds a trained model and the preprocessing its inputs need.

    ``load_size`` and ``eval_transforms`` (``{name, kwargs}`` of
    ``torchvision.transforms.v2`` classes) are training's ``data.load_size`` and
    ``data.transforms.eval``; specs written before they existed load with none.
    """

    model_name: str
    channels: int
    image_size: int
    mean: list[float]
    std: list[float]
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    load_size: int | None = None
    eval_transforms: list[dict[str, Any]] = field(default_factory=list)
    task: str = "image_classification"

    @classmethod
    def from_configs(cls, model: ModelConfig, data: DataConfig,
                     normalization: Mapping[str, Sequence[float]]) -> ModelSpec:
        """The spec of a model trained with these parameters and normalization."""
        return cls(
            model_name=model.name, model_kwargs=model.kwargs, channels=data.channels,
            image_size=data.image_size, mean=list(normalization["mean"]),
            std=list(normalization["std"]), load_size=data.load_size,
            eval_transforms=[{"name": step.name, "kwargs": step.kwargs}
                             for step in data.transforms.eval],
        )

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
        model = models.build(self.model_name,
                             {"num_classes": num_classes, "in_channels": self.channels},
                             self.model_kwargs)
        model.load_state_dict(models.strip_wrapper_prefixes(state_dict))
        return model.eval()

    @property
    def decode_size(self) -> int:
        return self.load_size or self.image_size

    def eval_transform(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """Training's per-image eval steps, ending at ``image_size`` (None: nothing to do)."""
        steps = loaders.build_transforms(
            [(step["name"], step.get("kwargs") or {}) for step in self.eval_transforms],
            "model_spec.eval_transforms",
        )
        return loaders.image_transform(steps, self.image_size, self.decode_size)

    def preprocessor(self) -> Callable[[Sequence[np.ndarray]], torch.Tensor]:
        """Decoded ``(channels, decode_size, decode_size)`` uint8 images -> the
        model's input batch, by training's own eval transform and normalization."""
        transform = self.eval_transform()
        scale, shift = loaders.normalization_constants(self.mean, self.std)

        def prepare(decoded: Sequence[np.ndarray]) -> torch.Tensor:
            pixels = [torch.from_numpy(array) for array in decoded]
            if transform is not None:
                pixels = [transform(image) for image in pixels]
            return torch.stack(pixels).to(torch.float32).mul_(scale).sub_(shift)

        return prepare

    def decode(self, file: str | bytes) -> np.ndarray:
        """An image file, its path or its bytes, as training decodes it (see
        :func:`images.decode`)."""
        data = file if isinstance(file, bytes) else images.read_bytes(file)
        return images.decode(data, self.decode_size, self.channels)[0]

    def decode_image(self, image: Image.Image) -> np.ndarray:
        """An image in memory, turned the way its file would have been."""
        return images.decode_image(image, self.decode_size, self.channels)

    def load_batch(self, paths: Sequence[str],
                   source: images.ImageSource = images.FILES) -> torch.Tensor:
        """The images at ``paths`` (files, or the manifest paths of another ``source``
        of images) as the model's input: one normalized tensor batch."""
        return self.preprocessor()(
            [source.decode(path, self.decode_size, self.channels) for path in paths]
        )


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


def image_from_array(pixels: np.ndarray) -> Image.Image:
    """A uint8 pixel array, (H, W) or (H, W, C) with C in 1, 3, 4, as a PIL image ("L",
    "RGB" or "RGBA"); :meth:`ModelSpec.decode_image` converts it as files are."""
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
    return Image.fromarray(pixels, ARRAY_MODES[channels])


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
        self.prepare = spec.preprocessor()

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, torch.Tensor], spec: ModelSpec,
                        label_map: Mapping[str, int], device: torch.device | str = "cpu"
                        ) -> ImageClassifier:
        class_names = sorted(label_map, key=label_map.get)
        return cls(spec.build_model(state_dict, len(class_names)), spec, class_names, device)

    @torch.inference_mode()
    def probabilities(self, decoded: Sequence[np.ndarray]) -> torch.Tensor:
        """Softmax probabilities, one row per decoded image, on the CPU."""
        batch = self.prepare(decoded).to(self.device)
        return self.model(batch).float().softmax(dim=1).cpu()

    def predict_decoded(self, decoded: Sequence[np.ndarray], top_k: int,
                        batch_size: int = 64) -> pd.DataFrame:
        """One row per decoded image: label, probability and the ``top_k`` best guesses."""
        if not decoded:
            return predictions_table(torch.empty(0, len(self.class_names)), self.class_names,
                                     top_k)
        probabilities = torch.cat([
            self.probabilities(decoded[start : start + batch_size])
            for start in range(0, len(decoded), batch_size)
        ])
        return predictions_table(probabilities, self.class_names, top_k)

    def predict_images(self, images: Sequence[Image.Image], top_k: int,
                       batch_size: int = 64) -> pd.DataFrame:
        return self.predict_decoded([self.spec.decode_image(image) for image in images],
                                    top_k, batch_size)

    def predict_arrays(self, arrays: Sequence[np.ndarray], top_k: int,
                       batch_size: int = 64) -> pd.DataFrame:
        return self.predict_images([image_from_array(pixels) for pixels in arrays], top_k,
                                   batch_size)

    def predict_paths(self, paths: Sequence[str | bytes], top_k: int, batch_size: int = 64
                      ) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Predictions for the files that decode, and a table of those that do not.

        A file is given by its path or, when the caller has no path to share (a
        client of a model server), by its bytes; the ``path`` column is then empty.
        Both tables are indexed by the file's position in ``paths``, so a caller
        can put them back in input order. A broken file is reported, never fatal.
        Files are decoded one batch at a time, so memory does not grow with the
        number of files.
        """
        named = [None if isinstance(path, bytes) else path for path in paths]
        tables, failures = [], []
        for start in range(0, len(paths), batch_size):
            decoded, positions = [], []
            for position in range(start, min(start + batch_size, len(paths))):
                try:
                    decoded.append(self.spec.decode(paths[position]))
                    positions.append(position)
                except Image.UnidentifiedImageError:
                    failures.append((position, named[position],
                                     "not an image file PIL can decode"))
                except (OSError, ValueError, Image.DecompressionBombError) as error:
                    failures.append((position, named[position],
                                     f"{type(error).__name__}: {error}"))
            if decoded:
                table = self.predict_decoded(decoded, top_k, batch_size)
                table.index = pd.Index(positions, name="position")
                tables.append(table)
        for position, path, error in failures:
            logger.warning("Could not read %s: %s", path or f"image {position}", error)
        predictions = pd.concat(tables) if tables else self.predict_decoded([], top_k)
        predictions.insert(0, "path", [named[i] for i in predictions.index])
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


class ImageModel:
    """A trained model of images (a segmenter, a detector) with its spec, predicting in
    batches; each kind says what it answers for one file in :meth:`predict_each`."""

    def __init__(self, model: nn.Module, spec: Any, device: torch.device, batch_size: int = 32):
        self.model, self.spec, self.device = model.to(device).eval(), spec, device
        self.batch_size = batch_size

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, torch.Tensor], spec: Any,
                        device: str | torch.device = "cpu", batch_size: int = 32) -> Any:
        return cls(spec.build_model(state_dict), spec, torch.device(device), batch_size)

    def predict_each(self, files: Sequence[str | bytes]) -> list[Any]:
        """Each image file's (path or bytes) answer, or why it could not be read: one bad
        file spoils no other."""
        raise NotImplementedError

    def predict_files(self, files: Sequence[str | bytes]) -> list[Any]:
        """:meth:`predict_each`, for files that must all be read."""
        results = self.predict_each(files)
        failed = [result for result in results if isinstance(result, str)]
        if failed:
            raise ValueError(failed[0])
        return results
