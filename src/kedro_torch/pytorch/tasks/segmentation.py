"""Semantic segmentation: a class for every pixel, from images with masks.

Pairs come from a folder (``images/`` and ``masks/`` with the same file stems), a table
with a ``path`` and a ``mask_path`` column, or a torchvision segmentation dataset
(``VOCSegmentation``). Every pair is read once: a mask that is missing, of another
size than its image, or holding a value that is no class is set aside with its reason
in the data-quality report. Images and masks are kept decoded in memory and move
together through ``torchvision.transforms.v2`` (a mask is resized nearest-neighbour).
Metrics come from a confusion matrix of pixels summed over every rank, so the mean IoU
of many processes is exact.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from kedro_torch.pytorch import data, images, loaders, plots, segmentation, sources
from kedro_torch.pytorch.cache import ImageStore
from kedro_torch.pytorch.config import (
    DataConfig,
    EvaluationConfig,
    InferenceConfig,
    ModelConfig,
    ParameterError,
    SegmentationConfig,
)
from kedro_torch.pytorch.inference import image_files
from kedro_torch.pytorch.segmentation_inference import (
    SegmentationSpec,
    Segmenter,
    at_size,
)
from kedro_torch.pytorch.tasks.base import Evaluation, ImageInputs, PreparedData, Task
from kedro_torch.pytorch.torchvision_data import TorchvisionSamples

logger = logging.getLogger(__name__)

CHECK_THREADS = 8  # PIL decodes without the GIL
AUX_WEIGHT = 0.5  # the auxiliary head's share of the loss, as torchvision's reference


class SemanticSegmentation(ImageInputs, Task):
    name = "semantic_segmentation"
    sources = ("mask_folder", "manifest", "torchvision")
    default_loss = "CrossEntropyLoss"
    headline = ("test_miou", "test_pixel_accuracy", "test_mean_dice")
    epoch_metrics: ClassVar[dict[str, Literal["min", "max"]]] = {
        "miou": "max", "pixel_accuracy": "max"}
    probe_outputs = 2
    samples_kind = "segmentation"
    spec_type = SegmentationSpec

    @classmethod
    def check_config(cls, config: DataConfig, key: str) -> None:
        if len(config.segmentation.classes) < 2:
            raise ParameterError(f"{key}.segmentation.classes is required for {key}.task "
                                 f"{cls.name}: the class names, in the order of their pixel "
                                 "values in the masks (background first)")
        if config.transforms.train_batch:
            raise ParameterError(f"{key}.transforms.train_batch (MixUp, CutMix) mixes labels "
                                 f"of whole images; {cls.name} has a label per pixel")
        if config.sampler == "balanced":
            raise ParameterError(f"{key}.sampler: balanced draws images by their class; "
                                 f"{cls.name} images hold many classes. Use shuffle")

    @property
    def classes(self) -> list[str]:
        return list(self.preprocessing["classes"])

    @property
    def ignore_index(self) -> int:
        """The preprocessing's; the default for the parameter checks, which step a
        probe before any data is prepared."""
        return int(self.preprocessing.get("ignore_index", SegmentationConfig.ignore_index))

    # --- the loop ------------------------------------------------------------------------

    def loss_defaults(self) -> dict[str, Any]:
        return {"ignore_index": self.ignore_index}

    def step(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
             loss_fn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """torchvision's models answer with a dict: ``out``, and ``aux`` when built with
        ``aux_loss``, whose loss counts half, as in torchvision's reference."""
        outputs = model(inputs)
        if not isinstance(outputs, dict):
            return outputs, loss_fn(outputs, targets)
        loss = loss_fn(outputs["out"], targets)
        if "aux" in outputs:
            loss = loss + AUX_WEIGHT * loss_fn(outputs["aux"], targets)
        return outputs["out"], loss

    def metric_sums(self, device: torch.device) -> dict[str, torch.Tensor]:
        classes = len(self.classes)
        return super().metric_sums(device) | {
            "confusion": torch.zeros(classes, classes, dtype=torch.long, device=device)}

    def accumulate(self, sums: dict[str, torch.Tensor], outputs: torch.Tensor,
                   targets: torch.Tensor, loss: torch.Tensor) -> None:
        super().accumulate(sums, outputs, targets, loss)
        sums["confusion"] += segmentation.confusion_sums(
            outputs.argmax(dim=1), targets, len(self.classes), self.ignore_index)

    def summarize(self, totals: Mapping[str, Any]) -> dict[str, float]:
        report = segmentation.segmentation_report(totals["confusion"], self.classes)
        return super().summarize(totals) | {"miou": report["miou"],
                                            "pixel_accuracy": report["pixel_accuracy"]}

    def probe_targets(self) -> dict[str, torch.Tensor]:
        """Per-pixel classes, one of them ignored, flattened as the probe's outputs are."""
        return {"mask": torch.tensor([0, 1, self.ignore_index])}

    # --- data ----------------------------------------------------------------------------

    def prepare_data(self, manifest: pd.DataFrame, config: DataConfig,
                     on_disk: ImageStore | None) -> PreparedData:
        return _prepare_data(manifest, config, on_disk)

    def build_loaders(self, model_input: pd.DataFrame, preprocessing: Mapping[str, Any],
                      config: DataConfig, seed: int, images: Pairs | ImageStore | None,
                      pin_memory: bool) -> dict[str, DataLoader]:
        if not isinstance(images, Pairs):  # a caller of the API that kept none
            images = read_pairs(model_input, config)
        datasets = {
            split: PairDataset(images.select(rows["content_hash"]), preprocessing,
                               pair_transform(config, "train" if split == "train" else "eval"))
            for split, rows in model_input.groupby("split", sort=False)
        }
        return loaders.build_dataloaders(datasets, config, seed, pin_memory)

    def spec(self, model: ModelConfig, config: DataConfig,
             preprocessing: Mapping[str, Any]) -> SegmentationSpec:
        return SegmentationSpec.from_configs(model, config, preprocessing)

    # --- evaluation ----------------------------------------------------------------------

    def evaluate(self, state_dict: Mapping[str, torch.Tensor], spec: SegmentationSpec,
                 model_input: pd.DataFrame, label_map: Mapping[str, int],
                 config: EvaluationConfig, data_config: DataConfig,
                 images: ImageStore | None, device: torch.device, split: str) -> Evaluation:
        rows = model_input[model_input["split"] == split].reset_index(drop=True)
        pairs = read_pairs(rows, data_config, spec.decode_size, spec.channels)
        segmenter = Segmenter.from_state_dict(state_dict, spec, device,
                                              data_config.validation_batch_size)
        predicted = segmenter.masks(list(pairs.images.numpy())).long()
        truth = v2.functional.resize(tv_tensors.Mask(pairs.masks),
                                     [spec.image_size, spec.image_size]).long()
        classes = len(spec.classes)
        report = segmentation.segmentation_report(
            segmentation.confusion_sums(predicted, truth, classes, spec.ignore_index),
            spec.classes)
        report["images"] = len(rows)
        logger.info("Test mean IoU: %.4f, pixel accuracy: %.4f", report["miou"],
                    report["pixel_accuracy"])
        ious = segmentation.image_ious(predicted, truth, classes, spec.ignore_index)
        shares = {f"share_{name}": (predicted == index).flatten(1).double().mean(dim=1)
                  .numpy() for index, name in enumerate(spec.classes)}
        table = rows[["path", "relative_path", "mask_path"]].assign(
            iou=ious.numpy(), pixel_accuracy=_pixel_accuracy(predicted, truth,
                                                             spec.ignore_index).numpy(),
            **shares)
        figures = {
            "overlays": _overlays(pairs.images, truth, predicted, ious, table, spec,
                                  config.gallery_size),
            "confusion_matrix": plots.confusion_matrix_figure(
                report["confusion_matrix"], report["confusion_matrix_normalized"],
                spec.classes),
        }
        return Evaluation(report, self.test_metrics(report), table, per_class_table(report),
                          figures)

    def test_metrics(self, report: dict) -> dict[str, float]:
        return {"test_miou": report["miou"], "test_pixel_accuracy": report["pixel_accuracy"],
                "test_mean_dice": report["mean_dice"]}

    # --- prediction and serving ----------------------------------------------------------

    def predict(self, state_dict: Mapping[str, torch.Tensor], spec: SegmentationSpec,
                label_map: Mapping[str, int], listing: pd.DataFrame, config: InferenceConfig,
                device: torch.device) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Every image of a folder listing: its mask (PNG bytes, in ``mask_png``) and each
        class's share of its pixels; the files that do not decode, with why."""
        files = image_files(listing)
        segmenter = Segmenter.from_state_dict(state_dict, spec, device, config.batch_size)
        rows, failures = [], []
        for file, mask in zip(files.itertuples(), segmenter.predict_each(files["path"]),
                              strict=True):
            if isinstance(mask, str):
                failures.append({"path": file.path, "relative_path": file.relative_path,
                                 "reason": mask})
                continue
            rows.append({"path": file.path, "relative_path": file.relative_path,
                         "width": mask.shape[1], "height": mask.shape[0],
                         **{f"share_{name}": share
                            for name, share in segmenter.shares(mask).items()},
                         "mask_png": segmentation.mask_png(mask, spec.palette())})
        return (pd.DataFrame(rows), pd.DataFrame(failures,
                                                 columns=["path", "relative_path", "reason"]))

    def trained_model(self, spec: SegmentationSpec, state_dict: Mapping[str, torch.Tensor],
                      label_map: Mapping[str, int]) -> nn.Module:
        return spec.build_model(state_dict)

    def example_input(self, spec: SegmentationSpec, batch: int) -> torch.Tensor:
        return torch.zeros(batch, spec.channels, spec.image_size, spec.image_size)

    def input_batch(self, model_input: pd.DataFrame, spec: SegmentationSpec,
                    data_config: DataConfig, split: str) -> torch.Tensor:
        rows = model_input[model_input["split"] == split]
        pairs = read_pairs(rows, data_config, spec.decode_size, spec.channels)
        return spec.prepare(list(pairs.images.numpy()))

    def input_example(self, model_input: pd.DataFrame) -> None:
        """The served model takes image files; it makes its example (a blank PNG) itself."""
        return None

    def data_note(self, report: dict, config: DataConfig) -> tuple[str, dict[str, int], str]:
        return (f"{report['images_used']} images with masks of "
                f"{len(report['pixels_per_class'])} classes", report["images_per_split"],
                f"{len(report['bad_pairs'])} pairs set aside")

    def input_note(self, config: DataConfig, report: dict | None) -> str:
        channels = "grey" if config.channels == 1 else "RGB"
        return f"{config.image_size}x{config.image_size} px, {channels}, a class per pixel"


# --- reading and checking pairs -------------------------------------------------------


@dataclass(frozen=True)
class Pairs:
    """Decoded images and their masks, at the size they are augmented at, by the
    content hash of the pair."""

    index: dict[str, int]
    images: torch.Tensor  # uint8 (N, channels, size, size)
    masks: torch.Tensor  # uint8 (N, size, size)

    def select(self, hashes: Sequence[str]) -> Pairs:
        rows = torch.tensor([self.index[h] for h in hashes], dtype=torch.long)
        return Pairs({h: i for i, h in enumerate(hashes)}, self.images[rows], self.masks[rows])


@dataclass(frozen=True)
class PairCheck:
    """What reading one image and its mask found: a reason it cannot be used, or the
    decoded pair and its pixel counts."""

    reason: str | None = None
    missing: bool = False
    content_hash: str | None = None
    mode: str | None = None
    image: np.ndarray | None = None  # uint8 (channels, size, size)
    mask: np.ndarray | None = None  # uint8 (size, size)
    class_pixels: np.ndarray | None = None  # int64 (classes,), at the mask's own size


def check_pair(source: images.ImageSource, path: str, mask_path: str | None, size: int,
               channels: int, classes: int, ignore_index: int) -> PairCheck:
    """Read an image and its mask once; what is wrong with them is described, not raised."""
    if isinstance(source, TorchvisionSamples):
        try:
            image, mask_image = source.sample(path)
        except Exception as error:
            return PairCheck(reason=f"cannot read: {type(error).__name__}: {error}")
        check = images.check_image(image, size, channels, keep_pixels=True)
        if check.reason is not None:
            return PairCheck(reason=check.reason)
        return _with_mask(check.pixels, check.mode, image.size, check.content_hash,
                          lambda: np.asarray(mask_image), size, classes, ignore_index)
    if not isinstance(mask_path, str) or not mask_path:
        return PairCheck(reason="no mask: no file in masks/ has this image's stem")
    try:
        image_bytes = images.read_bytes(path)
    except FileNotFoundError:
        return PairCheck(reason="no file at this path", missing=True)
    try:
        mask_bytes = images.read_bytes(mask_path)
    except FileNotFoundError:
        return PairCheck(reason=f"no mask file at {mask_path}")
    try:
        pixels, mode = images.decode(image_bytes, size, channels)
        image_size = images.image_size_of(image_bytes)
    except Exception as error:  # PIL fails in many ways on broken files
        return PairCheck(reason=images.decode_failure(error))
    return _with_mask(pixels, mode, image_size,
                      images.content_hash(image_bytes + mask_bytes),
                      lambda: segmentation.read_mask(mask_bytes), size, classes, ignore_index)


def _with_mask(pixels: np.ndarray, mode: str, image_size: tuple[int, int], digest: str,
               read_mask: Any, size: int, classes: int, ignore_index: int) -> PairCheck:
    try:
        mask = read_mask()
    except Exception as error:
        return PairCheck(reason=f"mask cannot be read: {error}", content_hash=digest)
    width, height = image_size
    if mask.shape != (height, width):
        return PairCheck(reason=f"mask is {mask.shape[1]}x{mask.shape[0]} px, its image "
                                f"{width}x{height} px", content_hash=digest)
    values = np.unique(mask)
    unknown = values[(values >= classes) & (values != ignore_index)]
    if unknown.size:
        return PairCheck(reason=f"mask holds values {unknown.tolist()} that are no class "
                                f"(classes 0-{classes - 1}, {ignore_index} ignored)",
                         content_hash=digest)
    counts = np.bincount(mask[mask < classes].ravel(), minlength=classes).astype(np.int64)
    return PairCheck(content_hash=digest, mode=mode, image=pixels,
                     mask=at_size(mask, (size, size)), class_pixels=counts)


def check_pairs(manifest: pd.DataFrame, config: DataConfig, size: int, channels: int
                ) -> list[PairCheck]:
    source = sources.get(config.source).samples(config)
    mask_paths = (manifest["mask_path"] if "mask_path" in manifest
                  else pd.Series([None] * len(manifest)))
    classes = len(config.segmentation.classes)
    with ThreadPoolExecutor(CHECK_THREADS) as pool:
        return list(pool.map(
            lambda pair: check_pair(source, pair[0], pair[1], size, channels, classes,
                                    config.segmentation.ignore_index),
            zip(manifest["path"], mask_paths.where(mask_paths.notna(), None), strict=True)))


def read_pairs(rows: pd.DataFrame, config: DataConfig, size: int | None = None,
               channels: int | None = None) -> Pairs:
    """The pairs of ``rows`` (checked before), decoded again."""
    checks = check_pairs(rows, config, size or config.decode_size, channels or config.channels)
    broken = [(path, check.reason) for path, check in zip(rows["path"], checks, strict=True)
              if check.reason is not None]
    if broken:
        raise data.DataError(f"{len(broken)} pairs changed since they were checked: "
                             f"{broken[:5]}")
    return _stacked(rows["content_hash"].tolist(), checks)


def _stacked(hashes: list[str], checks: Sequence[PairCheck]) -> Pairs:
    index: dict[str, int] = {}
    kept = []
    for digest, check in zip(hashes, checks, strict=True):
        if digest not in index:
            index[digest] = len(kept)
            kept.append(check)
    return Pairs(index, torch.from_numpy(np.stack([c.image for c in kept])),
                 torch.from_numpy(np.stack([c.mask for c in kept])))


def _prepare_data(manifest: pd.DataFrame, config: DataConfig,
                  on_disk: ImageStore | None) -> PreparedData:
    seg = config.segmentation
    checks = check_pairs(manifest, config, config.decode_size, config.channels)
    checked = manifest.assign(
        label="image",  # one stratum: the hash splits every image alike
        content_hash=[c.content_hash for c in checks], reason=[c.reason for c in checks],
        missing=[c.missing for c in checks], mode=[c.mode for c in checks],
        pixel_sum=[None if c.image is None else images.pixel_sums(c.image)[0] for c in checks],
        pixel_sumsq=[None if c.image is None else images.pixel_sums(c.image)[1]
                     for c in checks],
    )
    if "mask_path" not in checked:
        checked["mask_path"] = None
    usable, bad = data.set_aside_bad_files(checked, config.max_bad_fraction)
    model_input, _, _, rule = data.split_manifest(usable, config.split)
    model_input = model_input.drop(columns=["label"])
    kept = [check for check in checks if check.reason is None]
    train = usable[model_input["split"] == "train"]
    normalization = data.fitted_normalization(config, train)
    colors = seg.colors or [list(rgb) for rgb in segmentation.palette(len(seg.classes))]
    preprocessing = normalization | {"classes": list(seg.classes), "colors": colors,
                                     "ignore_index": seg.ignore_index}
    pixels = np.sum([check.class_pixels for check in kept], axis=0)
    report = {
        "source": sources.get(config.source).describe(config),
        "pairs_checked": len(checked),
        "images_used": len(model_input),
        "bad_pairs": [{"path": row.path, "mask_path": row.mask_path,
                       "relative_path": row.relative_path, "reason": row.reason}
                      for row in bad.itertuples()],
        "bad_fraction": round(len(bad) / max(len(checked), 1), 6),
        "max_bad_fraction": config.max_bad_fraction,
        "duplicates": int(model_input.duplicated("content_hash").sum()),
        "image_modes": {str(k): int(v) for k, v in
                        checked["mode"].dropna().value_counts().sort_index().items()},
        "pixels_per_class": {
            name: {"pixels": int(pixels[index]),
                   "share": round(float(pixels[index]) / max(int(pixels.sum()), 1), 6)}
            for index, name in enumerate(seg.classes)},
        "classes_never_seen": [name for index, name in enumerate(seg.classes)
                               if pixels[index] == 0],
        "images_per_split": {s: int((model_input["split"] == s).sum()) for s in data.SPLITS},
        "split_rule": rule,
    }
    if report["classes_never_seen"]:
        logger.warning("No mask holds the classes %s", report["classes_never_seen"])
    pairs = _stacked(usable["content_hash"].tolist(), kept)
    return PreparedData(model_input, {name: i for i, name in enumerate(seg.classes)},
                        preprocessing, report, pairs, on_disk)


# --- feeding -------------------------------------------------------------------------------


def pair_transform(config: DataConfig, stage: str) -> v2.Transform | None:
    """The stage's ``data.transforms`` on image and mask together, ending at
    ``image_size`` (masks resize nearest-neighbour, as ``v2`` resizes a ``Mask``).

    What a crop, rotation or zoom-out adds around an image is black, and ignored in its
    mask (``fill`` unless the parameters give one): padding is no background."""
    fill = {tv_tensors.Image: 0, tv_tensors.Mask: config.segmentation.ignore_index}
    steps = loaders.build_transforms(config.transforms.steps(stage),
                                     f"data.transforms.{stage}", fill=fill)
    return loaders.image_transform(steps, config.image_size, config.decode_size)


class PairDataset(Dataset):
    """Decoded pairs in memory -> batches of (normalized float images, long masks).

    An item is an index, or ``(index, seed)`` to transform the pair under that seed, as
    the training sampler gives them (so that a resumed epoch replays its augmentations);
    ``__getitems__`` returns whole batches, which :meth:`collate` passes on unchanged.
    """

    fully_cached = True  # nothing to decode: no loader workers unless transforms run

    def __init__(self, pairs: Pairs, preprocessing: Mapping[str, Any],
                 transform: v2.Transform | None):
        self.pairs, self.transform = pairs, transform
        self.normalization = loaders.normalization_constants(preprocessing["mean"],
                                                             preprocessing["std"])

    def __len__(self) -> int:
        return len(self.pairs.images)

    def _pair(self, index: int, seed: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        image = tv_tensors.Image(self.pairs.images[index])
        mask = tv_tensors.Mask(self.pairs.masks[index])
        if self.transform is not None:
            if seed is None:
                image, mask = self.transform(image, mask)
            else:
                with loaders.seeded(seed):
                    image, mask = self.transform(image, mask)
        return image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor)

    def __getitems__(self, items: Sequence) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = [self._pair(*(item if isinstance(item, tuple) else (item, None)))
                 for item in items]
        batch = torch.stack([image for image, _ in pairs])
        pixels = loaders.normalize(batch, torch.empty(batch.shape, dtype=torch.float32),
                                   *self.normalization)
        return pixels, torch.stack([mask for _, mask in pairs]).long()

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        images, masks = self.__getitems__([item])
        return images[0], masks[0]

    @staticmethod
    def collate(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return batch


# --- evaluation ----------------------------------------------------------------------------


def _pixel_accuracy(predicted: torch.Tensor, truth: torch.Tensor,
                    ignore_index: int) -> torch.Tensor:
    counted = truth != ignore_index
    right = ((predicted == truth) & counted).flatten(1).sum(dim=1)
    return right / counted.flatten(1).sum(dim=1).clamp(min=1)


def per_class_table(report: dict) -> pd.DataFrame:
    """One row per class: IoU, Dice and its share of the true pixels."""
    return pd.DataFrame([{"class": name, **scores}
                         for name, scores in report["per_class"].items()],
                        columns=["class", "iou", "dice", "pixel_share", "pixels"])


def _overlays(decoded: torch.Tensor, truth: torch.Tensor, predicted: torch.Tensor,
              ious: torch.Tensor, table: pd.DataFrame, spec: SegmentationSpec,
              size: int) -> Any:
    """The first test images and those of the lowest IoU, each with the true and the
    predicted mask drawn over it."""
    order = torch.argsort(ious.nan_to_num(1.0))
    worst = order[:math.ceil(size / 2)].tolist()
    first = [i for i in range(len(table)) if i not in worst][:size - len(worst)]
    shown = v2.functional.resize(decoded, [spec.image_size, spec.image_size], antialias=True)
    rows = [(f"{'worst' if i in worst else 'test'}: {table.relative_path[i]}, "
             f"IoU {ious[i]:.2f}", shown[i], truth[i], predicted[i]) for i in first + worst]
    return segmentation.overlay_grid(rows, spec.palette(), spec.ignore_index)
