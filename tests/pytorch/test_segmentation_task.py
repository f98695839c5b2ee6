"""Semantic segmentation behind the task seam: pairs found and checked, fed with their
masks through the same transforms, a step that takes torchvision's dict of outputs,
metrics that sum exactly, and prediction that equals evaluation's."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

from kedro_torch.pytorch import api, data, loaders, models, optimizers, sources, tasks
from kedro_torch.pytorch.checks import validate_parameters
from kedro_torch.pytorch.config import (
    DataConfig,
    LossConfig,
    ModelConfig,
    ParameterError,
    TrainingConfig,
    parse,
)
from kedro_torch.pytorch.segmentation_inference import SegmentationSpec, Segmenter
from kedro_torch.pytorch.tasks.segmentation import PairDataset, Pairs, pair_transform
from tests.segmentation_data import write_bad_pairs, write_folder_pair

CLASSES = ["background", "a", "b"]


def config(**values) -> DataConfig:
    return parse(DataConfig, {"task": "semantic_segmentation", "source": "mask_folder",
                              "image_size": 32, "channels": 3, "num_workers": 0,
                              "segmentation": {"classes": CLASSES}, **values}, "data")


def manifest_of(root, cfg: DataConfig) -> pd.DataFrame:
    return sources.get("mask_folder").ingest(data.list_folder(str(root)), cfg)


@pytest.fixture(scope="module")
def pairs_root(tmp_path_factory):
    return write_folder_pair(tmp_path_factory.mktemp("pairs"), count=40, size=32, classes=3)


@pytest.fixture(scope="module")
def prepared(pairs_root):
    return api.prepare_data(manifest_of(pairs_root, config()), config())


# --- finding and checking pairs ---------------------------------------------------------


def test_images_pair_with_the_masks_of_the_same_stem(tmp_path):
    root = write_folder_pair(tmp_path / "pairs", count=4, size=16, classes=3)
    (root / "masks" / next(iter(sorted((root / "masks").iterdir()))).name).unlink()
    manifest = manifest_of(root, config())
    assert len(manifest) == 4
    assert manifest["mask_path"].isna().sum() == 1
    paired = manifest.dropna(subset=["mask_path"])
    assert all(p.replace("/images/", "/masks/") == m
               for p, m in zip(paired["path"], paired["mask_path"], strict=True))


def test_a_folder_without_masks_is_refused_naming_what_it_needs(tmp_path):
    (tmp_path / "images").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "a.png")
    with pytest.raises(data.DataError, match="masks/"):
        manifest_of(tmp_path, config())


def test_a_table_of_pairs_resolves_its_paths_from_its_folder(tmp_path):
    frame = pd.DataFrame({"path": ["images/a.png", "images/b.png"],
                          "mask_path": ["masks/a.png", None], "site": ["x", "y"]})
    manifest = data.pairs_from_table(data.ImageTable(frame, str(tmp_path)), "path", "mask_path")
    assert manifest["path"].tolist() == [str(tmp_path / "images/a.png"),
                                         str(tmp_path / "images/b.png")]
    assert manifest["mask_path"][0] == str(tmp_path / "masks/a.png")
    assert pd.isna(manifest["mask_path"][1])
    assert manifest["site"].tolist() == ["x", "y"]
    with pytest.raises(data.DataError, match="mask_column"):
        data.pairs_from_table(data.ImageTable(frame, str(tmp_path)), "path", "masks")


def test_broken_pairs_are_set_aside_with_their_reasons(tmp_path):
    root = write_folder_pair(tmp_path / "pairs", count=12, size=32, classes=3)
    broken = write_bad_pairs(root)
    cfg = config(max_bad_fraction=0.5)
    result = api.prepare_data(manifest_of(root, cfg), cfg)
    reasons = {row["relative_path"].split("/")[-1].rsplit(".", 1)[0]: row["reason"]
               for row in result.report["bad_pairs"]}
    assert set(reasons) == set(broken)
    by_kind = {kind: reasons[stem] for stem, kind in broken.items()}
    assert "mask is" in by_kind["wrong_size"] and "px" in by_kind["wrong_size"]
    assert "77" in by_kind["unknown_class"] and "no class" in by_kind["unknown_class"]
    assert "no mask" in by_kind["no_mask"]
    assert result.report["images_used"] == 12
    with pytest.raises(data.DataError, match="cannot be read"):
        api.prepare_data(manifest_of(root, config()), config())  # 3 of 15 > 0.01


def test_the_report_gives_each_classs_pixel_share(prepared):
    shares = prepared.report["pixels_per_class"]
    assert list(shares) == CLASSES
    assert sum(s["share"] for s in shares.values()) == pytest.approx(1, abs=1e-5)
    assert all(s["pixels"] > 0 for s in shares.values())
    assert prepared.label_map == {"background": 0, "a": 1, "b": 2}
    assert prepared.preprocessing["ignore_index"] == 255
    assert len(prepared.preprocessing["colors"]) == 3


@pytest.mark.parametrize(("values", "key"), [
    ({"segmentation": {"classes": []}}, "data.segmentation.classes"),
    ({"segmentation": {"classes": ["a", "b"], "ignore_index": 1}},
     "data.segmentation.ignore_index"),
    ({"segmentation": {"classes": ["a", "b"], "colors": [[0, 0, 0]]}},
     "data.segmentation.colors"),
    ({"sampler": "balanced"}, "data.sampler"),
    ({"transforms": {"train_batch": [{"name": "MixUp"}]}}, "data.transforms.train_batch"),
])
def test_parameters_segmentation_cannot_train_with_are_refused_by_key(values, key):
    with pytest.raises(ParameterError, match=key):
        config(**values)


def test_the_parameter_checks_step_a_probe_with_each_segmentation_loss():
    for loss in ("CrossEntropyLoss", "DiceLoss", "DiceCrossEntropyLoss"):
        validate_parameters({
            "data": {"task": "semantic_segmentation", "source": "mask_folder",
                     "channels": 3, "segmentation": {"classes": CLASSES}},
            "model": {"name": "unet", "kwargs": {"width": 4}},
            "training": {"loss": {"name": loss}},
        }, {"data", "model", "training"})


# --- feeding and the step ---------------------------------------------------------------


def test_a_transform_moves_the_mask_with_its_image_under_the_same_seed():
    image = torch.arange(2 * 3 * 4 * 4, dtype=torch.uint8).view(2, 3, 4, 4)
    masks = torch.tensor([[0, 1, 2, 0]] * 4, dtype=torch.uint8).expand(2, 4, 4).clone()
    pairs = Pairs({"x": 0, "y": 1}, image, masks)
    flip = loaders.build_transforms([("RandomHorizontalFlip", {"p": 1.0})], "t")
    dataset = PairDataset(pairs, {"mean": [0.0], "std": [1.0]},
                          loaders.image_transform(flip, 4, 4))
    images, targets = dataset.__getitems__([(0, 7), (1, 7)])
    assert torch.equal(targets[0, 0], torch.tensor([0, 2, 1, 0]))
    assert torch.allclose(images[0] * 255, image[0].flip(-1).float())
    again = dataset.__getitems__([(0, 7), (1, 7)])
    assert torch.equal(again[0], images) and torch.equal(again[1], targets)


def test_the_step_adds_half_the_auxiliary_loss_of_a_torchvision_model():
    task = tasks.create("semantic_segmentation", {"classes": CLASSES, "ignore_index": 255})

    class TwoHeads(nn.Module):
        def forward(self, x):
            return {"out": x, "aux": x * 2}

    loss_fn = nn.CrossEntropyLoss(ignore_index=255)
    logits = torch.randn(2, 3, 4, 4)
    targets = torch.randint(0, 3, (2, 4, 4))
    outputs, loss = task.step(TwoHeads(), logits, targets, loss_fn)
    assert torch.equal(outputs, logits)
    assert loss == pytest.approx(float(loss_fn(logits, targets) + 0.5 * loss_fn(2 * logits,
                                                                              targets)))


def test_the_default_loss_ignores_the_ignore_index_unless_the_user_sets_it():
    task = tasks.create("semantic_segmentation", {"classes": CLASSES, "ignore_index": 7})
    built = optimizers.build_loss(LossConfig(), default=task.default_loss,
                                  defaults=task.loss_defaults())
    assert built.ignore_index == 7
    own = optimizers.build_loss(LossConfig(kwargs={"ignore_index": 3}),
                                default=task.default_loss, defaults=task.loss_defaults())
    assert own.ignore_index == 3
    mse = optimizers.build_loss(LossConfig("MSELoss"), defaults=task.loss_defaults())
    assert isinstance(mse, nn.MSELoss)  # takes no ignore_index: none given


def test_epoch_metrics_come_from_the_summed_confusion_matrix():
    task = tasks.create("semantic_segmentation", {"classes": CLASSES, "ignore_index": 255})
    sums = task.metric_sums(torch.device("cpu"))
    targets = torch.tensor([[[0, 1], [2, 255]]])
    outputs = nn.functional.one_hot(torch.tensor([[[0, 1], [1, 2]]]), 3).permute(0, 3, 1, 2)
    task.accumulate(sums, outputs.float(), targets, torch.tensor(1.0))
    figures = api.engine._epoch_metrics(task, sums)
    assert figures["pixel_accuracy"] == pytest.approx(2 / 3)
    assert figures["miou"] == pytest.approx((1 + 0.5 + 0) / 3)


# --- training, evaluation and prediction ------------------------------------------------


def test_a_unet_trains_and_evaluation_predicts_what_the_segmenter_does(prepared, pairs_root):
    cfg = config()
    assert prepared.report["images_per_split"]["val"] > 0
    feeds = api.build_loaders(prepared.model_input, prepared.preprocessing, cfg, seed=0,
                              images=prepared.images)
    model_config = ModelConfig(name="unet", kwargs={"width": 4, "depth": 2})
    model = api.build_model(model_config, cfg, prepared.label_map, prepared.preprocessing,
                            seed=0)
    task = tasks.create(cfg.task, prepared.preprocessing)
    training = parse(TrainingConfig, {"epochs": 2, "progress_bar": False,
                                      "monitor": "val_miou"}, "training")
    result = api.fit(model, feeds, training, task=task)
    assert {"train_miou", "val_miou", "val_pixel_accuracy"} <= result.history[-1].keys()
    spec = task.spec(model_config, cfg, prepared.preprocessing)
    evaluation = api.evaluate(result.state_dict, spec, prepared.model_input,
                              prepared.label_map, data_config=cfg)
    assert set(evaluation.metrics) == {"test_miou", "test_pixel_accuracy", "test_mean_dice"}
    assert evaluation.per_class["class"].tolist() == CLASSES
    assert {"overlays", "confusion_matrix"} <= evaluation.figures.keys()
    first = evaluation.predictions.iloc[0]
    (mask,) = Segmenter.from_state_dict(result.state_dict, spec).predict_files([first.path])
    shares = np.bincount(mask.ravel(), minlength=3) / mask.size
    assert shares.tolist() == pytest.approx([first[f"share_{n}"] for n in CLASSES])


def test_what_a_crop_pads_around_an_image_is_ignored_in_its_mask():
    cfg = config(transforms={"train": [{"name": "RandomCrop",
                                        "kwargs": {"size": 32, "padding": 4}}]})
    pairs = Pairs({"x": 0}, torch.full((1, 3, 32, 32), 200, dtype=torch.uint8),
                  torch.ones(1, 32, 32, dtype=torch.uint8))
    dataset = PairDataset(pairs, {"mean": [0.0], "std": [1.0]}, pair_transform(cfg, "train"))
    seen = set()
    for seed in range(20):
        _, mask = dataset.__getitems__([(0, seed)])
        seen |= set(mask.unique().tolist())
    assert seen == {1, 255}


def test_a_torchvision_model_is_served_and_scripted_by_its_logits():
    spec = SegmentationSpec("lraspp_mobilenet_v3_large", 3, 32, [0.5], [0.5], CLASSES, [])
    weights = models.build(spec.model_name, spec.model_arguments(), {}).state_dict()
    model = spec.build_model(weights)
    inputs = torch.randn(2, 3, 32, 32)
    assert model(inputs).shape == (2, 3, 32, 32)
    torch.testing.assert_close(torch.jit.script(model)(inputs), model(inputs))
    unet = SegmentationSpec("unet", 3, 32, [0.5], [0.5], CLASSES, [], model_kwargs={"width": 4})
    assert type(unet.build_model(models.build("unet", unet.model_arguments(),
                                              {"width": 4}).state_dict())).__name__ == "UNet"


def test_an_unreadable_file_is_its_own_failure_and_spoils_no_other(tmp_path):
    spec = SegmentationSpec("unet", 3, 16, [0.5], [0.5], CLASSES, [],
                            model_kwargs={"width": 4, "depth": 2})
    segmenter = Segmenter.from_state_dict(
        models.build("unet", spec.model_arguments(), spec.model_kwargs).state_dict(), spec)
    Image.new("RGB", (20, 10), "red").save(tmp_path / "wide.png")
    (tmp_path / "notes.png").write_text("not an image")
    good, broken, missing = segmenter.predict_each(
        [str(tmp_path / name) for name in ("wide.png", "notes.png", "gone.png")])
    assert good.shape == (10, 20) and good.dtype == np.uint8
    assert "not an image" in broken
    assert "cannot read" in missing
    with pytest.raises(ValueError, match="not an image"):
        segmenter.predict_files([str(tmp_path / "notes.png")])
