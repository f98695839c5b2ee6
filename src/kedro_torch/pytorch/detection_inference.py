"""Predicting with a trained detector: images in, boxes with labels and scores out.

Plain PyTorch and PIL, so that evaluation, the inference pipeline and the MLflow model
predict the same way: an image is decoded as training decoded it (squashed to a
square), resized to the model's input size and scaled to [0, 1]; the model normalizes
it itself (torchvision's detectors hold the mean and std) and its boxes are scaled back
to the image's own pixels. A :class:`DetectionSpec` is the JSON-able description
(``model_spec.json``) that rebuilds the model.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torchvision.transforms import v2

from kedro_torch.pytorch import detection, images, models
from kedro_torch.pytorch.config import DataConfig, ModelConfig
from kedro_torch.pytorch.inference import ImageModel

CHANNELS = 3  # torchvision's detectors take RGB


@dataclass(frozen=True)
class DetectionSpec:
    """What rebuilds a trained detector and prepares its inputs."""

    model_name: str
    image_size: int
    mean: list[float]
    std: list[float]
    classes: list[str]
    colors: list[list[int]]
    score_threshold: float = 0.5
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    load_size: int | None = None
    task: str = "object_detection"

    @classmethod
    def from_configs(cls, model: ModelConfig, data: DataConfig,
                     preprocessing: Mapping[str, Any]) -> DetectionSpec:
        return cls(model_name=model.name, model_kwargs=model.kwargs,
                   image_size=data.image_size, load_size=data.load_size,
                   mean=list(preprocessing["mean"]), std=list(preprocessing["std"]),
                   classes=list(preprocessing["classes"]),
                   colors=[list(rgb) for rgb in preprocessing["colors"]],
                   score_threshold=data.detection.score_threshold)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> DetectionSpec:
        return cls(**values)

    @property
    def preprocessing(self) -> dict[str, Any]:
        """The task's preprocessing (normalization and classes), as training fitted it."""
        return {"mean": self.mean, "std": self.std, "classes": self.classes,
                "colors": self.colors}

    @property
    def decode_size(self) -> int:
        return self.load_size or self.image_size

    @property
    def channels(self) -> int:
        return CHANNELS

    def model_arguments(self) -> dict[str, Any]:
        return model_arguments(self.classes, self.image_size, self.mean, self.std)

    def build_model(self, state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
        """The architecture with exactly these weights (strict), in eval mode."""
        model = models.build(self.model_name, self.model_arguments(), self.model_kwargs)
        model.load_state_dict(models.strip_wrapper_prefixes(state_dict))
        return model.eval()

    def prepare(self, decoded: Sequence[np.ndarray]) -> torch.Tensor:
        """Decoded ``(3, decode_size, decode_size)`` uint8 images -> the model's input
        batch at ``image_size``, in [0, 1], as the evaluation loader makes it."""
        batch = torch.stack([torch.from_numpy(np.asarray(array)) for array in decoded])
        if self.decode_size != self.image_size:
            batch = v2.functional.resize(batch, [self.image_size, self.image_size],
                                         antialias=True)
        return batch.to(torch.float32).div_(255)

    def palette(self) -> list[tuple[int, int, int]]:
        """The classes' colours: the parameters', else :func:`detection.palette`'s."""
        if self.colors:
            return [tuple(rgb) for rgb in self.colors]
        return detection.palette(len(self.classes))


def model_arguments(classes: Sequence[str], image_size: int, mean: Sequence[float],
                    std: Sequence[float]) -> dict[str, Any]:
    """What a detector's constructor is given: the classes and a background (label 0),
    the input size, so that its own transform resizes nothing, and the training split's
    normalization, which it applies itself."""
    return {"num_classes": len(classes) + 1, "in_channels": CHANNELS, "min_size": image_size,
            "max_size": image_size, "image_mean": list(mean), "image_std": list(std)}


class Detections(nn.Module):
    """A detector taking an image batch and answering with its detections alone, as
    TorchScript compiles it: scripted, torchvision's detectors answer ``(losses,
    detections)``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        batch = list(images.unbind(0))
        if torch.jit.is_scripting():
            return self.model(batch)[1]
        return self.model(batch)


class DetectorNetwork(nn.Module):
    """The part of a detector that torch.export takes: its normalization, backbone and,
    for a single-stage detector (FCOS, RetinaNet, SSD), its head, answering with the raw
    class logits and box regressions of every location. What follows them (decoding
    boxes, keeping the surest, non-maximum suppression) keeps a number of boxes that
    depends on the values, which torch.export cannot trace; a two-stage detector (Faster
    R-CNN) answers with its backbone's feature maps, as its proposals are such boxes."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        transform = model.transform
        self.register_buffer("mean", torch.tensor(transform.image_mean).view(-1, 1, 1))
        self.register_buffer("std", torch.tensor(transform.image_std).view(-1, 1, 1))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.model.backbone((images - self.mean) / self.std)
        head = getattr(self.model, "head", None)
        return head(list(features.values())) if head is not None else dict(features)


def output_difference(reference: Any, candidate: Any) -> float:
    """How far an export's detections (or raw outputs) stray from the eager model's:
    infinite when they differ in number or labels."""
    if isinstance(reference, Mapping):
        return max((reference[name] - candidate[name]).abs().max().item()
                   for name in reference)
    largest = 0.0
    for expected, given in zip(reference, candidate, strict=True):
        if not torch.equal(expected["labels"], given["labels"]):
            return math.inf
        for name in ("boxes", "scores"):
            if expected[name].numel():
                largest = max(largest, (expected[name] - given[name]).abs().max().item())
    return largest


class Detector(ImageModel):
    """A trained detector with the preparation of its inputs."""

    @torch.inference_mode()
    def detect(self, decoded: Sequence[np.ndarray], sizes: Sequence[tuple[int, int]]
               ) -> list[dict[str, torch.Tensor]]:
        """Every detection the model keeps for decoded images, on the CPU, its boxes in
        each image's own ``(width, height)`` pixels."""
        found = []
        for start in range(0, len(decoded), self.batch_size):
            batch = self.spec.prepare(decoded[start:start + self.batch_size]).to(self.device)
            found += [{name: value.cpu() for name, value in image.items()}
                      for image in self.model(batch)]
        side = self.spec.image_size
        for image, (width, height) in zip(found, sizes, strict=True):
            image["boxes"] = image["boxes"] * torch.tensor([width / side, height / side] * 2)
        return found

    def predict_each(self, files: Sequence[str | bytes]) -> list[dict[str, torch.Tensor] | str]:
        """Each image file's (path or bytes) detections at least as sure as the spec's
        score threshold, or why the file could not be read: one bad file spoils no other."""
        results = images.decode_each(files, self.spec.decode_size, CHANNELS)
        read = [result for result in results if not isinstance(result, str)]
        found = iter(self.detect([pixels for pixels, _ in read], [size for _, size in read]))
        return [result if isinstance(result, str)
                else above(next(found), self.spec.score_threshold) for result in results]

    def described(self, found: Mapping[str, torch.Tensor]) -> list[dict[str, Any]]:
        """Detections as plain values: the class name, the score and the box corners."""
        return [{"label": self.spec.classes[int(label) - 1], "score": float(score),
                 "x_min": float(box[0]), "y_min": float(box[1]), "x_max": float(box[2]),
                 "y_max": float(box[3])}
                for box, label, score in zip(found["boxes"].tolist(), found["labels"].tolist(),
                                             found["scores"].tolist(), strict=True)]


def above(found: Mapping[str, torch.Tensor], threshold: float) -> dict[str, torch.Tensor]:
    """The detections scored at least ``threshold``."""
    kept = found["scores"] >= threshold
    return {name: value[kept] for name, value in found.items()}


def coco_results(predictions: pd.DataFrame, classes: Sequence[str]) -> list[dict[str, Any]]:
    """A table of detections (``image_id``, ``label``, ``score`` and corners) as a COCO
    results file: category ids are the classes' places in ``classes``, from 1, as the
    model numbers them."""
    category = {name: index for index, name in enumerate(classes, 1)}
    return [{"image_id": int(row.image_id), "category_id": category[row.label],
             "bbox": [row.x_min, row.y_min, row.x_max - row.x_min, row.y_max - row.y_min],
             "score": row.score}
            for row in predictions.itertuples()]
