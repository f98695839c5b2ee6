"""Segmentation's pieces: pixel metrics, Dice losses, the U-Net, colours and masks."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from PIL import Image

from kedro_torch.pytorch import models, optimizers
from kedro_torch.pytorch.export import to_torchscript
from kedro_torch.pytorch.metrics import confusion_matrix
from kedro_torch.pytorch.segmentation import (
    VOID_COLOUR,
    DiceCrossEntropyLoss,
    DiceLoss,
    UNet,
    confusion_sums,
    image_ious,
    mask_png,
    overlay_grid,
    palette,
    read_mask,
    segmentation_report,
)

IGNORE = 255

pytestmark = pytest.mark.usefixtures("one_thread")


# --- metrics ------------------------------------------------------------------------


def test_confusion_sums_counts_pixels_leaving_out_ignored_and_unknown_targets():
    targets = torch.tensor([[[0, 0, 1], [2, IGNORE, 5]],
                            [[1, 1, 1], [2, 2, -1]]])
    predictions = torch.tensor([[[0, 1, 1], [2, 0, 2]],
                                [[1, 2, 1], [2, 2, 0]]])
    matrix = confusion_sums(predictions, targets, num_classes=3, ignore_index=IGNORE)
    assert matrix.dtype == torch.long
    assert matrix.tolist() == [[1, 1, 0],
                               [0, 3, 1],
                               [0, 0, 3]]


def test_confusion_sums_agree_with_the_classification_confusion_matrix():
    generator = torch.Generator().manual_seed(0)
    targets = torch.randint(0, 4, (3, 9, 7), generator=generator)
    targets[:, :2] = IGNORE
    predictions = torch.randint(0, 4, (3, 9, 7), generator=generator)
    counted = targets != IGNORE
    expected = confusion_matrix(targets[counted], predictions[counted], 4)
    assert torch.equal(confusion_sums(predictions, targets, 4, IGNORE), expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_confusion_sums_do_not_make_the_host_wait_for_the_gpu():
    targets = torch.randint(0, 3, (2, 8, 8), device="cuda")
    predictions = torch.randint(0, 3, (2, 8, 8), device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        matrix = confusion_sums(predictions, targets, 3, IGNORE)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert matrix.sum().item() == 128


def test_report_on_a_known_matrix_leaves_absent_classes_out_of_the_means():
    matrix = torch.tensor([[3, 1, 0, 0],
                           [0, 2, 0, 0],
                           [2, 0, 0, 0],
                           [0, 0, 0, 0]])  # class d: neither true nor predicted
    report = segmentation_report(matrix, ["a", "b", "c", "d"])
    per_class = report["per_class"]
    assert per_class["a"]["iou"] == pytest.approx(3 / 6)  # 3 hits, 4 true + 5 predicted - 3
    assert per_class["a"]["dice"] == pytest.approx(6 / 9)
    assert per_class["b"]["iou"] == pytest.approx(2 / 3)
    assert per_class["b"]["dice"] == pytest.approx(4 / 5)
    assert per_class["c"]["iou"] == 0.0  # never predicted: counts, as a miss
    assert math.isnan(per_class["d"]["iou"]) and math.isnan(per_class["d"]["dice"])
    assert report["miou"] == pytest.approx((1 / 2 + 2 / 3 + 0) / 3)
    assert report["mean_dice"] == pytest.approx((2 / 3 + 4 / 5 + 0) / 3)
    assert report["pixel_accuracy"] == pytest.approx(5 / 8)
    assert per_class["a"]["pixel_share"] == pytest.approx(4 / 8)
    assert per_class["c"]["pixels"] == 2 and isinstance(per_class["c"]["pixels"], int)
    assert report["confusion_matrix"] == matrix.tolist()
    assert report["confusion_matrix_normalized"][0] == pytest.approx([0.75, 0.25, 0, 0])
    assert report["confusion_matrix_normalized"][3] == [0.0, 0.0, 0.0, 0.0]
    json.dumps(report)  # plain Python values only


def test_report_takes_a_numpy_matrix():
    report = segmentation_report(np.array([[2, 0], [0, 2]]), ["a", "b"])
    assert report["miou"] == 1.0 and report["pixel_accuracy"] == 1.0


def test_image_ious_average_the_classes_each_image_shows():
    targets = torch.tensor([[[0, 0], [1, 1]],
                            [[1, 1], [IGNORE, IGNORE]],
                            [[IGNORE, IGNORE], [IGNORE, IGNORE]]])
    predictions = torch.tensor([[[0, 0], [1, 0]],
                                [[1, 1], [0, 0]],  # class 0 only where pixels are ignored
                                [[0, 1], [0, 1]]])
    ious = image_ious(predictions, targets, num_classes=2, ignore_index=IGNORE)
    assert ious.shape == (3,)
    assert ious[0].item() == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert ious[1].item() == pytest.approx(1.0)
    assert math.isnan(ious[2].item())  # no pixel counts
    assert ious.argsort()[0].item() == 0  # the worst image comes first, the empty one last


# --- losses -------------------------------------------------------------------------


def _targets(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 4, (2, 8, 8), generator=torch.Generator().manual_seed(seed))


def test_dice_loss_is_zero_for_certain_correct_logits():
    target = _targets()
    logits = 30.0 * F.one_hot(target, 4).permute(0, 3, 1, 2).float()
    assert DiceLoss()(logits, target).item() == pytest.approx(0.0, abs=1e-5)


def test_dice_loss_is_positive_for_wrong_logits_and_has_gradients():
    target = _targets()
    logits = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1),
                         requires_grad=True)
    loss = DiceLoss()(logits, target)
    assert loss.item() > 0.1
    loss.backward()
    assert logits.grad.abs().sum() > 0


def test_dice_loss_ignores_ignored_pixels():
    target = _targets()
    target[:, :3] = IGNORE
    logits = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1),
                         requires_grad=True)
    loss = DiceLoss(ignore_index=IGNORE)(logits, target)
    changed = logits.detach().clone()
    changed[:, :, :3] = 100.0 * torch.randn(2, 4, 3, 8)
    assert DiceLoss()(changed, target).item() == pytest.approx(loss.item())
    loss.backward()
    assert logits.grad[:, :, :3].abs().sum() == 0
    assert logits.grad[:, :, 3:].abs().sum() > 0


def test_dice_loss_weighs_classes():
    target = _targets()
    logits = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    assert DiceLoss(weight=torch.ones(4))(logits, target).item() == pytest.approx(
        DiceLoss()(logits, target).item())
    first = logits.softmax(dim=1)[:, 0]
    truth = (target == 0).float()
    first_class = 1 - (2 * (first * truth).sum() + 1) / (first.sum() + truth.sum() + 1)
    only_first = DiceLoss(weight=[1.0, 0.0, 0.0, 0.0])(logits, target)  # a list, as from YAML
    assert only_first.item() == pytest.approx(first_class.item())


def test_dice_cross_entropy_is_their_sum():
    target = _targets()
    target[0, 0] = IGNORE
    logits = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    weight = torch.tensor([1.0, 2.0, 0.5, 1.0])
    loss = DiceCrossEntropyLoss(weight=weight, dice_weight=0.5)(logits, target)
    expected = (F.cross_entropy(logits, target, weight=weight, ignore_index=IGNORE)
                + 0.5 * DiceLoss()(logits, target))
    assert loss.item() == pytest.approx(expected.item())


# --- model --------------------------------------------------------------------------


@pytest.mark.parametrize(("height", "width"), [(64, 64), (37, 45)])
def test_unet_gives_logits_at_the_input_size(height, width):
    model = UNet(num_classes=5, in_channels=3, width=4).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 3, height, width))
    assert logits.shape == (2, 5, height, width)


def test_unet_overfits_one_tiny_batch():
    torch.manual_seed(0)
    images = torch.randn(4, 3, 16, 16)
    masks = images.argmax(dim=1)  # each pixel's brightest channel
    model = UNet(num_classes=3, width=8, depth=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss_function = DiceCrossEntropyLoss()
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        loss = loss_function(model(images), masks)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]


def test_unet_exports_with_a_dynamic_batch_and_scripts():
    torch.manual_seed(0)
    model = UNet(num_classes=4, width=4).eval()
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(model, (torch.randn(2, 3, 32, 32),),
                                  dynamic_shapes=({0: batch},))
    with torch.no_grad():
        for size in (1, 3):
            images = torch.randn(size, 3, 32, 32)
            torch.testing.assert_close(program.module()(images), model(images))
        odd = torch.randn(2, 3, 37, 45)
        torch.testing.assert_close(to_torchscript(model)(odd), model(odd))


# --- colours and masks --------------------------------------------------------------


def test_palette_is_pascal_vocs():
    colours = palette(256)
    assert colours[:4] == [(0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0)]
    assert colours[20] == (0, 64, 128)  # VOC's last class, tvmonitor
    assert colours[255] == VOID_COLOUR
    assert len(set(colours)) == 256


def test_grey_mask_round_trip():
    mask = np.array([[0, 1, 2], [3, IGNORE, 0]], dtype=np.uint8)
    data = mask_png(mask)
    assert Image.open(io.BytesIO(data)).mode == "L"
    np.testing.assert_array_equal(read_mask(data), mask)


def test_palette_mask_round_trip_keeps_indices_and_colours():
    mask = np.array([[0, 1, 2], [2, IGNORE, 0]], dtype=np.uint8)
    colours = [(10, 20, 30), (40, 50, 60), (70, 80, 90)]
    data = mask_png(mask, colours)
    image = Image.open(io.BytesIO(data))
    assert image.mode == "P"
    assert image.convert("RGB").getpixel((1, 0)) == colours[1]
    assert image.convert("RGB").getpixel((1, 1)) == VOID_COLOUR
    np.testing.assert_array_equal(read_mask(data), mask)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_read_mask_refuses_colour_images():
    with pytest.raises(ValueError, match=r"'RGB'.*needs colours"):
        read_mask(_png(Image.new("RGB", (4, 3))))


def test_read_mask_takes_16_bit_indices_that_fit_a_byte():
    values = np.array([[0, 7], [255, 1]], dtype=np.uint16)
    np.testing.assert_array_equal(read_mask(_png(Image.fromarray(values))), values)
    with pytest.raises(ValueError, match=r"0\.\.255"):
        read_mask(_png(Image.fromarray(np.array([[0, 300]], dtype=np.uint16))))


def test_overlay_grid_draws_three_panels_per_row_and_leaves_ignored_pixels():
    grey = torch.full((1, 6, 5), 100, dtype=torch.uint8)
    colour = torch.full((3, 6, 5), 50, dtype=torch.uint8)
    truth = torch.zeros(6, 5, dtype=torch.long)
    truth[0, 0] = IGNORE
    truth[1:, :] = 1
    predicted = torch.ones(6, 5, dtype=torch.long)
    figure = overlay_grid([("grey", grey, truth, predicted), ("colour", colour, truth, truth)],
                          palette(2), IGNORE)
    assert isinstance(figure, Figure)
    assert len(figure.axes) == 6
    truth_panel = np.asarray(figure.axes[1].images[0].get_array())
    assert truth_panel[0, 0].tolist() == [100, 100, 100]  # ignored: the image as it is
    assert truth_panel[2, 2].tolist() == [114, 50, 50]  # half (128, 0, 0) over grey 100


# --- registration -------------------------------------------------------------------


def test_losses_and_model_resolve_by_name():
    assert optimizers.resolve("dicecrossentropyloss", optimizers.loss_classes(),
                              "training.loss.name") is DiceCrossEntropyLoss
    assert optimizers.loss_classes()["DiceLoss"] is DiceLoss
    model = models.build("unet", {"num_classes": 4, "in_channels": 3}, {})
    assert isinstance(model, UNet)
    assert model.head.out_channels == 4
