"""Detection's pieces: the small FCOS, box checks and sizes, COCO metrics (in one process
and over two Gloo ranks), COCO results and the figures."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from matplotlib.figure import Figure

from kedro_torch.pytorch import models, segmentation
from kedro_torch.pytorch.detection import (
    BoxScores,
    SmallFCOS,
    box_grid,
    box_problem,
    palette,
    pr_curves_figure,
    size_of,
)
from kedro_torch.pytorch.export import to_torchscript
from tests.pytorch.test_distributed import run_ranks

pytestmark = pytest.mark.usefixtures("one_thread")

CLASSES = ["circle", "square", "triangle"]


def truth(boxes: list[list[float]], labels: list[int]) -> dict[str, torch.Tensor]:
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.long)}


def found(boxes: list[list[float]], labels: list[int],
          scores: list[float]) -> dict[str, torch.Tensor]:
    return {**truth(boxes, labels), "scores": torch.tensor(scores, dtype=torch.float32)}


def png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


# --- the model ----------------------------------------------------------------------


def shapes() -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """Two 48-px images: a bright square on one, a bright bar on the other."""
    images = torch.full((2, 3, 48, 48), 0.2)
    images[0, :, 8:24, 8:24] = 0.9
    images[1, :, 20:44, 10:30] = 0.9
    return images, [truth([[8, 8, 24, 24]], [1]), truth([[10, 20, 30, 44]], [2])]


def small_model() -> SmallFCOS:
    torch.manual_seed(0)
    return SmallFCOS(num_classes=3, min_size=64, width=8, fpn_channels=32)


def test_small_fcos_trains_from_scratch_its_losses_falling():
    model = small_model()
    images, targets = shapes()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    totals = []
    for _ in range(8):
        losses = model(list(images), targets)
        assert set(losses) == {"classification", "bbox_regression", "bbox_ctrness"}
        loss = sum(losses.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        totals.append(loss.item())
    assert all(torch.isfinite(torch.tensor(totals)))
    assert totals[-1] < 0.7 * totals[0]


def test_an_image_without_boxes_trains_too():
    model = small_model()
    images, targets = shapes()
    losses = model(list(images), [targets[0], truth([], [])])
    sum(losses.values()).backward()
    assert all(torch.isfinite(loss) for loss in losses.values())


@pytest.mark.parametrize("sizes", [[(48, 48)], [(30, 70), (100, 50), (64, 64)]])
def test_small_fcos_detects_in_images_of_any_number_and_size(sizes):
    model = small_model().eval()
    images = [torch.rand(3, height, width) for height, width in sizes]
    with torch.no_grad():
        detections = model(images)
    assert len(detections) == len(sizes)
    for detection, (height, width) in zip(detections, sizes, strict=True):
        assert set(detection) == {"boxes", "scores", "labels"}
        boxes = detection["boxes"]
        assert boxes.shape[1] == 4 and len(boxes) <= 100
        # In the image's own pixels (scaled back from the model's, up to rounding).
        assert (boxes[:, 2] <= width + 1e-3).all() and (boxes[:, 3] <= height + 1e-3).all()
        assert (detection["labels"] > 0).all()  # never the background


def test_small_fcos_takes_a_batch_tensor_and_scales_its_anchors_with_the_image_size():
    model = SmallFCOS(num_classes=2, min_size=128)
    assert model.transform.max_size == 128
    assert [s[0] for s in model.anchor_generator.sizes] == [16.0, 32.0, 64.0]
    with torch.no_grad():
        assert len(model.eval()(torch.rand(3, 3, 40, 40))) == 3


@pytest.mark.filterwarnings("ignore:FCOS always returns a")  # what the test relies on
def test_small_fcos_compiles_to_torchscript_that_detects_as_the_eager_model():
    model = small_model().eval()
    scripted = to_torchscript(model)
    images = [torch.rand(3, 40, 56), torch.rand(3, 64, 64)]
    with torch.no_grad():
        eager = model(images)
        _, compiled = scripted(images)  # TorchScript's detectors return (losses, detections)
    for ours, theirs in zip(compiled, eager, strict=True):
        for key in ("boxes", "scores", "labels"):
            torch.testing.assert_close(ours[key], theirs[key])


def test_an_image_too_small_for_the_coarsest_level_is_refused_when_built():
    """At 32 px the stride-32 level is 1x1: its GroupNorm would refuse a single image."""
    with pytest.raises(ValueError, match="must exceed 32 px"):
        SmallFCOS(3, min_size=32, fpn_channels=32, width=8)
    SmallFCOS(3, min_size=48, fpn_channels=32, width=8).eval()(torch.rand(1, 3, 48, 48))


def test_fpn_channels_must_suit_the_heads_group_norm():
    with pytest.raises(ValueError, match="multiple of 32"):
        SmallFCOS(num_classes=2, fpn_channels=48)


def test_the_registry_builds_small_fcos_by_name():
    model = models.build("small_fcos", {"num_classes": 4, "in_channels": 3}, {"width": 8})
    assert isinstance(model, SmallFCOS)


# --- boxes --------------------------------------------------------------------------


@pytest.mark.parametrize(("label", "box", "problem"), [
    ("circle", [0, 0, 48, 48], None),
    ("circle", [0.5, 1.25, 47.5, 48.0], None),
    ("9", [1, 1, 5, 5], "unknown label '9' (classes: circle, square, triangle)"),
    ("square", [40, 2, 53, 20], "box [40, 2, 53, 20] lies outside the 48x48 px image"),
    ("square", [-0.5, 2, 10, 20], "box [-0.5, 2, 10, 20] lies outside the 48x48 px image"),
    ("square", [3, 3, 3, 9], "box [3, 3, 3, 9] has no area"),
    ("square", [3.0, 9.0, 8.0, 4.0], "box [3, 9, 8, 4] has no area"),
    ("square", [1, 2, 3], "box [1, 2, 3] needs 4 numbers: x_min, y_min, x_max, y_max"),
    ("square", [1, "a", 3, 4], "box [1, a, 3, 4] has a coordinate that is not a number"),
    ("square", [1, float("nan"), 3, 4],
     "box [1, nan, 3, 4] has a coordinate that is not a finite number"),
])
def test_box_problem_says_why_a_box_cannot_be_used(label, box, problem):
    assert box_problem(label, box, 48, 48, CLASSES) == problem


def test_box_problem_is_exact_at_the_edge():
    assert box_problem("circle", [0, 0, 48.001, 10], 48, 30, CLASSES) is not None
    assert box_problem("circle", [0, 0, 48, 30], 48, 30, CLASSES) is None


@pytest.mark.parametrize(("box", "size"), [
    ([0, 0, 31, 33], "small"), ([0, 0, 32, 32], "medium"), ([10, 10, 105.5, 106], "medium"),
    ([0, 0, 96, 96], "large"),
])
def test_size_of_follows_coco(box, size):
    assert size_of(box) == size


# --- metrics ------------------------------------------------------------------------


def test_perfect_detections_score_1_and_the_report_is_plain_json():
    targets = [truth([[2, 2, 20, 20], [30, 30, 60, 50]], [1, 2]), truth([[5, 5, 40, 40]], [1])]
    scores = BoxScores(CLASSES)
    scores.update([found(t["boxes"].tolist(), t["labels"].tolist(), [0.9] * len(t["labels"]))
                   for t in targets], targets)
    report = json.loads(json.dumps(scores.report()))
    for key in ("map", "map50", "map75", "mar_1", "mar_100", "recall", "map_small",
                "map_medium"):
        assert report[key] == pytest.approx(1.0), key
    assert report["map_large"] is None  # no large box to score
    assert report["per_class"]["circle"] == {"ap": pytest.approx(1.0),
                                             "recall": pytest.approx(1.0), "boxes": 2}
    assert report["per_class"]["square"]["boxes"] == 1
    assert "pr_curves" not in report


def test_a_missed_box_lowers_recall_and_an_absent_class_has_no_scores():
    scores = BoxScores(CLASSES)
    scores.update(
        [found([[2, 2, 20, 20]], [1], [0.8])],
        [truth([[2, 2, 20, 20], [30, 30, 60, 50]], [1, 1])],
    )
    scores.update([found([[0, 0, 9, 9]], [2], [0.7])], [truth([[0, 0, 9, 9]], [2])])
    report = scores.report()
    assert report["per_class"]["circle"]["recall"] == pytest.approx(0.5)
    assert report["per_class"]["square"]["recall"] == pytest.approx(1.0)
    assert report["recall"] == pytest.approx(0.75)  # the mean over classes with boxes
    assert report["per_class"]["triangle"] == {"ap": None, "recall": None, "boxes": 0}


def test_curves_run_over_101_recall_points_for_each_class_with_boxes():
    scores = BoxScores(CLASSES, curves=True)
    scores.update(
        [found([[2, 2, 20, 20], [30, 30, 60, 50], [0, 0, 5, 5]], [1, 1, 3], [0.9, 0.3, 0.5])],
        [truth([[2, 2, 20, 20], [30, 30, 60, 50]], [1, 2])],
    )
    report = scores.report()
    curves = report["pr_curves"]
    assert set(curves) == {"circle", "square"}  # triangle was only detected, never true
    circle = curves["circle"]
    assert len(circle["recall"]) == len(circle["precision"]) == 101
    assert circle["recall"][0] == 0.0 and circle["recall"][-1] == 1.0
    assert circle["precision"][0] == pytest.approx(1.0)
    assert curves["square"]["precision"] == [0.0] * 101  # its box was called a circle
    assert report["per_class"]["triangle"]["ap"] is None
    json.dumps(report)


def test_no_images_give_a_report_of_nothing_measured():
    report = BoxScores(CLASSES, curves=True).report()
    assert report["map"] is None and report["pr_curves"] == {}
    assert report["per_class"]["square"] == {"ap": None, "recall": None, "boxes": 0}


def scored_images() -> tuple[list[dict], list[dict]]:
    """Five images of up to four true boxes each, and detections that move, relabel,
    miss and invent some of them, with random scores."""
    generator = torch.Generator().manual_seed(7)
    detections, targets = [], []
    for _ in range(5):
        count = int(torch.randint(1, 5, (1,), generator=generator))
        corners = torch.rand(count, 2, generator=generator) * 60
        sizes = 4 + torch.rand(count, 2, generator=generator) * 40
        boxes = torch.cat([corners, corners + sizes], dim=1)
        labels = torch.randint(1, 4, (count,), generator=generator)
        targets.append({"boxes": boxes, "labels": labels})
        moved = boxes + torch.randn(count, 4, generator=generator) * 3
        relabelled = torch.where(torch.rand(count, generator=generator) < 0.2,
                                 torch.randint(1, 4, (count,), generator=generator), labels)
        kept = torch.rand(count, generator=generator) < 0.8
        invented = torch.tensor([[1.0, 1.0, 12.0, 12.0]])
        detections.append({
            "boxes": torch.cat([moved[kept], invented]),
            "labels": torch.cat([relabelled[kept], torch.tensor([1])]),
            "scores": torch.rand(int(kept.sum()) + 1, generator=generator),
        })
    return detections, targets


def _score_as_rank(rank: int, folder: str) -> None:
    """Rank 0 scores the first three images, rank 1 the last two."""
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        detections, targets = scored_images()
        share = slice(0, 3) if rank == 0 else slice(3, 5)
        scores = BoxScores(CLASSES, curves=True)
        scores.update(detections[share], targets[share])
        Path(folder, f"rank{rank}.json").write_text(json.dumps(scores.report()))
    finally:
        dist.destroy_process_group()


def test_two_ranks_of_uneven_shares_report_what_one_process_does(tmp_path):
    run_ranks(_score_as_rank, str(tmp_path))
    scores = BoxScores(CLASSES, curves=True)
    scores.update(*scored_images())
    alone = json.loads(json.dumps(scores.report()))
    assert 0 < alone["map"] < 1  # a real mix of hits and misses
    for rank in range(2):
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == alone


# --- results ------------------------------------------------------------------------


def test_palette_gives_each_class_a_voc_colour_without_the_backgrounds_black():
    assert palette(3) == segmentation.palette(4)[1:]
    assert (0, 0, 0) not in palette(20)


def test_box_grid_draws_truth_beside_prediction_in_class_colours():
    colors = [[255, 0, 0], [0, 255, 0], [0, 0, 255]]
    grey = torch.full((1, 24, 32), 90, dtype=torch.uint8)
    rows = [
        ("a.png", torch.full((3, 48, 48), 40, dtype=torch.uint8),
         truth([[4, 4, 30, 30]], [1]), found([[5, 4, 30, 31]], [2], [0.93])),
        ("b.png", grey, truth([], []), found([], [], [])),
    ]
    figure = box_grid(rows, CLASSES, colors)
    assert isinstance(figure, Figure)
    truth_panel, predicted_panel = figure.axes[:2]
    pixels = truth_panel.images[0].get_array()
    assert pixels.shape == (240, 240, 3)  # 48 px enlarged 5 times, nearest neighbour
    assert (pixels.reshape(-1, 3) == [255, 0, 0]).all(axis=1).any()
    drawn = predicted_panel.images[0].get_array().reshape(-1, 3)
    assert (drawn == [0, 255, 0]).all(axis=1).any()
    assert not (drawn == [255, 0, 0]).all(axis=1).any()
    assert truth_panel.get_xlabel() == "truth: 1 box"
    assert figure.axes[3].get_xlabel() == "prediction: 0 boxes"
    assert png(figure).startswith(b"\x89PNG")
    assert png(box_grid([], CLASSES, colors)).startswith(b"\x89PNG")


def test_pr_curves_figure_puts_each_classs_ap50_in_the_legend():
    scores = BoxScores(CLASSES, curves=True)
    scores.update([found([[2, 2, 20, 20]], [1], [0.9])],
                  [truth([[2, 2, 20, 20], [30, 30, 60, 50]], [1, 2])])
    figure = pr_curves_figure(scores.report()["pr_curves"])
    legend = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    assert legend == ["circle (AP50 1.000)", "square (AP50 0.000)"]
    assert png(figure).startswith(b"\x89PNG")
    assert png(pr_curves_figure({})).startswith(b"\x89PNG")
