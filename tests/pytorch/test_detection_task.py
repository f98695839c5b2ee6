"""Object detection behind the task seam: images checked with their boxes and the bad
ones named, boxes moved with their images by the transforms, a step that takes the
detector's own losses, epoch figures that weigh each batch by its images, and
evaluation, prediction and the detector that all give boxes in the image's own pixels."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from kedro_torch.pytorch import api, data, engine, export, images, models, sources, tasks
from kedro_torch.pytorch.config import (
    DataConfig,
    InferenceConfig,
    ModelConfig,
    ParameterError,
    TrainingConfig,
    parse,
)
from kedro_torch.pytorch.detection import SmallFCOS
from kedro_torch.pytorch.detection_inference import (
    Detector,
    coco_results,
    model_arguments,
    output_difference,
)
from kedro_torch.pytorch.tasks.detection import Targets
from tests.detection_data import write_coco_root

CLASSES = ["square", "circle"]  # COCO category ids 1 and 2 of tests.detection_data
SIZE = 48
MODEL = ModelConfig(name="small_fcos", kwargs={"width": 8, "fpn_channels": 32})
CPU = torch.device("cpu")


def config(**values) -> DataConfig:
    return parse(DataConfig, {"task": "object_detection", "source": "coco", "image_size": SIZE,
                              "channels": 3, "num_workers": 0, "batch_size": 8,
                              "detection": {"classes": CLASSES}, **values}, "data")


def manifest_of(root: Path, cfg: DataConfig) -> pd.DataFrame:
    return sources.get("coco").ingest(data.list_folder(str(root)), cfg)


def write_coco(root: Path, files: dict[str, tuple[tuple[int, int], list]]) -> Path:
    """``root/images/<name>`` (a plain colour each, so that no two share a content hash)
    and ``root/annotations.json`` with each file's (category id, [x, y, w, h]) boxes."""
    (root / "images").mkdir(parents=True)
    coco: dict = {"images": [], "annotations": [],
                  "categories": [{"id": 1, "name": "square"}, {"id": 2, "name": "circle"}]}
    for image_id, (name, (size, boxes)) in enumerate(files.items(), 1):
        Image.new("RGB", size, (image_id * 20, 90, 30)).save(root / "images" / name)
        coco["images"].append({"id": image_id, "file_name": name, "width": size[0],
                               "height": size[1]})
        coco["annotations"] += [{"id": len(coco["annotations"]) + 1, "image_id": image_id,
                                 "category_id": category, "bbox": bbox, "iscrowd": 0}
                                for category, bbox in boxes]
    (root / "annotations.json").write_text(json.dumps(coco))
    return root


def mirrored(boxes: torch.Tensor, width: int) -> torch.Tensor:
    return torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], 1)


def assert_same_detections(found: list[dict], expected: list[dict]) -> None:
    """The same detections, as :meth:`Detector.described` gives them; the numbers to
    within what a batch of other images changes in the convolutions' sums."""
    assert [box["label"] for box in found] == [box["label"] for box in expected]
    for box, other in zip(found, expected, strict=True):
        assert {k: v for k, v in box.items() if k != "label"} == pytest.approx(
            {k: v for k, v in other.items() if k != "label"}, abs=1e-4)


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """These models are tiny: on a busy 2-core machine a second thread made a training
    step of SmallFCOS up to fifty times slower. Module-wide, for the module's fixtures."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    return write_coco_root(tmp_path_factory.mktemp("coco"), count=30, size=SIZE, seed=0)


@pytest.fixture(scope="module")
def prepared(coco_root):
    return api.prepare_data(manifest_of(coco_root, config()), config())


@pytest.fixture(scope="module")
def trained(prepared):
    """Two epochs of a small FCOS, watched by the validation mAP; its task and spec."""
    cfg = config()
    feeds = api.build_loaders(prepared.model_input, prepared.preprocessing, cfg, seed=0,
                              images=prepared.images)
    model = api.build_model(MODEL, cfg, prepared.label_map, prepared.preprocessing, seed=0)
    task = tasks.create(cfg.task, prepared.preprocessing)
    training = parse(TrainingConfig, {"epochs": 2, "progress_bar": False,
                                      "monitor": "val_map"}, "training")
    result = api.fit(model, feeds, training, task=task)
    return result, task, task.spec(MODEL, cfg, prepared.preprocessing), feeds


@pytest.fixture(scope="module")
def loose(trained):
    """The trained weights with every detection kept (the model's own score_thresh and
    the spec's threshold 0), so that a briefly trained model detects something."""
    result, _, spec, _ = trained
    spec = dataclasses.replace(spec, score_threshold=0.0,
                               model_kwargs={**spec.model_kwargs, "score_thresh": 0.0,
                                             "detections_per_img": 10})
    return result.state_dict, spec


@pytest.fixture(scope="module")
def inbox(coco_root, tmp_path_factory):
    """A folder to predict: a training image, the same image widened to 96x64, and a
    file that is no image."""
    folder = tmp_path_factory.mktemp("inbox")
    with Image.open(coco_root / "images" / "i000.png") as image:
        image.save(folder / "a.png")
        image.resize((96, 64)).save(folder / "wide.png")
    (folder / "broken.png").write_text("not an image")
    return folder


# --- the step and the epoch's figures ---------------------------------------------------


def test_the_step_trains_the_models_summed_losses_and_detects_in_eval_mode():
    task = tasks.create("object_detection", {"classes": CLASSES})
    torch.manual_seed(0)
    model = SmallFCOS(3, min_size=48, width=8, fpn_channels=32)
    inputs = torch.rand(2, 3, 48, 48)
    targets = Targets([{"boxes": torch.tensor([[2.0, 3.0, 20.0, 18.0]]),
                        "labels": torch.tensor([1])},
                       {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}])
    losses, loss = task.step(model.train(), inputs, targets, None)
    assert set(losses) == {"classification", "bbox_regression", "bbox_ctrness"}
    assert loss.requires_grad
    assert float(loss.detach()) == pytest.approx(float(sum(losses.values()).detach()))
    detections, none = task.step(model.eval(), inputs, targets, None)
    assert none is None
    assert len(detections) == 2
    assert all({"boxes", "scores", "labels"} <= found.keys() for found in detections)


def test_a_training_epochs_figures_hold_each_loss_weighed_by_its_batchs_images():
    task = tasks.create("object_detection", {"classes": CLASSES})
    sums = task.metric_sums(CPU)
    one = Targets([{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}])
    for count, (classification, regression) in ((1, (1.0, 3.0)), (3, (2.0, 6.0))):
        outputs = {"classification": torch.tensor(classification),
                   "loss_box_reg": torch.tensor(regression)}  # Faster R-CNN's names
        task.accumulate(sums, outputs, Targets(one * count), sum(outputs.values()))
    figures = task.summarize(task.totals(sums))
    assert figures == pytest.approx({"loss": (4 + 3 * 8) / 4,
                                     "loss_classification": (1 + 3 * 2) / 4,
                                     "loss_box_reg": (3 + 3 * 6) / 4})


def test_an_eval_epochs_figures_are_the_map_without_a_loss():
    task = tasks.create("object_detection", {"classes": CLASSES})
    sums = task.metric_sums(CPU)
    truth = {"boxes": torch.tensor([[2.0, 2.0, 20.0, 20.0], [24.0, 4.0, 40.0, 30.0]]),
             "labels": torch.tensor([1, 2])}
    found = [truth | {"scores": torch.tensor([0.9, 0.8])}]
    task.accumulate(sums, found, Targets([truth]), None)
    assert task.summarize(task.totals(sums)) == pytest.approx({"map": 1.0, "map50": 1.0})
    sums = task.metric_sums(CPU)
    task.accumulate(sums, [truth | {"boxes": truth["boxes"] + 30, "scores": torch.ones(2)}],
                    Targets([truth]), None)
    assert task.summarize(task.totals(sums)) == pytest.approx({"map": 0.0, "map50": 0.0})


def test_fit_logs_each_loss_in_training_and_the_map_in_validation(trained):
    result, task, _, feeds = trained
    assert len(result.history) == 2
    for row in result.history:
        losses = {name for name in row if name.startswith("train_loss_")}
        assert losses == {"train_loss_classification", "train_loss_bbox_regression",
                          "train_loss_bbox_ctrness"}
        assert row["train_loss"] == pytest.approx(sum(row[name] for name in losses))
        assert 0 <= row["val_map"] <= row["val_map50"] <= 1
        assert not any(name.startswith("val_loss") for name in row)
    assert result.history[1]["train_loss"] < result.history[0]["train_loss"]
    figures = engine.evaluate(result.model, feeds["val"], None, CPU, task=task)
    assert figures == pytest.approx({name: result.history[-1][f"val_{name}"]
                                     for name in ("map", "map50")})


# --- the data-quality report -------------------------------------------------------------


def test_bad_boxes_set_their_image_aside_and_the_report_counts_the_rest(tmp_path):
    root = write_coco(tmp_path / "coco", {
        # COCO sizes by area: small (100 px), medium (1600), large (10000)
        "a.png": ((128, 128), [(1, [0, 0, 10, 10]), (2, [10, 10, 40, 40]),
                               (1, [0, 0, 100, 100])]),
        # exactly 32x32 is medium; a box reaching the far edges is inside
        "b.png": ((128, 96), [(2, [5, 5, 32, 32]), (1, [96, 64, 32, 32])]),
        "c.png": ((40, 30), [(1, [0.5, 0.5, 31, 29])]),  # 899 px: small
        "empty.png": ((32, 32), []),
        "outside.png": ((64, 64), [(1, [4, 4, 8, 8]), (2, [50, 0, 15, 10])]),
        "unknown.png": ((64, 64), [(9, [4, 4, 8, 8])]),
        **{f"f{index}.png": ((48, 48), [(2, [4, 4, 8, 8])]) for index in range(6)},
    })
    cfg = config(max_bad_fraction=0.5)
    result = api.prepare_data(manifest_of(root, cfg), cfg)
    report = result.report
    outside, unknown = sorted(report["bad_boxes"], key=lambda box: box["relative_path"])
    assert outside["relative_path"] == "images/outside.png"
    assert outside["path"] == str(root / "images" / "outside.png")
    assert outside["label"] == "circle" and outside["box"] == [50, 0, 65, 10]
    assert outside["reason"] == "box [50, 0, 65, 10] lies outside the 64x64 px image"
    assert unknown["relative_path"] == "images/unknown.png"
    assert "unknown label '9'" in unknown["reason"]
    assert {row["relative_path"]: row["reason"] for row in report["bad_images"]} == {
        "images/outside.png": outside["reason"], "images/unknown.png": unknown["reason"]}
    assert (report["images_checked"], report["images_used"]) == (12, 10)
    assert set(result.model_input["relative_path"]).isdisjoint(
        {"images/outside.png", "images/unknown.png"})
    assert report["images_without_boxes"] == {"count": 1, "first": ["images/empty.png"]}
    assert report["boxes_per_class"] == {"square": 4, "circle": 8}
    assert report["box_sizes"] == {"small": 8, "medium": 3, "large": 1}
    assert result.label_map == {"square": 1, "circle": 2}
    assert result.preprocessing["classes"] == CLASSES
    assert len(result.preprocessing["colors"]) == 2
    # data.normalize's single default value, which the detector broadcasts over RGB
    assert result.preprocessing["mean"] == [0.5] and result.preprocessing["std"] == [0.5]
    with pytest.raises(data.DataError, match="cannot be read"):
        api.prepare_data(manifest_of(root, config()), config())  # 2 of 12 > 0.01


def test_an_image_the_coco_file_names_but_the_folder_lacks_stops_the_run(tmp_path):
    root = write_coco(tmp_path / "coco", {f"f{index}.png": ((48, 48), [(2, [4, 4, 8, 8])])
                                          for index in range(4)})
    (root / "images" / "f2.png").unlink()
    with pytest.raises(data.DataError, match=r"f2\.png"):
        api.prepare_data(manifest_of(root, config()), config())


def test_detection_without_classes_is_refused_naming_the_key(coco_root):
    cfg = config(detection={"classes": []})
    with pytest.raises(ParameterError, match=r"data\.detection\.classes"):
        api.prepare_data(manifest_of(coco_root, cfg), cfg)


def test_a_split_left_empty_is_refused_before_training(tmp_path):
    """Nine images split by hash can leave the test split empty (they do under these
    file contents): evaluation, after training, would find no image."""
    root = write_coco_root(tmp_path / "coco", count=9, size=SIZE, seed=0)
    with pytest.raises(data.DataError, match=r"split.* would hold no image under data\.split"):
        api.prepare_data(manifest_of(root, config()), config())


# --- feeding ------------------------------------------------------------------------------


def test_batches_are_images_in_0_1_and_targets_that_move_as_a_list_of_dicts(prepared):
    feeds = api.build_loaders(prepared.model_input, prepared.preprocessing, config(), seed=0,
                              images=prepared.images)
    inputs, targets = next(iter(feeds["train"]))
    assert inputs.dtype == torch.float32 and inputs.shape == (8, 3, SIZE, SIZE)
    assert inputs.min() >= 0 and inputs.max() <= 1
    assert isinstance(targets, Targets) and len(targets) == 8
    for target in targets:
        assert target["boxes"].dtype == torch.float32 and target["boxes"].shape[1] == 4
        assert target["labels"].dtype == torch.int64
        assert len(target["labels"]) == len(target["boxes"]) > 0
        assert set(target["labels"].tolist()) <= {1, 2}
    moved = targets.to(CPU)
    assert isinstance(moved, Targets)
    assert all(torch.equal(a["boxes"], b["boxes"]) for a, b in zip(moved, targets, strict=True))
    val = prepared.model_input[prepared.model_input["split"] == "val"].reset_index(drop=True)
    _, first = next(iter(feeds["val"]))  # in order, boxes scaled from the image's pixels
    for row, target in zip(val.itertuples(), first, strict=True):
        scale = torch.tensor([SIZE / row.width, SIZE / row.height] * 2)
        expected = torch.tensor([box[1:] for box in json.loads(row.boxes)]) * scale
        torch.testing.assert_close(target["boxes"], expected)


def test_images_decoded_larger_come_down_to_the_input_size_with_their_boxes(coco_root):
    cfg = config(load_size=2 * SIZE)
    result = api.prepare_data(manifest_of(coco_root, cfg), cfg)
    assert result.images.images.shape[-2:] == (2 * SIZE, 2 * SIZE)
    torch.testing.assert_close(result.images.boxes[0], 2 * torch.tensor(
        [box[1:] for box in json.loads(result.model_input["boxes"][0])]))
    feeds = api.build_loaders(result.model_input, result.preprocessing, cfg, seed=0,
                              images=result.images)
    val = result.model_input[result.model_input["split"] == "val"].reset_index(drop=True)
    inputs, targets = next(iter(feeds["val"]))
    assert inputs.shape[-2:] == (SIZE, SIZE)
    for boxes, target in zip(val["boxes"], targets, strict=True):
        torch.testing.assert_close(target["boxes"], torch.tensor(
            [box[1:] for box in json.loads(boxes)]).reshape(-1, 4))


def test_a_flip_mirrors_the_boxes_with_their_image(prepared):
    cfg = config(transforms={"train": [{"name": "RandomHorizontalFlip", "kwargs": {"p": 1.0}}]})
    feeds = api.build_loaders(prepared.model_input, prepared.preprocessing, cfg, seed=0,
                              images=prepared.images)
    dataset = feeds["train"].dataset
    for index in range(3):
        image, target = dataset[(index, 11)]
        torch.testing.assert_close(target["boxes"], mirrored(dataset.boxed.boxes[index], SIZE))
        assert torch.equal(target["labels"], dataset.boxed.labels[index])
        torch.testing.assert_close(image * 255, dataset.boxed.images[index].flip(-1).float())
    evaluated = feeds["val"].dataset
    assert torch.equal(evaluated[0][1]["boxes"], evaluated.boxed.boxes[0])  # no eval flip


def test_crops_and_zooms_replay_under_their_seed_and_leave_only_boxes_with_area(prepared):
    cfg = config(transforms={"train": [
        {"name": "RandomZoomOut", "kwargs": {"side_range": [1.0, 3.0], "p": 0.7}},
        {"name": "RandomIoUCrop"}]})
    feeds = api.build_loaders(prepared.model_input, prepared.preprocessing, cfg, seed=0,
                              images=prepared.images)
    dataset = feeds["train"].dataset
    items = range(6)  # RandomIoUCrop takes about 20 ms an image, trying crops
    first, first_targets = dataset.__getitems__([(index, 0) for index in items])
    again, replayed = dataset.__getitems__([(index, 0) for index in items])
    assert torch.equal(first, again)
    for target, twin in zip(first_targets, replayed, strict=True):
        assert torch.equal(target["boxes"], twin["boxes"])
        assert torch.equal(target["labels"], twin["labels"])
    changed = 0
    for seed in range(6):
        batch, targets = dataset.__getitems__([(index, seed) for index in items])
        assert batch.shape == (len(items), 3, SIZE, SIZE)
        for index, target in zip(items, targets, strict=True):
            boxes = target["boxes"]
            assert len(boxes) == len(target["labels"])
            assert bool((boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all())
            assert bool((boxes >= 0).all() and (boxes <= SIZE).all())
            original = dataset.boxed.boxes[index]
            changed += boxes.shape != original.shape or not torch.allclose(boxes, original)
    assert changed > 6 * len(items) / 2  # the transforms did run
    batch, _ = next(iter(feeds["train"]))
    assert batch.shape == (8, 3, SIZE, SIZE)


# --- evaluation ---------------------------------------------------------------------------


def test_evaluation_scores_the_test_split_and_draws_its_boxes(prepared, trained):
    result, _, spec, _ = trained
    spec = dataclasses.replace(spec, score_threshold=0.1)
    cfg = config()
    evaluation = api.evaluate(result.state_dict, spec, prepared.model_input,
                              prepared.label_map, data_config=cfg, device="cpu")
    assert {"test_map", "test_map50"} <= evaluation.metrics.keys()
    assert all(0 <= value <= 1 for value in evaluation.metrics.values())
    test = prepared.model_input[prepared.model_input["split"] == "test"].reset_index(drop=True)
    assert evaluation.report["images"] == len(test)
    per_class = evaluation.per_class
    assert per_class.columns.tolist() == ["class", "ap", "recall", "boxes"]
    assert per_class["class"].tolist() == CLASSES
    true_boxes = [json.loads(boxes) for boxes in test["boxes"]]
    assert per_class["boxes"].tolist() == [sum(box[0] == name for boxes in true_boxes
                                               for box in boxes) for name in CLASSES]
    table = evaluation.predictions
    assert table["relative_path"].tolist() == test["relative_path"].tolist()
    assert table["boxes"].tolist() == [len(boxes) for boxes in true_boxes]
    assert ((table["misses"] >= 0) & (table["misses"] <= table["boxes"])).all()
    found = [json.loads(described) for described in table["found"]]
    assert table["detections"].tolist() == [len(described) for described in found]
    assert table["detections"].sum() > 0
    detector = Detector.from_state_dict(result.state_dict, spec, batch_size=cfg.batch_size * 2)
    for described, each in zip(found, detector.predict_files(test["path"]), strict=True):
        assert_same_detections(described, detector.described(each))
    assert all(box["score"] >= 0.1 for described in found for box in described)
    assert {"boxes", "precision_recall"} <= evaluation.figures.keys()
    for figure in evaluation.figures.values():
        assert isinstance(figure, Figure)
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
        assert buffer.getvalue().startswith(b"\x89PNG")


# --- the detector and prediction ----------------------------------------------------------


def test_the_detectors_boxes_are_in_the_images_own_pixels(loose, inbox):
    state_dict, spec = loose
    detector = Detector.from_state_dict(state_dict, spec)
    path = inbox / "wide.png"
    (found,) = detector.predict_each([str(path)])
    decoded, _ = images.decode(path.read_bytes(), spec.decode_size, 3)
    (square,) = detector.detect([decoded], [(spec.decode_size, spec.decode_size)])
    assert len(found["boxes"]) > 0
    side = spec.decode_size
    torch.testing.assert_close(found["boxes"],
                               square["boxes"] * torch.tensor([96 / side, 64 / side] * 2))
    assert torch.equal(found["labels"], square["labels"])
    boxes = found["boxes"]
    assert bool((boxes >= 0).all() and (boxes[:, [0, 2]] <= 96).all()
                and (boxes[:, [1, 3]] <= 64).all())
    (by_bytes,) = detector.predict_each([path.read_bytes()])
    assert torch.equal(by_bytes["boxes"], found["boxes"])


def test_a_broken_file_is_its_own_failure_and_spoils_no_other(loose, inbox):
    detector = Detector.from_state_dict(*loose)
    good, broken, missing = detector.predict_each(
        [str(inbox / name) for name in ("a.png", "broken.png", "gone.png")])
    assert isinstance(good, dict) and len(good["boxes"]) > 0
    assert isinstance(broken, str) and "not an image" in broken
    assert isinstance(missing, str) and "cannot read" in missing
    with pytest.raises(ValueError, match="not an image"):
        detector.predict_files([str(inbox / "a.png"), str(inbox / "broken.png")])


def test_coco_results_give_each_detection_an_xywh_box_and_its_classs_category():
    predictions = pd.DataFrame({"image_id": [3, 3, 5], "label": ["circle", "square", "square"],
                                "score": [0.9, 0.6, 0.7], "x_min": [10.0, 0.0, 1.5],
                                "y_min": [20.0, 0.0, 2.5], "x_max": [30.0, 4.0, 11.5],
                                "y_max": [60.0, 8.0, 3.0]})
    results = coco_results(predictions, CLASSES)
    assert results == [
        {"image_id": 3, "category_id": 2, "bbox": [10.0, 20.0, 20.0, 40.0], "score": 0.9},
        {"image_id": 3, "category_id": 1, "bbox": [0.0, 0.0, 4.0, 8.0], "score": 0.6},
        {"image_id": 5, "category_id": 1, "bbox": [1.5, 2.5, 10.0, 0.5], "score": 0.7},
    ]
    json.dumps(results)  # a results file


def test_prediction_gives_a_row_per_detection_in_each_images_own_pixels(loose, inbox):
    state_dict, spec = loose
    task = tasks.create("object_detection", spec.preprocessing)
    predictions, failures = task.predict(state_dict, spec, {}, data.list_folder(str(inbox)),
                                         InferenceConfig(), CPU)
    assert predictions.columns.tolist() == ["image_id", "path", "relative_path", "label",
                                            "score", "x_min", "y_min", "x_max", "y_max"]
    assert failures["relative_path"].tolist() == ["broken.png"]
    assert "not an image" in failures["reason"][0]
    detector = Detector.from_state_dict(state_dict, spec)
    for image_id, name, (width, height) in ((1, "a.png", (48, 48)), (3, "wide.png", (96, 64))):
        rows = predictions[predictions["relative_path"] == name]
        assert len(rows) > 0 and (rows["image_id"] == image_id).all()
        (found,) = detector.predict_each([str(inbox / name)])
        assert_same_detections(rows.drop(columns=["image_id", "path", "relative_path"])
                               .to_dict("records"), detector.described(found))
        assert ((rows["x_min"] >= 0) & (rows["x_max"] <= width) & (rows["y_max"] <= height)
                & (rows["x_min"] <= rows["x_max"])).all()
    assert set(predictions["label"]) <= set(CLASSES)
    assert len(coco_results(predictions, CLASSES)) == len(predictions)


def test_the_inference_score_threshold_overrides_the_models(loose, inbox):
    state_dict, spec = loose
    task = tasks.create("object_detection", spec.preprocessing)
    listing = data.list_folder(str(inbox))
    every, _ = task.predict(state_dict, spec, {}, listing, InferenceConfig(), CPU)
    threshold = float(every["score"].median())
    sure, _ = task.predict(state_dict, spec, {}, listing,
                           InferenceConfig(score_threshold=threshold), CPU)
    pd.testing.assert_frame_equal(sure, every[every["score"] >= threshold]
                                  .reset_index(drop=True))
    strict = dataclasses.replace(spec, score_threshold=1.0)
    again, _ = task.predict(state_dict, strict, {}, listing,
                            InferenceConfig(score_threshold=0.0), CPU)
    pd.testing.assert_frame_equal(again, every)
    none, _ = task.predict(state_dict, strict, {}, listing, InferenceConfig(), CPU)
    assert len(none) == int((every["score"] >= 1.0).sum())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_detector_trains_and_validates_on_cuda(prepared):
    cfg = config()
    feeds = api.build_loaders(prepared.model_input, prepared.preprocessing, cfg, seed=0,
                              images=prepared.images, device="cuda")
    model = api.build_model(MODEL, cfg, prepared.label_map, prepared.preprocessing, seed=0)
    training = parse(TrainingConfig, {"epochs": 1, "progress_bar": False, "device": "cuda",
                                      "monitor": "val_map"}, "training")
    result = api.fit(model, feeds, training, task=tasks.create(cfg.task, prepared.preprocessing))
    assert {"train_loss", "val_map", "val_map50"} <= result.history[0].keys()


def test_a_torchvision_detector_trains_predicts_and_exports_through_the_task():
    """Faster R-CNN, built by name as a run builds it (no weights; the task's input size
    and normalization), takes a training step, detects, and its exports match eager."""
    torch.manual_seed(0)
    task = tasks.create("object_detection", {"classes": CLASSES})
    model = models.build("fasterrcnn_mobilenet_v3_large_320_fpn",
                         model_arguments(CLASSES, 64, [0.5], [0.25]), {})
    inputs = torch.rand(2, 3, 64, 64)
    targets = Targets([{"boxes": torch.tensor([[4.0, 6.0, 40.0, 30.0]]),
                        "labels": torch.tensor([2])}] * 2)
    losses, loss = task.step(model.train(), inputs, targets, None)
    assert {"loss_classifier", "loss_box_reg", "loss_objectness"} <= set(losses)
    loss.backward()
    detections, _ = task.step(model.eval(), inputs, targets, None)
    assert len(detections) == 2 and detections[0]["boxes"].shape[-1] == 4
    forms = task.exported(model)
    with torch.no_grad():
        scripted = export.to_torchscript(forms["torchscript"])
        program = export.to_exported_program(forms["exported_program"], inputs)
        assert output_difference(forms["torchscript"](inputs), scripted(inputs)) <= 1e-5
        assert output_difference(forms["exported_program"](inputs),
                                 program.module()(inputs)) <= 1e-5
