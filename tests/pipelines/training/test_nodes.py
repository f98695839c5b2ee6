"""The training nodes, one by one and as a pipeline, on an in-memory catalog."""

import pandas as pd
import pytest
import torch
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner
from kedro_datasets.json import JSONDataset
from kedro_datasets.pandas import CSVDataset
from matplotlib.figure import Figure

from kedro_torch.config import ParameterError
from kedro_torch.datasets import (
    CheckpointDirectoryDataset,
    ImageFolderDataset,
    TorchStateDictDataset,
)
from kedro_torch.pipelines.training import create_pipeline, nodes

DATA = {
    "image_size": 8,
    "channels": 1,
    "batch_size": 32,
    "split": {"train": 0.7, "val": 0.15, "test": 0.15, "seed": 0},
}
MODEL = {"name": "small_cnn", "kwargs": {"width": 8}}
TRAINING = {"epochs": 2, "seed": 0, "device": "cpu", "progress_bar": False}


@pytest.fixture
def listing(small_digits):
    return ImageFolderDataset(path=str(small_digits)).load()


@pytest.fixture
def model_input(listing):
    return nodes.prepare_model_input(nodes.ingest_images(listing), DATA)


def test_ingest_labels_each_image_by_its_folder(listing):
    manifest = nodes.ingest_images(listing)
    assert len(manifest) == 200
    assert sorted(manifest["label"].unique()) == [str(d) for d in range(10)]
    assert all(manifest.apply(lambda r: r["relative_path"].startswith(r["label"] + "/"), axis=1))


def test_transform_encodes_labels_and_splits_every_class(model_input):
    frame, label_map = model_input
    assert label_map == {str(d): d for d in range(10)}
    assert (frame["target"] == frame["label"].map(label_map)).all()
    per_class = frame.groupby(["label", "split"]).size().unstack()
    assert (per_class["train"] == 14).all()
    assert (per_class["val"] == 3).all()
    assert (per_class["test"] == 3).all()


def test_transform_is_deterministic_for_a_seed(listing):
    first, _ = nodes.prepare_model_input(nodes.ingest_images(listing), DATA)
    shuffled = listing.sample(frac=1, random_state=1)
    second, _ = nodes.prepare_model_input(nodes.ingest_images(shuffled), DATA)
    other_seed = {**DATA, "split": {**DATA["split"], "seed": 1}}
    third, _ = nodes.prepare_model_input(nodes.ingest_images(listing), other_seed)
    key = ["relative_path", "split"]
    pd.testing.assert_frame_equal(first[key], second[key])
    assert not first["split"].equals(third["split"])


def test_dataloaders_yield_normalised_batches(model_input):
    loaders = nodes.build_dataloaders(model_input[0], DATA, TRAINING)
    assert set(loaders) == {"train", "val", "test"}
    images, targets = next(iter(loaders["train"]))
    assert images.shape == (32, 1, 8, 8)
    assert images.dtype == torch.float32
    assert images.min() >= -1.0 and images.max() <= 1.0
    assert targets.dtype == torch.long
    assert len(loaders["test"].dataset) == 30


def test_build_model_loads_pretrained_tensors_except_a_mismatched_head(caplog):
    label_map = {str(d): d for d in range(10)}
    donor = nodes.build_model({"a": 0, "b": 1, "c": 2}, DATA, MODEL, TRAINING, None)
    prefixed = {f"module.{k}": v for k, v in donor.state_dict().items()}
    with caplog.at_level("INFO"):
        model = nodes.build_model(label_map, DATA, MODEL, TRAINING, prefixed)
    torch.testing.assert_close(model.features[0].weight, donor.features[0].weight)
    assert model.classifier[1].weight.shape == (10, 16)
    assert "classifier.1.weight (file (3, 16), model (10, 16))" in caplog.text


def test_build_model_refuses_a_path_the_catalog_did_not_load():
    with pytest.raises(ValueError, match=r"model\.pretrained_path"):
        nodes.build_model({"a": 0}, DATA, {**MODEL, "pretrained_path": "w.pt"}, TRAINING, None)


def test_nodes_name_the_yaml_key_of_a_bad_parameter(model_input):
    with pytest.raises(ParameterError, match=r"data\.batch_size must be int"):
        nodes.build_dataloaders(model_input[0], {**DATA, "batch_size": "64"}, TRAINING)
    with pytest.raises(ParameterError, match=r"unknown parameter training\.epoch\b"):
        nodes.train_model(None, {}, None, {}, {"epoch": 3}, MODEL)


def test_pipeline_trains_and_evaluates_on_real_images(small_digits, tmp_path):
    catalog = DataCatalog(
        {
            "raw_images": ImageFolderDataset(path=str(small_digits)),
            # Persisted, because the runner releases in-memory intermediates.
            "training_history": CSVDataset(filepath=str(tmp_path / "history.csv")),
            "evaluation_report": JSONDataset(filepath=str(tmp_path / "report.json")),
            "trained_state_dict": TorchStateDictDataset(filepath=str(tmp_path / "model.pt")),
            "training_checkpoints": CheckpointDirectoryDataset(path=str(tmp_path / "ckpt")),
            "pretrained_state_dict": MemoryDataset(None),
            "params:data": MemoryDataset(DATA),
            "params:model": MemoryDataset(MODEL),
            "params:training": MemoryDataset({**TRAINING, "epochs": 8}),
            "params:evaluation": MemoryDataset({"top_k": 2}),
            "params:inference": MemoryDataset({}),
            "params:mlflow": MemoryDataset({"registered_model_name": "digits"}),
        }
    )
    SequentialRunner().run(create_pipeline(), catalog)
    history = catalog.load("training_history")
    assert list(history["epoch"]) == list(range(1, 9))
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]
    report = catalog.load("evaluation_report")
    assert report["accuracy"] > 0.5  # chance is 0.1
    assert sum(c["support"] for c in report["per_class"].values()) == 30
    metrics = catalog.load("test_metrics")
    assert metrics["test_accuracy"] == {"value": report["accuracy"], "step": 0}
    assert {"test_precision_3", "test_recall_3", "test_f1_3"} <= set(metrics)
    assert report["top_k"] == 2
    assert report["accuracy"] <= report["top_k_accuracy"] <= 1
    assert 0 <= report["calibration"]["ece"] <= 1
    assert {"test_top2_accuracy", "test_ece", "test_macro_f1", "test_weighted_recall"} <= set(
        metrics
    )
    for figure in ("confusion_matrix_plot", "learning_curve_plot", "reliability_diagram",
                   "per_class_metrics_plot", "prediction_gallery"):
        assert isinstance(catalog.load(figure), Figure), figure
    predictions = catalog.load("test_predictions")
    assert list(predictions.columns) == ["path", "true", "predicted", "probability", "entropy"]
    assert len(predictions) == 30
    assert (predictions["true"] == predictions["predicted"]).mean() == report["accuracy"]
    state_dict = catalog.load("trained_state_dict")
    assert all(t.device.type == "cpu" for t in state_dict.values())
    assert (tmp_path / "ckpt" / "last.pt").exists()
    spec = catalog.load("model_spec")
    assert spec == {"model_name": "small_cnn", "channels": 1, "image_size": 8, "mean": [0.5],
                    "std": [0.5], "model_kwargs": {"width": 8}}
    packaged = catalog.load("mlflow_model")
    assert packaged["registered_model_name"] == "digits"
    assert packaged["metrics"] == {"test_accuracy": report["accuracy"]}
    assert packaged["model_spec"] == spec
