"""Semantic segmentation: pixel metrics, Dice losses, a small U-Net, colours and masks.

A mask holds one class index per pixel; ``ignore_index`` (255 by default, as in
PASCAL VOC) marks pixels that count for nothing: not in the metrics, not in the
losses, not drawn.
"""

from __future__ import annotations

import io

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from PIL import Image
from torch import nn
from torchvision.utils import draw_segmentation_masks

# PASCAL VOC's colour for its "void" index 255: light enough to read as "not a class".
VOID_COLOUR = (224, 224, 192)
# The modes of 16- and 32-bit single-channel PNGs, whose values may be class indices.
WIDE_GREY_MODES = ("I", "I;16", "I;16B", "I;16L")


# --- metrics ------------------------------------------------------------------------


def confusion_sums(predictions: torch.Tensor, targets: torch.Tensor, num_classes: int,
                   ignore_index: int) -> torch.Tensor:
    """Pixel counts, true classes as rows and predicted classes as columns, leaving out
    pixels whose target is ``ignore_index`` or no class (or whose prediction is none).

    Summed per batch, then across batches and ranks, this is all the mean IoU needs.
    Pixels that count for nothing go to one extra bin that is dropped, and the counts
    are added into a buffer of fixed size: masking them out, or ``torch.bincount``
    (which reads the largest value back to size its output), would make the host
    wait for the device at every step.
    """
    targets, predictions = targets.long().flatten(), predictions.long().flatten()
    counted = ((targets >= 0) & (targets < num_classes) & (targets != ignore_index)
               & (predictions >= 0) & (predictions < num_classes))
    cells = num_classes * num_classes
    index = torch.where(counted, targets * num_classes + predictions, cells)
    counts = torch.zeros(cells + 1, dtype=torch.long, device=index.device)
    counts.index_add_(0, index, torch.ones_like(index))
    return counts[:cells].reshape(num_classes, num_classes)


def segmentation_report(confusion: torch.Tensor | np.ndarray, class_names: list[str]) -> dict:
    """Pixel accuracy, mean IoU and mean Dice, per-class IoU, Dice and pixel counts,
    and the confusion matrix in counts and normalised by true class.

    A class neither in the targets nor in the predictions has no IoU (0/0): it is NaN
    in ``per_class`` and left out of the means, so a test split without some class is
    neither punished nor rewarded for it. A class that is predicted but never true has
    an IoU of 0 and does count.
    """
    matrix = (confusion.detach().cpu() if isinstance(confusion, torch.Tensor)
              else torch.as_tensor(np.asarray(confusion))).double()
    hits = matrix.diag()
    true = matrix.sum(dim=1)
    predicted = matrix.sum(dim=0)
    union = true + predicted - hits
    seen = union > 0
    iou = torch.where(seen, hits / union.clamp(min=1), torch.nan)
    dice = torch.where(seen, 2 * hits / (true + predicted).clamp(min=1), torch.nan)
    total = matrix.sum().item()
    return {
        "pixel_accuracy": hits.sum().item() / total if total else 0.0,
        "miou": iou[seen].mean().item() if seen.any() else 0.0,
        "mean_dice": dice[seen].mean().item() if seen.any() else 0.0,
        "per_class": {
            name: {
                "iou": iou[i].item(),
                "dice": dice[i].item(),
                "pixel_share": true[i].item() / total if total else 0.0,
                "pixels": int(true[i].item()),
            }
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": matrix.long().tolist(),
        # Row i: where the pixels of class i went; the diagonal is each class's recall.
        "confusion_matrix_normalized": (matrix / true.clamp(min=1)[:, None]).tolist(),
    }


def image_ious(predictions: torch.Tensor, targets: torch.Tensor, num_classes: int,
               ignore_index: int) -> torch.Tensor:
    """Each image's mean IoU over the classes in its target or its prediction, so that
    the worst images can be picked; NaN for an image with no pixel that counts (which
    ascending sorts put last)."""
    targets, predictions = targets.flatten(1), predictions.flatten(1)
    counted = targets != ignore_index
    total = torch.zeros(len(targets), dtype=torch.float64, device=targets.device)
    classes = torch.zeros_like(total)
    for index in range(num_classes):
        true = (targets == index) & counted
        predicted = (predictions == index) & counted
        union = (true | predicted).sum(dim=1)
        seen = union > 0
        total += torch.where(seen, (true & predicted).sum(dim=1) / union.clamp(min=1), 0.0)
        classes += seen
    return (total / classes).float()


# --- losses -------------------------------------------------------------------------


class DiceLoss(nn.modules.loss._Loss):
    """1 - the soft Dice coefficient of each class, averaged over the classes.

    Dice scores a class by its overlap with the truth relative to both their sizes,
    so a small class weighs as much as the background, where cross-entropy is
    ruled by the pixels of the largest classes. Overlaps are summed over the whole
    batch; ``smooth`` keeps a class absent from both batch and prediction at a
    loss of 0 rather than 0/0. ``weight`` weighs the classes in the average.
    """

    def __init__(self, ignore_index: int = 255, smooth: float = 1.0,
                 weight: torch.Tensor | None = None):
        super().__init__()
        self.ignore_index = ignore_index
        self.smooth = smooth
        self.register_buffer("weight", _class_weights(weight))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        counted = (target != self.ignore_index).unsqueeze(1)
        probabilities = logits.softmax(dim=1, dtype=torch.float32) * counted
        # A comparison rather than F.one_hot, which refuses index 255: an ignored
        # pixel is simply in no class.
        classes = torch.arange(logits.shape[1], device=target.device).view(
            1, -1, *[1] * (target.ndim - 1))
        truth = (target.unsqueeze(1) == classes).float()
        dims = (0, *range(2, logits.ndim))
        overlap = (probabilities * truth).sum(dims)
        sizes = probabilities.sum(dims) + truth.sum(dims)
        loss = 1 - (2 * overlap + self.smooth) / (sizes + self.smooth)
        if self.weight is None:
            return loss.mean()
        return (loss * self.weight).sum() / self.weight.sum()


class DiceCrossEntropyLoss(nn.modules.loss._Loss):
    """Cross-entropy plus ``dice_weight`` times :class:`DiceLoss`.

    Cross-entropy gives every pixel a steady gradient from the first step; Dice
    keeps small classes from drowning in the background. ``weight`` (class weights,
    ``class_weights: balanced`` included) goes to the cross-entropy only: Dice
    already gives every class the same say.
    """

    def __init__(self, ignore_index: int = 255, weight: torch.Tensor | None = None,
                 dice_weight: float = 1.0, smooth: float = 1.0):
        super().__init__()
        self.cross_entropy = nn.CrossEntropyLoss(weight=_class_weights(weight),
                                                 ignore_index=ignore_index)
        self.dice = DiceLoss(ignore_index=ignore_index, smooth=smooth)
        self.dice_weight = dice_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.cross_entropy(logits, target) + self.dice_weight * self.dice(logits, target)


def _class_weights(weight: torch.Tensor | None) -> torch.Tensor | None:
    """As a float tensor: a list from the YAML's kwargs works too."""
    return None if weight is None else torch.as_tensor(weight, dtype=torch.float32)


# --- model --------------------------------------------------------------------------


def _double_conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """A small U-Net: ``depth`` halvings of the image with twice the channels each time,
    and the way back up, where each level joins the features kept from the way down.

    Images of any size work: they are padded (edge pixels repeated) to a multiple of
    ``2**depth`` and the logits cropped back. Upsampling is a transposed convolution,
    which has a deterministic backward pass on GPUs (bilinear interpolation has not).
    """

    def __init__(self, num_classes: int, in_channels: int = 3, width: int = 16, depth: int = 3,
                 dropout: float = 0.0):
        super().__init__()
        channels = [width * 2**level for level in range(depth + 1)]
        inputs = [in_channels, *channels[:-1]]
        self.multiple = 2**depth
        self.encoders = nn.ModuleList(
            _double_conv(inputs[level], channels[level]) for level in range(depth)
        )
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = _double_conv(inputs[depth], channels[depth])
        self.upsamplers = nn.ModuleList(
            nn.ConvTranspose2d(channels[level + 1], channels[level], 2, stride=2)
            for level in reversed(range(depth))
        )
        self.decoders = nn.ModuleList(
            _double_conv(2 * channels[level], channels[level]) for level in reversed(range(depth))
        )
        self.dropout = nn.Dropout2d(dropout)
        self.head = nn.Conv2d(width, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2], x.shape[-1]
        pad_height, pad_width = -height % self.multiple, -width % self.multiple
        if pad_height or pad_width:
            x = F.pad(x, [0, pad_width, 0, pad_height], mode="replicate")
        skips: list[torch.Tensor] = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for upsample, decoder in zip(self.upsamplers, self.decoders):  # noqa: B905 (TorchScript)
            x = decoder(torch.cat([upsample(x), skips.pop()], dim=1))
        return self.head(self.dropout(x))[..., :height, :width]


# --- colours and masks --------------------------------------------------------------


def palette(count: int) -> list[tuple[int, int, int]]:
    """``count`` distinct colours: PASCAL VOC's colour map, whose first 21 are VOC's
    classes (background black).

    VOC spreads the bits of the class index over the three channels: bits 0, 1, 2
    go to the highest bit of red, green, blue, bits 3, 4, 5 to the next one down,
    and so on, so neighbouring indices get very different colours.
    """
    colours = []
    for index in range(count):
        channels = [0, 0, 0]
        bits = index
        for shift in range(7, -1, -1):
            for channel in range(3):
                channels[channel] |= ((bits >> channel) & 1) << shift
            bits >>= 3
        colours.append((channels[0], channels[1], channels[2]))
    return colours


def overlay_grid(rows: list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]],
                 colors: list[tuple[int, int, int]], ignore_index: int) -> Figure:
    """One row per image: the image, its true mask over it, the predicted mask over it.

    Each row is (title, image uint8 [C, H, W] with 1 or 3 channels, true mask [H, W],
    predicted mask [H, W]); class i is drawn in ``colors[i]`` at half opacity, and
    ``ignore_index`` pixels are left as they are.
    """
    figure = Figure(figsize=(7.0, 2.5 * max(len(rows), 1) + 0.3), layout="constrained")
    if not rows:
        figure.text(0.5, 0.5, "no images", ha="center", va="center")
        return figure
    grid = figure.subplots(len(rows), 3, squeeze=False)
    classes = torch.arange(len(colors)).view(-1, 1, 1)
    for panels, (title, image, truth, predicted) in zip(grid, rows, strict=True):
        image = image.cpu()
        if image.shape[0] == 1:
            image = image.expand(3, -1, -1)
        shown = [image]
        for mask in (truth, predicted):
            # One boolean mask per class; ignored pixels are in none of them.
            masks = mask.cpu().long().unsqueeze(0) == classes
            shown.append(draw_segmentation_masks(image, masks, alpha=0.5, colors=colors))
        for axes, pixels, caption in zip(panels, shown, ("image", "truth", "prediction"),
                                         strict=True):
            axes.imshow(pixels.permute(1, 2, 0).numpy())
            axes.set_xlabel(caption, fontsize=8)
            axes.set_xticks([])
            axes.set_yticks([])
        panels[0].set_title(title, loc="left", fontsize=9)
    figure.suptitle(f"True and predicted masks (pixels marked {ignore_index} not drawn)")
    return figure


def mask_png(mask: np.ndarray, colors: list[tuple[int, int, int]] | None = None) -> bytes:
    """A uint8 [H, W] mask as PNG: a palette image whose pixels are the class indices
    and whose colours are ``colors`` (as VOC stores its masks, readable by eye and by
    program alike), or without colours a grey image of the indices."""
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.dtype != np.uint8:
        raise ValueError(f"a mask is a uint8 array of shape (H, W); got {mask.dtype} of shape "
                         f"{mask.shape}")
    image = Image.fromarray(mask)  # "L"; a palette makes it "P", the pixels unchanged
    if colors is not None:
        entries = [*colors[:256], *palette(256)[len(colors):]]
        if len(colors) < 256:
            entries[255] = VOID_COLOUR
        image.putpalette([value for colour in entries for value in colour])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def read_mask(data: bytes) -> np.ndarray:
    """PNG (or any image file) bytes as a uint8 [H, W] array of class indices.

    A palette image gives its indices, whatever its colours; a grey one its values.
    A colour image is refused: its classes would have to be looked up by colour.
    """
    with Image.open(io.BytesIO(data)) as image:
        mode = image.mode
        if mode in ("P", "L"):
            return np.array(image, dtype=np.uint8)
        if mode in WIDE_GREY_MODES:
            values = np.array(image).astype(np.int64)
            if values.size and (values.min() < 0 or values.max() > 255):
                raise ValueError(f"mask image of mode {mode!r} has values from {values.min()} "
                                 f"to {values.max()}; class indices must lie in 0..255")
            return values.astype(np.uint8)
    if mode in ("RGB", "RGBA"):
        raise ValueError(f"mask image is {mode!r}: an RGB mask needs colours to tell its "
                         "classes apart; save masks as palette ('P') or grey ('L') images of "
                         "class indices")
    raise ValueError(f"mask image of mode {mode!r} cannot hold class indices; save masks as "
                     "palette ('P') or grey ('L') images")
