"""Predicting with a trained segmentation model: images in, masks of class indices out.

Plain PyTorch, NumPy and PIL, so that evaluation, the inference pipeline and the MLflow
model predict the same way: an image is decoded as training decoded it, resized to
the model's input size and normalized; the mask comes back at the image's own size
(nearest-neighbour, so it holds class indices only). A :class:`SegmentationSpec` is
the JSON-able description (``model_spec.json``) that rebuilds the model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torchvision.transforms import v2

from kedro_torch.pytorch import images, loaders, models, segmentation
from kedro_torch.pytorch.config import DataConfig, ModelConfig
from kedro_torch.pytorch.inference import ImageModel


class Logits(nn.Module):
    """A torchvision segmentation model answering with its logits alone: it returns a
    dict (``out``, and ``aux`` for the auxiliary loss), which export and serving do not
    want. Typed, so that TorchScript compiles it."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        outputs: dict[str, torch.Tensor] = self.model(inputs)
        return outputs["out"]


@torch.no_grad()
def answering_with_logits(model: nn.Module, channels: int, size: int) -> nn.Module:
    """``model`` in eval mode, wrapped in :class:`Logits` if it answers with a dict (as
    torchvision's do; one forward pass of a blank image tells)."""
    model.eval()
    if isinstance(model(torch.zeros(1, channels, size, size)), dict):
        return Logits(model).eval()
    return model


@dataclass(frozen=True)
class SegmentationSpec:
    """What rebuilds a trained segmentation model and prepares its inputs."""

    model_name: str
    channels: int
    image_size: int
    mean: list[float]
    std: list[float]
    classes: list[str]
    colors: list[list[int]]
    ignore_index: int = 255
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    load_size: int | None = None
    task: str = "semantic_segmentation"

    @classmethod
    def from_configs(cls, model: ModelConfig, data: DataConfig,
                     preprocessing: Mapping[str, Any]) -> SegmentationSpec:
        return cls(model_name=model.name, model_kwargs=model.kwargs, channels=data.channels,
                   image_size=data.image_size, load_size=data.load_size,
                   mean=list(preprocessing["mean"]), std=list(preprocessing["std"]),
                   classes=list(preprocessing["classes"]),
                   colors=[list(rgb) for rgb in preprocessing["colors"]],
                   ignore_index=preprocessing["ignore_index"])

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> SegmentationSpec:
        return cls(**values)

    @property
    def preprocessing(self) -> dict[str, Any]:
        """The task's preprocessing (normalization and classes), as training fitted it."""
        return {"mean": self.mean, "std": self.std, "classes": self.classes,
                "colors": self.colors, "ignore_index": self.ignore_index}

    @property
    def decode_size(self) -> int:
        return self.load_size or self.image_size

    def model_arguments(self) -> dict[str, Any]:
        return {"num_classes": len(self.classes), "in_channels": self.channels}

    def build_model(self, state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
        """The architecture with exactly these weights (strict), in eval mode,
        answering with its logits."""
        model = models.build(self.model_name, self.model_arguments(), self.model_kwargs)
        model.load_state_dict(models.strip_wrapper_prefixes(state_dict))
        return answering_with_logits(model, self.channels, self.image_size)

    def decode(self, file: str | bytes) -> np.ndarray:
        """An image file, its path or its bytes, decoded as training decoded it."""
        data = file if isinstance(file, bytes) else images.read_bytes(file)
        return images.decode(data, self.decode_size, self.channels)[0]

    def prepare(self, decoded: Sequence[np.ndarray]) -> torch.Tensor:
        """Decoded ``(channels, decode_size, decode_size)`` uint8 images -> the model's
        normalized input batch at ``image_size``, as the evaluation loader makes it."""
        scale, shift = loaders.normalization_constants(self.mean, self.std)
        batch = torch.stack([torch.from_numpy(np.asarray(array)) for array in decoded])
        if self.decode_size != self.image_size:  # the loaders' v2.Resize, batched
            batch = v2.functional.resize(batch, [self.image_size, self.image_size],
                                         antialias=True)
        return batch.to(torch.float32).mul_(scale).sub_(shift)

    def palette(self) -> list[tuple[int, int, int]]:
        """The classes' colours: the parameters', else PASCAL VOC's colour map."""
        if self.colors:
            return [tuple(rgb) for rgb in self.colors]
        return segmentation.palette(len(self.classes))


class Segmenter(ImageModel):
    """A trained segmentation model with the preparation of its inputs."""

    @torch.inference_mode()
    def masks(self, decoded: Sequence[np.ndarray]) -> torch.Tensor:
        """uint8 ``(N, image_size, image_size)`` masks of class indices for decoded images."""
        parts = []
        for start in range(0, len(decoded), self.batch_size):
            batch = self.spec.prepare(decoded[start:start + self.batch_size]).to(self.device)
            parts.append(self.model(batch).argmax(dim=1).to(torch.uint8).cpu())
        return torch.cat(parts) if parts else torch.zeros(0, self.spec.image_size,
                                                          self.spec.image_size,
                                                          dtype=torch.uint8)

    def predict_each(self, files: Sequence[str | bytes]) -> list[np.ndarray | str]:
        """Each image file's (path or bytes) mask at the image's own size, or why the
        file could not be read: one bad file spoils no other. Predicted in batches."""
        results = images.decode_each(files, self.spec.decode_size, self.spec.channels)
        read = [result for result in results if not isinstance(result, str)]
        masks = iter([at_size(mask.numpy(), size) for mask, (_, size) in
                      zip(self.masks([pixels for pixels, _ in read]), read, strict=True)])
        return [result if isinstance(result, str) else next(masks) for result in results]

    def shares(self, mask: np.ndarray) -> dict[str, float]:
        """Each class's share of a mask's pixels."""
        counts = np.bincount(mask.ravel(), minlength=len(self.spec.classes))
        total = max(int(mask.size), 1)
        return {name: float(counts[index]) / total
                for index, name in enumerate(self.spec.classes)}


def at_size(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A mask of class indices resized to ``(width, height)``, nearest-neighbour."""
    if (mask.shape[1], mask.shape[0]) == tuple(size):
        return mask
    return np.asarray(Image.fromarray(mask).resize(size, Image.Resampling.NEAREST))
