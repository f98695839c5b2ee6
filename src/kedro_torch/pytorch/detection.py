"""Object detection: a small FCOS that trains from scratch, box checks, COCO metrics,
COCO results and figures.

A box is four corners in its image's own pixels, ``[x_min, y_min, x_max, y_max]``, the
maxima exclusive as COCO's ``x + width``. The model numbers the classes from 1 (0 is
torchvision's background): label ``i`` is ``classes[i - 1]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn
from torchmetrics.detection import MeanAveragePrecision
from torchvision.models.detection import FCOS
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import FeaturePyramidNetwork
from torchvision.utils import draw_bounding_boxes

from kedro_torch.pytorch import distributed, segmentation

# COCO's object sizes, each up to (not including) a box area in pixels.
COCO_SIZES = {"small": 32.0**2, "medium": 96.0**2, "large": math.inf}
# Drawn images are enlarged (nearest neighbour) to about this many pixels on their longer
# side, so that the boxes and their captions of a small image stay readable.
DRAWN_SIZE = 256
COARSEST_STRIDE = 32  # of SmallBackbone's last stage
# The initial logit of SmallFCOS's background class: a probability of 2e-9.
BACKGROUND_LOGIT = -20.0


# --- model --------------------------------------------------------------------------


def _stage(c_in: int, c_out: int) -> nn.Sequential:
    """Halves the image: a 3x3 convolution of stride 2, then one of stride 1."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class SmallBackbone(nn.Module):
    """Five stages that halve the image (widths w, w, 2w, 4w, 4w) and a feature pyramid
    over the last three, of strides 8, 16 and 32, each with ``out_channels`` channels."""

    def __init__(self, width: int = 32, out_channels: int = 64):
        super().__init__()
        widths = [width, width, 2 * width, 4 * width, 4 * width]
        self.stages = nn.ModuleList(
            _stage(c_in, c_out) for c_in, c_out in zip([3, *widths[:-1]], widths, strict=True)
        )
        self.fpn = FeaturePyramidNetwork(widths[2:], out_channels)
        self.out_channels = out_channels  # what FCOS reads to size its head

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        features: dict[str, Tensor] = {}
        for index, stage in enumerate(self.stages):
            x = stage(x)
            if index >= 2:
                features[str(index)] = x
        return self.fpn(features)


class SmallFCOS(FCOS):
    """An anchor-free FCOS detector small enough to train from scratch on a CPU.

    torchvision's detectors expect a pretrained ResNet backbone and images of 800 px;
    with no weights to download and small images, this one has a backbone of its own
    (:class:`SmallBackbone`; about a million parameters in all at ``width`` 32) and works at
    ``min_size`` px: each image is scaled so that its shorter side is ``min_size`` and
    its longer side at most ``max_size`` (by default ``min_size`` too), and its boxes
    are scaled back. On 128-px synthetic shapes it reached an mAP50 of 0.96 in 30 epochs
    of about 3 s each on a CPU.

    The pyramid's levels (strides 8, 16, 32) take objects around 8, 16 and 32 px wide
    at a ``min_size`` of 64, and proportionally larger at larger sizes. ``num_classes``
    counts the background: K classes, labelled 1..K, need ``num_classes`` K + 1.
    ``fpn_channels`` must be a multiple of 32, the groups of the head's GroupNorm.
    ``image_mean`` and ``image_std`` default to ImageNet's, which the images are
    normalised with inside the model.
    """

    def __init__(self, num_classes: int, min_size: int = 128, max_size: int | None = None,
                 image_mean: list[float] | None = None, image_std: list[float] | None = None,
                 width: int = 32, fpn_channels: int = 64, score_thresh: float = 0.05,
                 detections_per_img: int = 100):
        if min_size <= COARSEST_STRIDE:
            raise ValueError(f"min_size (the image size) must exceed {COARSEST_STRIDE} px: the "
                             f"coarsest level sees the image {COARSEST_STRIDE} times smaller, "
                             f"and its GroupNorm needs more than one value; got {min_size}")
        if fpn_channels <= 0 or fpn_channels % 32:
            raise ValueError(f"fpn_channels must be a positive multiple of 32 (the head's "
                             f"GroupNorm has 32 groups), got {fpn_channels}")
        scale = min_size / 64
        anchors = AnchorGenerator(sizes=tuple((size * scale,) for size in (8, 16, 32)),
                                  aspect_ratios=((1.0,),) * 3)
        super().__init__(SmallBackbone(width, fpn_channels), num_classes, min_size=min_size,
                         max_size=max_size or min_size, image_mean=image_mean,
                         image_std=image_std, anchor_generator=anchors,
                         score_thresh=score_thresh, detections_per_img=detections_per_img)
        # The head scores label 0, the background, like any class, and an untrained one
        # detects it as often; starting it near probability 0, where the focal loss
        # leaves it, keeps it out of the detections.
        with torch.no_grad():
            self.head.classification_head.cls_logits.bias[0] = BACKGROUND_LOGIT


# --- boxes --------------------------------------------------------------------------


def box_problem(label: str, box: Sequence[float], width: int, height: int,
                classes: Sequence[str]) -> str | None:
    """Why a box cannot be used, in words for the user; None when it can.

    Exact: a box that reaches one pixel past the image is refused rather than clipped,
    since it most likely means the annotations belong to another image or size."""
    if label not in classes:
        return f"unknown label {label!r} (classes: {', '.join(classes)})"
    shown = "[" + ", ".join(_number(value) for value in box) + "]"
    if len(box) != 4:
        return f"box {shown} needs 4 numbers: x_min, y_min, x_max, y_max"
    try:
        x_min, y_min, x_max, y_max = (float(value) for value in box)
    except (TypeError, ValueError):
        return f"box {shown} has a coordinate that is not a number"
    if not all(math.isfinite(value) for value in (x_min, y_min, x_max, y_max)):
        return f"box {shown} has a coordinate that is not a finite number"
    if x_min < 0 or y_min < 0 or x_max > width or y_max > height:
        return f"box {shown} lies outside the {width}x{height} px image"
    if x_max <= x_min or y_max <= y_min:
        return f"box {shown} has no area"
    return None


def _number(value: object) -> str:
    """A coordinate as written: 40 rather than 40.0."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def size_of(box: Sequence[float]) -> str:
    """The COCO size (see :data:`COCO_SIZES`) of a box, by its area."""
    x_min, y_min, x_max, y_max = box
    area = (x_max - x_min) * (y_max - y_min)
    return next(name for name, upper in COCO_SIZES.items() if area < upper)


# --- metrics ------------------------------------------------------------------------


class BoxScores:
    """COCO's box metrics over a whole split, computed by torchmetrics'
    ``MeanAveragePrecision`` (pycocotools' evaluation).

    Detections and targets are kept on the CPU until :meth:`report`. Under
    torch.distributed, ``report`` first gathers every rank's images in one collective,
    so that each rank reports on the whole split. torchmetrics' own gathering is not
    used: it runs one collective per image and state, which needs every rank to hold as
    many images (the evaluation's shards may differ by one), and takes CPU tensors that
    an NCCL group cannot carry.
    """

    def __init__(self, classes: Sequence[str], curves: bool = False, per_class: bool = True):
        self.classes = list(classes)
        self.curves = curves
        # Each class's AP is one more COCO evaluation of the split: an epoch's validation,
        # which reports the mAP alone, goes without.
        self.per_class = per_class
        self._detections: list[dict[str, Tensor]] = []
        self._targets: list[dict[str, Tensor]] = []

    def update(self, detections: list[dict[str, Tensor]],
               targets: list[dict[str, Tensor]]) -> None:
        """Add a batch: per image, the model's ``boxes``, ``scores`` and ``labels``, and
        the true ``boxes`` and ``labels``."""
        if len(detections) != len(targets):
            raise ValueError(f"{len(detections)} images of detections but {len(targets)} of "
                             "targets")
        for found, true in zip(detections, targets, strict=True):
            self._detections.append({
                "boxes": _cpu(found["boxes"]).float().reshape(-1, 4),
                "scores": _cpu(found["scores"]).float().reshape(-1),
                "labels": _cpu(found["labels"]).long().reshape(-1),
            })
            self._targets.append({
                "boxes": _cpu(true["boxes"]).float().reshape(-1, 4),
                "labels": _cpu(true["labels"]).long().reshape(-1),
            })

    def report(self) -> dict:
        """The metrics as plain numbers (JSON as they are).

        ``map`` averages AP over IoU 0.5 to 0.95, ``map50`` and ``map75`` take one IoU;
        ``map_small``/``_medium``/``_large`` score the boxes of each COCO size;
        ``mar_N`` is recall with N detections per image, ``recall`` that with 100.
        A score with no true box to measure (torchmetrics' -1) is None: the mAP of a
        size no box has, the AP and recall of a class absent from the split, which
        ``per_class`` still lists, with its count of true ``boxes``. With ``curves``,
        ``pr_curves`` holds per class with true boxes COCO's (interpolated) precision
        at 101 recall points, at IoU 0.5 with up to 100 detections per image.
        """
        detections, targets = _all_ranks(self._detections), _all_ranks(self._targets)
        result = self._compute(detections, targets) if targets else {}
        report: dict = {
            name: _score(result.get(key))
            for name, key in (("map", "map"), ("map50", "map_50"), ("map75", "map_75"),
                              ("map_small", "map_small"), ("map_medium", "map_medium"),
                              ("map_large", "map_large"), ("mar_1", "mar_1"),
                              ("mar_10", "mar_10"), ("mar_100", "mar_100"),
                              ("recall", "mar_100"))
        }
        counts = torch.zeros(len(self.classes) + 1, dtype=torch.long)
        for target in targets:
            labels = target["labels"]
            counts += torch.bincount(labels[(labels > 0) & (labels <= len(self.classes))],
                                     minlength=len(counts))
        scored = _class_scores(result) if self.per_class else {}
        report["per_class"] = {
            name: {**scored.get(label, {"ap": None, "recall": None}),
                   "boxes": int(counts[label])}
            for label, name in enumerate(self.classes, start=1)
        }
        if self.curves:
            report["pr_curves"] = _pr_curves(result, self.classes)
        return report

    def _compute(self, detections: list[dict[str, Tensor]],
                 targets: list[dict[str, Tensor]]) -> dict:
        metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox",
                                      class_metrics=self.per_class,
                                      extended_summary=self.curves, backend="pycocotools",
                                      sync_on_compute=False)
        metric.update(detections, targets)
        return metric.compute()


def _cpu(tensor: Tensor) -> Tensor:
    return torch.as_tensor(tensor).detach().cpu()


def _all_ranks(items: list) -> list:
    """Every rank's items, rank 0's first, on every rank; ``items`` in one process."""
    if not distributed.is_distributed() or distributed.world_size() == 1:
        return items
    gathered: list = [None] * distributed.world_size()
    torch.distributed.all_gather_object(gathered, items)
    return [item for part in gathered for item in part]


def _score(value: Tensor | float | None) -> float | None:
    """A plain float; None for torchmetrics' -1 (nothing to score)."""
    if value is None:
        return None
    value = float(value)
    return None if value < 0 else value


def _class_scores(result: dict) -> dict[int, dict[str, float | None]]:
    """AP and recall by label, for the labels torchmetrics saw (true or detected)."""
    if not result:
        return {}
    columns = (result[key].reshape(-1).tolist()
               for key in ("classes", "map_per_class", "mar_100_per_class"))
    return {label: {"ap": _score(ap), "recall": _score(recall)}
            for label, ap, recall in zip(*columns, strict=True)}


def _pr_curves(result: dict, classes: list[str]) -> dict:
    """Per class with true boxes: COCO's precision at its 101 recall points, at IoU 0.5,
    over all areas, with up to 100 detections per image."""
    if not result:
        return {}
    # [IoU thresholds 0.5, 0.55, .., 0.95; recall points; classes present; areas (all
    # first); detections per image 1, 10, 100]
    precision = result["precision"]
    points = np.linspace(0.0, 1.0, precision.shape[1]).round(2).tolist()
    curves = {}
    for index, label in enumerate(result["classes"].reshape(-1).tolist()):
        values = precision[0, :, index, 0, -1]
        if 1 <= label <= len(classes) and bool((values >= 0).all()):
            curves[classes[label - 1]] = {"recall": points, "precision": values.tolist()}
    return curves


# --- figures ------------------------------------------------------------------------


def palette(count: int) -> list[tuple[int, int, int]]:
    """A colour for each of ``count`` classes: PASCAL VOC's colours of labels 1 to
    ``count``, without the background's black, which would not show on dark images."""
    return segmentation.palette(count + 1)[1:]


def box_grid(rows: Sequence[tuple[str, Tensor, dict, dict]], classes: Sequence[str],
             colors: Sequence[Sequence[int]]) -> Figure:
    """One row per image: its true boxes beside the predicted ones, labelled with the
    class (and the prediction's score), class i drawn in ``colors[i]``.

    Each row is (title, image uint8 [C, H, W] with 1 or 3 channels, truth with
    ``boxes`` and ``labels``, prediction with ``boxes``, ``labels`` and ``scores``); the
    caller keeps the predictions worth showing (those above a score threshold). Small
    images are enlarged without smoothing so that boxes and captions read well.
    """
    figure = Figure(figsize=(7.0, 3.4 * max(len(rows), 1) + 0.3), layout="constrained")
    if not rows:
        figure.text(0.5, 0.5, "no images", ha="center", va="center")
        return figure
    grid = figure.subplots(len(rows), 2, squeeze=False)
    for panels, (title, image, truth, predicted) in zip(grid, rows, strict=True):
        image = image.cpu()
        factor = max(1, DRAWN_SIZE // max(image.shape[-2:]))
        image = image.expand(3, -1, -1).repeat_interleave(factor, 1).repeat_interleave(factor, 2)
        true_labels = _cpu(truth["labels"]).tolist()
        shown = [
            (_draw(image, truth["boxes"], true_labels, factor, classes, colors,
                   [_class_name(label, classes) for label in true_labels]),
             f"truth: {_boxes(len(true_labels))}"),
        ]
        labels = _cpu(predicted["labels"]).tolist()
        captions = [f"{_class_name(label, classes)} {score:.2f}"
                    for label, score in zip(labels, _cpu(predicted["scores"]).tolist(),
                                            strict=True)]
        shown.append((_draw(image, predicted["boxes"], labels, factor, classes, colors,
                            captions), f"prediction: {_boxes(len(labels))}"))
        for axes, (pixels, caption) in zip(panels, shown, strict=True):
            axes.imshow(pixels.permute(1, 2, 0).numpy())
            axes.set_xlabel(caption, fontsize=8)
            axes.set_xticks([])
            axes.set_yticks([])
        panels[0].set_title(title, loc="left", fontsize=9)
    figure.suptitle("True and predicted boxes")
    return figure


def _boxes(count: int) -> str:
    return f"{count} box" if count == 1 else f"{count} boxes"


def _class_name(label: int, classes: Sequence[str]) -> str:
    return classes[label - 1] if 1 <= label <= len(classes) else f"label {label}"


def _draw(image: Tensor, boxes: Tensor, labels: list[int], factor: int,
          classes: Sequence[str], colors: Sequence[Sequence[int]],
          captions: list[str]) -> Tensor:
    """``image`` (already enlarged by ``factor``) with the boxes and their captions, each
    on its class's colour in black or white, whichever reads better."""
    if not labels:
        return image
    colours = [tuple(int(v) for v in colors[label - 1]) if 1 <= label <= len(classes)
               else (255, 255, 255) for label in labels]
    text = ["black" if 0.299 * r + 0.587 * g + 0.114 * b > 128 else "white"
            for r, g, b in colours]
    return draw_bounding_boxes(image, _cpu(boxes).float().reshape(-1, 4) * factor,
                               labels=captions, colors=colours, width=2, label_colors=text,
                               label_background_colors=colours, fill_labels=True)


def pr_curves_figure(curves: dict) -> Figure:
    """Each class's precision against recall at IoU 0.5 (as :meth:`BoxScores.report`
    gives them), its AP50, the mean precision over the curve's points, in the legend."""
    figure = Figure(figsize=(6, 5), layout="constrained")
    axes = figure.subplots()
    for name, curve in curves.items():
        axes.plot(curve["recall"], curve["precision"],
                  label=f"{name} (AP50 {np.mean(curve['precision']):.3f})")
    if curves:
        axes.legend(loc="lower left")
    else:
        axes.text(0.5, 0.5, "no class has true boxes", ha="center", va="center")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.05)
    axes.set_xlabel("recall")
    axes.set_ylabel("precision")
    axes.grid(alpha=0.3)
    axes.set_title("Precision-recall per class, IoU 0.5")
    return figure
