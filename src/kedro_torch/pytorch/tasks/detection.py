"""Object detection: boxes with a class each, from images with labelled boxes.

Boxes come from a COCO file beside a folder of images, PASCAL VOC's XML files, or a
table with one row per box; each source gives one row per image with its boxes
(``boxes``: ``[label, x_min, y_min, x_max, y_max]`` in the image's own pixels). Every
image is read once and every box checked: an image holding a box outside it, without
area or of an unknown class is set aside, naming the box, so that no object the model
sees goes unlabelled. Images without boxes stay, as negatives.

Batches are an image tensor and a list of target dicts; the model computes its own
losses in training mode, each logged per epoch, and predicts in eval mode, where the
validation mAP comes from torchmetrics' COCO evaluation over every rank's boxes.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.ops import box_iou
from torchvision.transforms import v2

from kedro_torch.pytorch import data, detection, images, loaders, sources
from kedro_torch.pytorch.cache import ImageStore
from kedro_torch.pytorch.config import (
    DataConfig,
    EvaluationConfig,
    InferenceConfig,
    ModelConfig,
    ParameterError,
)
from kedro_torch.pytorch.detection_inference import (
    CHANNELS,
    Detections,
    DetectionSpec,
    Detector,
    DetectorNetwork,
    above,
    model_arguments,
    output_difference,
)
from kedro_torch.pytorch.inference import image_files
from kedro_torch.pytorch.tasks.base import Evaluation, PreparedData, Task

CHECK_THREADS = 8  # PIL decodes without the GIL
MATCH_IOU = 0.5  # a true box counts as found by a detection of its class overlapping this much


class Targets(list):
    """A batch's target dicts (``boxes``, ``labels``), moved to a device as a tensor is."""

    def to(self, device: torch.device, non_blocking: bool = False) -> Targets:
        return Targets({name: value.to(device, non_blocking=non_blocking)
                        for name, value in target.items()} for target in self)


class ObjectDetection(Task):
    name = "object_detection"
    sources = ("coco", "voc", "manifest")
    default_loss = None
    headline = ("test_map", "test_map50", "test_map75")
    epoch_metrics: ClassVar[dict[str, Literal["min", "max"]]] = {"map": "max", "map50": "max"}
    probe_outputs = 2
    samples_kind = "detection"
    spec_type = DetectionSpec

    @classmethod
    def check_config(cls, config: DataConfig, key: str) -> None:
        if config.channels != CHANNELS:
            raise ParameterError(f"{key}.channels: {cls.name} takes RGB images (3), as "
                                 f"torchvision's detectors do; got {config.channels}")
        if config.transforms.train_batch:
            raise ParameterError(f"{key}.transforms.train_batch (MixUp, CutMix) mixes labels "
                                 f"of whole images; {cls.name} has boxes")
        if config.sampler == "balanced":
            raise ParameterError(f"{key}.sampler: balanced draws images by their class; "
                                 f"{cls.name} images hold many classes. Use shuffle")

    @classmethod
    def monitors(cls) -> tuple[str, ...]:
        """Training's loss (a detector computes none in eval mode, so validation has no
        loss) and validation's mAP."""
        return ("train_loss", *(f"val_{name}" for name in cls.epoch_metrics))

    @property
    def classes(self) -> list[str]:
        return list(self.preprocessing.get("classes", ["object"]))

    # --- the loop ------------------------------------------------------------------------

    def step(self, model: nn.Module, inputs: torch.Tensor, targets: Targets,
             loss_fn: nn.Module | None) -> tuple[Any, torch.Tensor | None]:
        """In training mode the model returns its losses, whose sum is trained; in eval
        mode its detections."""
        if model.training:
            losses = model(inputs, list(targets))
            return losses, sum(losses.values())
        return model(inputs), None

    def metric_sums(self, device: torch.device) -> dict[str, Any]:
        """The losses by the model's names for them, added as they first come; and the
        boxes for the mAP, which are gathered from every rank rather than summed."""
        sums: dict[str, Any] = defaultdict(lambda: torch.zeros((), device=device))
        sums.update(trained=torch.zeros((), dtype=torch.long, device=device),
                    detected=torch.zeros((), dtype=torch.long, device=device),
                    loss=torch.zeros((), device=device),
                    boxes=detection.BoxScores(self.classes, per_class=False))
        return sums

    def accumulate(self, sums: dict[str, Any], outputs: Any, targets: Targets,
                   loss: torch.Tensor | None) -> None:
        count = len(targets)
        if isinstance(outputs, dict):  # training: the losses
            sums["trained"] += count
            sums["loss"] += loss.detach() * count
            for name, value in outputs.items():
                sums[f"loss_{name.removeprefix('loss_')}"] += value.detach() * count
        else:
            sums["detected"] += count
            sums["boxes"].update(outputs, list(targets))

    def totals(self, sums: Mapping[str, Any]) -> dict[str, Any]:
        totals = super().totals(sums)
        if totals["detected"]:  # every rank agrees: the counts are summed
            totals["boxes"] = sums["boxes"].report()
        return totals

    def summarize(self, totals: Mapping[str, Any]) -> dict[str, float]:
        figures: dict[str, float] = {}
        if totals["trained"]:
            figures |= {name: totals[name] / totals["trained"] for name in totals
                        if name == "loss" or name.startswith("loss_")}
        if totals["detected"]:  # NaN where no true box gave the mAP anything to measure
            figures |= {name: math.nan if totals["boxes"][name] is None
                        else totals["boxes"][name] for name in self.epoch_metrics}
        return figures

    def probe_targets(self) -> dict[str, torch.Tensor]:
        """A placeholder: the checks' probe calls no loss of a detector's (the model
        computes its own), so it steps the optimizers on a loss of its own."""
        return {"boxes": torch.tensor([0, 1, 0])}

    # --- data ----------------------------------------------------------------------------

    def prepare_data(self, manifest: pd.DataFrame, config: DataConfig,
                     on_disk: ImageStore | None) -> PreparedData:
        return _prepare_data(manifest, config, on_disk)

    def build_loaders(self, model_input: pd.DataFrame, preprocessing: Mapping[str, Any],
                      config: DataConfig, seed: int, images: Boxed | ImageStore | None,
                      pin_memory: bool) -> dict[str, DataLoader]:
        if not isinstance(images, Boxed):  # a caller of the API that kept none
            images = read_boxed(model_input, config)
        datasets = {
            split: BoxDataset(images.select(rows["content_hash"]),
                              box_transform(config, "train" if split == "train" else "eval"))
            for split, rows in model_input.groupby("split", sort=False)
        }
        return loaders.build_dataloaders(datasets, config, seed, pin_memory)

    def model_arguments(self, config: DataConfig, label_map: Mapping[str, int],
                        preprocessing: Mapping[str, Any]) -> dict[str, Any]:
        return model_arguments(list(label_map), config.image_size, preprocessing["mean"],
                               preprocessing["std"])

    def probe_arguments(self, config: DataConfig) -> dict[str, Any]:
        return model_arguments(config.detection.classes or ["object"], config.image_size,
                               [0.5] * CHANNELS, [0.25] * CHANNELS)

    def spec(self, model: ModelConfig, config: DataConfig,
             preprocessing: Mapping[str, Any]) -> DetectionSpec:
        return DetectionSpec.from_configs(model, config, preprocessing)

    # --- evaluation ----------------------------------------------------------------------

    def evaluate(self, state_dict: Mapping[str, torch.Tensor], spec: DetectionSpec,
                 model_input: pd.DataFrame, label_map: Mapping[str, int],
                 config: EvaluationConfig, data_config: DataConfig,
                 images: ImageStore | None, device: torch.device, split: str) -> Evaluation:
        rows = model_input[model_input["split"] == split].reset_index(drop=True)
        boxed = read_boxed(rows, data_config, spec.decode_size)
        detector = Detector.from_state_dict(state_dict, spec, device,
                                            data_config.validation_batch_size)
        sizes = list(zip(rows["width"], rows["height"], strict=True))
        found = detector.detect(list(boxed.images.numpy()), sizes)
        truth = [truth_of(boxes, spec.classes) for boxes in rows["boxes"]]
        scores = detection.BoxScores(spec.classes, curves=True)
        scores.update(found, truth)
        report = scores.report()
        report["images"] = len(rows)
        report["score_threshold"] = spec.score_threshold
        kept = [above(detections, spec.score_threshold) for detections in found]
        misses = [_misses(detections, target) for detections, target in zip(kept, truth,
                                                                              strict=True)]
        table = rows[["path", "relative_path"]].assign(
            boxes=[len(target["labels"]) for target in truth],
            detections=[len(detections["labels"]) for detections in kept],
            misses=misses,
            found=[json.dumps(detector.described(detections)) for detections in kept])
        figures = {
            "boxes": _box_grid(boxed, truth, kept, misses, sizes, table, spec,
                               config.gallery_size),
            "precision_recall": detection.pr_curves_figure(report["pr_curves"]),
        }
        return Evaluation(report, self.test_metrics(report), table, per_class_table(report),
                          figures)

    def test_metrics(self, report: dict) -> dict[str, float]:
        names = ("map", "map50", "map75", "map_small", "map_medium", "map_large", "recall")
        return {f"test_{name}": report[name] for name in names if report.get(name) is not None}

    # --- prediction and serving ----------------------------------------------------------

    def predict(self, state_dict: Mapping[str, torch.Tensor], spec: DetectionSpec,
                label_map: Mapping[str, int], listing: pd.DataFrame, config: InferenceConfig,
                device: torch.device) -> tuple[pd.DataFrame, pd.DataFrame]:
        """One row per detection of every image of a folder listing (``image_id``
        numbers the images in the listing's order, as the COCO results file does); the
        files that do not decode, with why."""
        files = image_files(listing)
        if config.score_threshold is not None:
            spec = DetectionSpec.from_dict(spec.to_dict()
                                           | {"score_threshold": config.score_threshold})
        detector = Detector.from_state_dict(state_dict, spec, device, config.batch_size)
        rows, failures = [], []
        for image_id, (file, found) in enumerate(
                zip(files.itertuples(), detector.predict_each(files["path"]), strict=True), 1):
            if isinstance(found, str):
                failures.append({"path": file.path, "relative_path": file.relative_path,
                                 "reason": found})
                continue
            rows += [{"image_id": image_id, "path": file.path,
                      "relative_path": file.relative_path, **described}
                     for described in detector.described(found)]
        columns = ["image_id", "path", "relative_path", "label", "score", "x_min", "y_min",
                   "x_max", "y_max"]
        return (pd.DataFrame(rows, columns=columns),
                pd.DataFrame(failures, columns=["path", "relative_path", "reason"]))

    def trained_model(self, spec: DetectionSpec, state_dict: Mapping[str, torch.Tensor],
                      label_map: Mapping[str, int]) -> nn.Module:
        return spec.build_model(state_dict)

    def exported(self, model: nn.Module) -> dict[str, nn.Module]:
        """The whole detector as TorchScript; as a torch.export program, the network up to
        its raw outputs (:class:`DetectorNetwork` says why)."""
        return {"torchscript": Detections(model), "exported_program": DetectorNetwork(model)}

    @staticmethod
    def output_difference(reference: Any, candidate: Any) -> float:
        return output_difference(reference, candidate)

    def example_input(self, spec: DetectionSpec, batch: int) -> torch.Tensor:
        return torch.zeros(batch, CHANNELS, spec.image_size, spec.image_size)

    def input_batch(self, model_input: pd.DataFrame, spec: DetectionSpec,
                    data_config: DataConfig, split: str) -> torch.Tensor:
        rows = model_input[model_input["split"] == split]
        return spec.prepare(list(read_boxed(rows, data_config, spec.decode_size)
                                 .images.numpy()))

    def input_example(self, model_input: pd.DataFrame) -> None:
        """The served model takes image files; it makes its example (a blank PNG) itself."""
        return None

    def data_note(self, report: dict, config: DataConfig) -> tuple[str, dict[str, int], str]:
        boxes = sum(report["boxes_per_class"].values())
        return (f"{report['images_used']} images with {boxes} boxes of "
                f"{len(report['boxes_per_class'])} classes", report["images_per_split"],
                f"{len(report['bad_images'])} images set aside")

    def input_note(self, config: DataConfig, report: dict | None) -> str:
        return (f"{config.image_size}x{config.image_size} px, RGB, boxes of "
                f"{len(config.detection.classes)} classes")


# --- reading and checking images with their boxes ------------------------------------


@dataclass(frozen=True)
class Boxed:
    """Decoded images, at the size they are augmented at, with their boxes in those
    pixels, by the content hash of the image."""

    index: dict[str, int]
    images: torch.Tensor  # uint8 (N, 3, size, size)
    boxes: list[torch.Tensor]  # float32 (boxes, 4) each, corners
    labels: list[torch.Tensor]  # int64 (boxes,) each, classes from 1

    def select(self, hashes: Sequence[str]) -> Boxed:
        rows = [self.index[h] for h in hashes]
        return Boxed({h: i for i, h in enumerate(hashes)}, self.images[rows],
                     [self.boxes[i] for i in rows], [self.labels[i] for i in rows])


@dataclass(frozen=True)
class BoxCheck:
    """What reading one image and checking its boxes found."""

    reason: str | None = None
    missing: bool = False
    content_hash: str | None = None
    mode: str | None = None
    size: tuple[int, int] | None = None  # the image's own (width, height)
    image: np.ndarray | None = None  # uint8 (3, size, size)
    boxes: np.ndarray | None = None  # float32 (boxes, 4), in the decoded image's pixels
    labels: np.ndarray | None = None  # int64 (boxes,), classes from 1
    bad_boxes: list[dict[str, Any]] = field(default_factory=list)


def truth_of(boxes: str, classes: Sequence[str]) -> dict[str, torch.Tensor]:
    """An image's boxes (the manifest's JSON, checked) as a target in its own pixels."""
    parsed = json.loads(boxes)
    index = {name: i + 1 for i, name in enumerate(classes)}
    return {"boxes": torch.tensor([box[1:] for box in parsed],
                                  dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor([index[box[0]] for box in parsed], dtype=torch.int64)}


def check_image(path: str, boxes: str, size: int, classes: Sequence[str]) -> BoxCheck:
    """Read an image and check its boxes; what is wrong is described, not raised."""
    try:
        content = images.read_bytes(path)
    except FileNotFoundError:
        return BoxCheck(reason="no file at this path", missing=True)
    try:
        pixels, mode = images.decode(content, size, CHANNELS)
        width, height = images.image_size_of(content)
    except Exception as error:  # PIL fails in many ways on broken files
        return BoxCheck(reason=images.decode_failure(error))
    parsed = json.loads(boxes)
    bad = [{"label": label, "box": corners, "reason": reason}
           for label, *corners in parsed
           if (reason := detection.box_problem(label, corners, width, height, classes))]
    digest = images.content_hash(content)
    if bad:
        return BoxCheck(reason="; ".join(box["reason"] for box in bad), content_hash=digest,
                        bad_boxes=bad)
    scale = np.array([size / width, size / height] * 2, dtype=np.float32)
    index = {name: i + 1 for i, name in enumerate(classes)}
    return BoxCheck(content_hash=digest, mode=mode, size=(width, height), image=pixels,
                    boxes=np.array([corners for _, *corners in parsed],
                                   dtype=np.float32).reshape(-1, 4) * scale,
                    labels=np.array([index[label] for label, *_ in parsed], dtype=np.int64))


def check_images(manifest: pd.DataFrame, config: DataConfig, size: int) -> list[BoxCheck]:
    classes = config.detection.classes
    with ThreadPoolExecutor(CHECK_THREADS) as pool:
        return list(pool.map(lambda row: check_image(row[0], row[1], size, classes),
                             zip(manifest["path"], manifest["boxes"], strict=True)))


def read_boxed(rows: pd.DataFrame, config: DataConfig, size: int | None = None) -> Boxed:
    """The images of ``rows`` (checked before), decoded again with their boxes."""
    checks = check_images(rows, config, size or config.decode_size)
    broken = [(path, check.reason) for path, check in zip(rows["path"], checks, strict=True)
              if check.reason is not None]
    if broken:
        raise data.DataError(f"{len(broken)} images changed since they were checked: "
                             f"{broken[:5]}")
    hashes = rows["content_hash"].tolist()
    return _stacked(hashes, checks).select(hashes)  # row by row, duplicates too


def _stacked(hashes: list[str], checks: Sequence[BoxCheck]) -> Boxed:
    index: dict[str, int] = {}
    kept = []
    for digest, check in zip(hashes, checks, strict=True):
        if digest not in index:
            index[digest] = len(kept)
            kept.append(check)
    return Boxed(index, torch.from_numpy(np.stack([c.image for c in kept])),
                 [torch.from_numpy(c.boxes) for c in kept],
                 [torch.from_numpy(c.labels) for c in kept])


def _prepare_data(manifest: pd.DataFrame, config: DataConfig,
                  on_disk: ImageStore | None) -> PreparedData:
    classes = config.detection.classes
    if not classes:  # the sources' checks list the names their files hold
        raise ParameterError("data.detection.classes is required for data.task "
                             "object_detection: the names of the objects' classes")
    checks = check_images(manifest, config, config.decode_size)
    checked = manifest.assign(
        label="image",  # one stratum: the hash splits every image alike
        content_hash=[c.content_hash for c in checks], reason=[c.reason for c in checks],
        missing=[c.missing for c in checks], mode=[c.mode for c in checks],
        width=[c.size[0] if c.size else None for c in checks],
        height=[c.size[1] if c.size else None for c in checks],
        pixel_sum=[None if c.image is None else images.pixel_sums(c.image)[0] for c in checks],
        pixel_sumsq=[None if c.image is None else images.pixel_sums(c.image)[1]
                     for c in checks],
    )
    bad_boxes = [{"path": path, "relative_path": relative, **box}
                 for path, relative, check in zip(manifest["path"], manifest["relative_path"],
                                                  checks, strict=True)
                 for box in check.bad_boxes]
    usable, bad = data.set_aside_bad_files(checked, config.max_bad_fraction)
    model_input, _, _, rule = data.split_manifest(usable, config.split)
    model_input = model_input.drop(columns=["label"])
    _refuse_empty_splits(model_input, config)
    kept = [check for check in checks if check.reason is None]
    train = usable[model_input["split"] == "train"]
    normalization = data.fitted_normalization(config, train)
    colors = config.detection.colors or [list(rgb) for rgb in detection.palette(len(classes))]
    preprocessing = normalization | {"classes": list(classes), "colors": colors}
    truths = [truth_of(boxes, classes) for boxes in model_input["boxes"]]
    counted = torch.cat([t["labels"] for t in truths]) if truths else torch.zeros(0)
    sizes = [detection.size_of(box) for t in truths for box in t["boxes"].tolist()]
    empty = model_input.loc[[len(t["labels"]) == 0 for t in truths], "relative_path"]
    report = {
        "source": sources.get(config.source).describe(config),
        "images_checked": len(checked),
        "images_used": len(model_input),
        "bad_images": [{"path": row.path, "relative_path": row.relative_path,
                        "reason": row.reason} for row in bad.itertuples()],
        "bad_boxes": bad_boxes,
        "bad_fraction": round(len(bad) / max(len(checked), 1), 6),
        "max_bad_fraction": config.max_bad_fraction,
        "duplicates": int(model_input.duplicated("content_hash").sum()),
        "image_modes": {str(k): int(v) for k, v in
                        checked["mode"].dropna().value_counts().sort_index().items()},
        "boxes_per_class": {name: int((counted == i + 1).sum())
                            for i, name in enumerate(classes)},
        "box_sizes": {size: sizes.count(size) for size in detection.COCO_SIZES},
        "images_without_boxes": {"count": len(empty), "first": empty.head(20).tolist()},
        "images_per_split": {s: int((model_input["split"] == s).sum()) for s in data.SPLITS},
        "split_rule": rule,
    }
    boxed = _stacked(usable["content_hash"].tolist(), kept)
    return PreparedData(model_input, {name: i + 1 for i, name in enumerate(classes)},
                        preprocessing, report, boxed, on_disk)


def _refuse_empty_splits(model_input: pd.DataFrame, config: DataConfig) -> None:
    """A split its fraction asks for but the hash left empty would fail only after
    training, when the test images are evaluated: refused now."""
    counts = model_input["split"].value_counts()
    empty = [split for split, share in config.split.fractions.items()
             if share > 0 and not counts.get(split, 0)]
    if empty:
        raise data.DataError(
            f"the {' and '.join(empty)} split{'s' if len(empty) > 1 else ''} of the "
            f"{len(model_input)} usable images would hold no image under data.split "
            f"{config.split.fractions}: add images, or change data.split.seed or its "
            "fractions")


# --- feeding -------------------------------------------------------------------------------


def box_transform(config: DataConfig, stage: str) -> v2.Transform | None:
    """The stage's ``data.transforms`` on images and boxes together, ending at
    ``image_size``; boxes a crop left without area, or outside, are dropped after."""
    steps = loaders.build_transforms(config.transforms.steps(stage), f"data.transforms.{stage}")
    resized = loaders.image_transform(steps, config.image_size, config.decode_size)
    return None if resized is None else v2.Compose([resized, v2.SanitizeBoundingBoxes()])


class BoxDataset(Dataset):
    """Decoded images with their boxes in memory -> batches of ([0, 1] float images,
    :class:`Targets`); torchvision's detectors normalize their inputs themselves.

    An item is an index, or ``(index, seed)`` to transform the image under that seed, as
    the training sampler gives them (so that a resumed epoch replays its augmentations).
    """

    fully_cached = True  # nothing to decode: no loader workers unless transforms run

    def __init__(self, boxed: Boxed, transform: v2.Transform | None):
        self.boxed, self.transform = boxed, transform

    def __len__(self) -> int:
        return len(self.boxed.images)

    def _sample(self, index: int, seed: int | None) -> tuple[torch.Tensor, dict]:
        image = self.boxed.images[index]
        target = {"boxes": self.boxed.boxes[index], "labels": self.boxed.labels[index]}
        if self.transform is None:
            return image, target
        sample = {"image": tv_tensors.Image(image),
                  "boxes": tv_tensors.BoundingBoxes(target["boxes"], format="XYXY",
                                                    canvas_size=tuple(image.shape[-2:])),
                  "labels": target["labels"]}
        if seed is None:
            sample = self.transform(sample)
        else:
            with loaders.seeded(seed):
                sample = self.transform(sample)
        return (sample["image"].as_subclass(torch.Tensor),
                {"boxes": sample["boxes"].as_subclass(torch.Tensor),
                 "labels": sample["labels"]})

    def __getitems__(self, items: Sequence) -> tuple[torch.Tensor, Targets]:
        samples = [self._sample(*(item if isinstance(item, tuple) else (item, None)))
                   for item in items]
        batch = torch.stack([image for image, _ in samples]).to(torch.float32).div_(255)
        return batch, Targets(target for _, target in samples)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, dict]:
        batch, targets = self.__getitems__([item])
        return batch[0], targets[0]

    @staticmethod
    def collate(batch: tuple[torch.Tensor, Targets]) -> tuple[torch.Tensor, Targets]:
        return batch


# --- evaluation ----------------------------------------------------------------------------


def _misses(found: Mapping[str, torch.Tensor], truth: Mapping[str, torch.Tensor]) -> int:
    """True boxes no detection of their class overlaps by :data:`MATCH_IOU`, each
    detection matching one box, the surest first."""
    missed = 0
    taken = torch.zeros(len(found["labels"]), dtype=torch.bool)
    overlaps = box_iou(truth["boxes"], found["boxes"]) if len(found["labels"]) else None
    for index, label in enumerate(truth["labels"].tolist()):
        if overlaps is None:
            missed += 1
            continue
        candidates = (found["labels"] == label) & ~taken & (overlaps[index] >= MATCH_IOU)
        if not candidates.any():
            missed += 1
            continue
        best = torch.where(candidates, found["scores"], -1.0).argmax()
        taken[best] = True
    return missed


def per_class_table(report: dict) -> pd.DataFrame:
    """One row per class: its AP, recall and true boxes."""
    return pd.DataFrame([{"class": name, **scores}
                         for name, scores in report["per_class"].items()],
                        columns=["class", "ap", "recall", "boxes"])


def _box_grid(boxed: Boxed, truth: list[dict], found: list[dict], misses: list[int],
              sizes: list[tuple[int, int]], table: pd.DataFrame, spec: DetectionSpec,
              size: int) -> Any:
    """The first test images and those with the most missed boxes, with their true and
    predicted boxes (drawn on the decoded image, the boxes scaled to it)."""
    order = sorted(range(len(misses)), key=lambda i: -misses[i])
    worst = [i for i in order if misses[i] > 0][:math.ceil(size / 2)]
    first = [i for i in range(len(misses)) if i not in worst][:size - len(worst)]
    side = spec.decode_size
    rows = []
    for i in first + worst:
        width, height = sizes[i]
        scale = torch.tensor([side / width, side / height] * 2)
        rows.append((f"{'most missed' if i in worst else 'test'}: {table.relative_path[i]}, "
                     f"{misses[i]} of {len(truth[i]['labels'])} missed", boxed.images[i],
                     {**truth[i], "boxes": truth[i]["boxes"] * scale},
                     {**found[i], "boxes": found[i]["boxes"] * scale}))
    return detection.box_grid(rows, spec.classes, spec.palette())
