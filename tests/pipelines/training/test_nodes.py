"""The training nodes, one by one and as a pipeline, on an in-memory catalog."""

import shutil

import pandas as pd
import pytest
import torch
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner
from kedro_datasets.json import JSONDataset
from kedro_datasets.pandas import CSVDataset, ParquetDataset
from matplotlib.figure import Figure

from kedro_torch.datasets import (
    CheckpointDirectoryDataset,
    ImageFolderDataset,
    ImageStoreDataset,
    ImageTableDataset,
    TorchStateDictDataset,
)
from kedro_torch.pipelines.training import create_pipeline, nodes
from kedro_torch.pytorch.cache import ImageStore
from kedro_torch.pytorch.config import ParameterError
from kedro_torch.pytorch.data import ImageTable
from kedro_torch.pytorch.inference import ImageClassifier, ModelSpec
from tests.image_files import image_folder, write_empty_file, write_truncated_jpeg
from tests.torchvision_roots import write_mnist

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


def ingest(listing, data=DATA):
    return nodes.ingest(listing, None, None, data)


def transform(manifest, data=DATA, cache_folder=None):
    previous = ImageStore.open(str(cache_folder)) if cache_folder else ImageStore(None)
    return nodes.prepare_model_input(manifest, previous, data)


@pytest.fixture
def transformed(listing):
    return transform(ingest(listing))


def test_ingest_labels_each_image_by_its_folder(listing):
    manifest = ingest(listing)
    assert len(manifest) == 200
    assert sorted(manifest["label"].unique()) == [str(d) for d in range(10)]
    assert all(manifest.apply(lambda r: r["relative_path"].startswith(r["label"] + "/"), axis=1))


def test_ingest_reads_a_manifest_table_when_the_source_says_so(small_digits):
    paths = sorted(p.relative_to(small_digits).as_posix() for p in small_digits.glob("*/*.png"))
    table = pd.DataFrame({"file": paths, "digit": [p.split("/")[0] for p in paths]})
    data = {**DATA, "source": "manifest", "manifest": {"path_column": "file",
                                                       "label_column": "digit"}}
    manifest = nodes.ingest(None, ImageTable(table, str(small_digits)), None, data)
    assert manifest["path"].tolist() == [str(small_digits / p) for p in paths]
    assert manifest["label"].tolist() == table["digit"].tolist()
    with pytest.raises(ValueError, match=r"raw_manifest_path"):
        nodes.ingest(None, None, None, data)


def test_ingest_reads_a_torchvision_dataset_when_the_source_says_so(listing, tmp_path):
    write_mnist(tmp_path, train_per_class=8, test_per_class=2)
    data = {**DATA, "source": "torchvision",
            "torchvision": {"name": "MNIST", "root": str(tmp_path)}}
    manifest = nodes.ingest(listing, None, None, data)  # the folder listing is not read
    assert len(manifest) == 100
    assert manifest["path"].str.startswith("torchvision://MNIST/").all()
    frame, label_map, _, report, _, _ = transform(manifest, data)
    assert list(label_map) == [f"{d} - {name}" for d, name in enumerate(
        ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])]
    assert frame.loc[frame["split"] == "test", "relative_path"].str.startswith("test/").all()
    assert report["source"]["dataset"] == "MNIST"


def test_transform_encodes_labels_and_splits_every_class(transformed):
    frame, label_map, normalization, report, decoded, on_disk = transformed
    assert label_map == {str(d): d for d in range(10)}
    assert (frame["target"] == frame["label"].map(label_map)).all()
    assert (frame.groupby("label")["split"].apply(lambda s: (s == "train").sum()) >= 8).all()
    shares = frame["split"].value_counts(normalize=True)
    assert abs(shares["train"] - 0.7) < 0.08
    assert normalization == {"mean": [0.5], "std": [0.5], "source": "parameters"}
    assert report["files_checked"] == 200 and report["bad_files"] == []
    assert len(decoded) == 200  # data.cache defaults to memory
    assert on_disk.image_shape is None  # the disk cache was left alone


def test_transform_is_deterministic_for_a_seed(listing):
    first = transform(ingest(listing))[0]
    second = transform(ingest(listing.sample(frac=1, random_state=1)))[0]
    third = transform(ingest(listing), {**DATA, "split": {**DATA["split"], "seed": 1}})[0]
    key = ["relative_path", "split"]
    pd.testing.assert_frame_equal(first[key], second[key])
    assert not first["split"].equals(third["split"])


def test_transform_computes_the_normalization_from_the_training_split(listing):
    data = {**DATA, "normalize": {"mean": None, "std": None}}
    frame, *_, decoded, _ = transform(ingest(listing), data)
    stats = transform(ingest(listing), data)[2]
    train = frame[frame["split"] == "train"]
    chunks, rows = decoded.locate(train["content_hash"])
    pixels = torch.stack([decoded.image(int(c), int(r)) for c, r in zip(chunks, rows,
                                                                          strict=True)])
    assert stats["source"] == "training split"
    assert stats["mean"][0] == pytest.approx(pixels.float().mean().item() / 255, abs=1e-5)
    assert stats["std"][0] == pytest.approx(pixels.float().std().item() / 255, abs=1e-4)


def test_groups_of_a_manifest_stay_in_one_split(small_digits):
    paths = sorted(p.relative_to(small_digits).as_posix() for p in small_digits.glob("*/*.png"))
    table = pd.DataFrame({"path": paths, "label": [p.split("/")[0] for p in paths],
                          "patient": [f"p{i // 4}" for i in range(len(paths))]})
    data = {**DATA, "source": "manifest",
            "split": {**DATA["split"], "group_column": "patient"}}
    frame = transform(nodes.ingest(None, ImageTable(table, str(small_digits)), None, data),
                      data)[0]
    assert (frame.groupby("patient")["split"].nunique() == 1).all()
    assert frame["patient"].nunique() == 50
    assert set(frame["split"]) == {"train", "val", "test"}


def test_split_stays_put_when_ten_percent_more_files_arrive(tmp_path):
    """Rerun the pipeline on a grown folder: no earlier file changes split."""
    root = image_folder(tmp_path / "images", {"cat": 50, "dog": 50, "owl": 50})
    catalog = run_catalog(
        root, tmp_path,
        model_input=ParquetDataset(filepath=str(tmp_path / "model_input.parquet")),
    )
    to_transform = create_pipeline().to_nodes("transform")
    SequentialRunner().run(to_transform, catalog)
    before = catalog.load("model_input").set_index("relative_path")["split"]
    image_folder(root, {"cat": 5, "dog": 5, "owl": 5}, start=1000)
    SequentialRunner().run(to_transform, catalog)
    after = catalog.load("model_input").set_index("relative_path")["split"]
    assert len(after) == len(before) + 15
    pd.testing.assert_series_equal(after[before.index], before)
    assert set(before) == {"train", "val", "test"}


def test_disk_cache_skips_unchanged_files_on_the_next_run(listing, tmp_path, caplog):
    data = {**DATA, "cache": "disk"}
    cache = ImageStoreDataset(path=str(tmp_path / "cache"))
    outputs = nodes.prepare_model_input(ingest(listing), cache.load(), data)
    assert outputs[4] is outputs[5]  # the loaders read the store that is saved
    cache.save(outputs[5])
    with caplog.at_level("INFO"):
        again = nodes.prepare_model_input(ingest(listing), cache.load(), data)
    assert "Checked 200 files: 0 decoded now, 200 known from the cache" in caplog.text
    pd.testing.assert_frame_equal(again[0], outputs[0])
    loaders = nodes.build_dataloaders(again[0], again[2], again[4], data, TRAINING)
    cached_batch = next(iter(loaders["test"]))[0]
    decoded = nodes.build_dataloaders(again[0], again[2], ImageStore(None), data, TRAINING)
    assert torch.equal(next(iter(decoded["test"]))[0], cached_batch)


def test_manifest_paths_with_no_file_stop_the_run_naming_them(small_digits):
    table = pd.DataFrame({"path": ["0/missing.png", *[f"0/{p.name}" for p in
                                                      sorted(small_digits.glob("0/*.png"))]],
                          "label": "0"})
    data = {**DATA, "source": "manifest"}
    manifest = nodes.ingest(None, ImageTable(table, str(small_digits)), None, data)
    with pytest.raises(ValueError, match=r"1 listed images have no file behind them: .*missing"):
        transform(manifest, data)


def test_dataloaders_yield_normalized_batches(transformed):
    frame, _, normalization, _, decoded, _ = transformed
    loaders = nodes.build_dataloaders(frame, normalization, decoded, DATA, TRAINING)
    assert set(loaders) == {"train", "val", "test"}
    images, targets = next(iter(loaders["train"]))
    assert images.shape == (32, 1, 8, 8)
    assert images.dtype == torch.float32
    assert images.min() >= -1.0 and images.max() <= 1.0
    assert targets.dtype == torch.long
    assert len(loaders["test"].dataset) == (frame["split"] == "test").sum()


def test_build_model_loads_pretrained_tensors_except_a_mismatched_head(caplog):
    label_map = {str(d): d for d in range(10)}
    donor = nodes.build_model({"a": 0, "b": 1, "c": 2}, {}, DATA, MODEL, TRAINING, None)
    prefixed = {f"module.{k}": v for k, v in donor.state_dict().items()}
    with caplog.at_level("INFO"):
        model = nodes.build_model(label_map, {}, DATA, MODEL, TRAINING, prefixed)
    torch.testing.assert_close(model.features[0].weight, donor.features[0].weight)
    assert model.classifier[1].weight.shape == (10, 16)
    assert "classifier.1.weight (file (3, 16), model (10, 16))" in caplog.text


def test_build_model_refuses_a_path_the_catalog_did_not_load():
    with pytest.raises(ValueError, match=r"model\.pretrained_path"):
        nodes.build_model({"a": 0}, {}, DATA, {**MODEL, "pretrained_path": "w.pt"}, TRAINING,
                          None)


def test_nodes_name_the_yaml_key_of_a_bad_parameter(transformed):
    frame, _, normalization, _, decoded, _ = transformed
    with pytest.raises(ParameterError, match=r"data\.batch_size must be int"):
        nodes.build_dataloaders(frame, normalization, decoded, {**DATA, "batch_size": "64"},
                                TRAINING)
    with pytest.raises(ParameterError, match=r"unknown parameter training\.epoch\b"):
        nodes.train_model(None, {}, None, None, {}, {}, DATA, MODEL, {"epoch": 3})


def run_catalog(images, tmp_path, training=TRAINING, **persisted) -> DataCatalog:
    """A catalog for whole runs on a real image folder; ``persisted`` entries outlive
    the run (the runner releases in-memory intermediates)."""
    return DataCatalog(
        {
            "raw_images": ImageFolderDataset(path=str(images)),
            "raw_manifest": ImageTableDataset(filepath=None),
            "raw_table": MemoryDataset(None),
            "previous_image_cache": ImageStoreDataset(path=str(tmp_path / "cache")),
            "image_cache": ImageStoreDataset(path=str(tmp_path / "cache")),
            "training_history": CSVDataset(filepath=str(tmp_path / "history.csv")),
            "evaluation_report": JSONDataset(filepath=str(tmp_path / "report.json")),
            "trained_state_dict": TorchStateDictDataset(filepath=str(tmp_path / "model.pt")),
            "training_checkpoints": CheckpointDirectoryDataset(path=str(tmp_path / "ckpt")),
            "pretrained_state_dict": MemoryDataset(None),
            "params:data": MemoryDataset(DATA),
            "params:model": MemoryDataset(MODEL),
            "params:training": MemoryDataset(training),
            "params:evaluation": MemoryDataset({"top_k": 2}),
            "params:inference": MemoryDataset({}),
            "params:mlflow": MemoryDataset({"registered_model_name": "digits"}),
            **persisted,
        }
    )


@pytest.mark.e2e
def test_pipeline_trains_and_evaluates_on_real_images(small_digits, tmp_path):
    catalog = run_catalog(
        small_digits, tmp_path, {**TRAINING, "epochs": 8},
        model_input=ParquetDataset(filepath=str(tmp_path / "model_input.parquet")),
        model_spec=JSONDataset(filepath=str(tmp_path / "model_spec.json")),
    )
    SequentialRunner().run(create_pipeline(), catalog)
    history = catalog.load("training_history")
    assert list(history["epoch"]) == list(range(1, 9))
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]
    report = catalog.load("evaluation_report")
    assert report["accuracy"] > 0.5  # chance is 0.1
    test_size = (catalog.load("model_input")["split"] == "test").sum()
    assert sum(c["support"] for c in report["per_class"].values()) == test_size
    metrics = catalog.load("test_metrics")
    assert metrics["test_accuracy"] == {"value": report["accuracy"], "step": 0}
    assert not [name for name in metrics if name.startswith("test_per_class")]  # a table now
    per_class = catalog.load("per_class_table")
    assert list(per_class.columns) == ["class", "precision", "recall", "f1", "support"]
    assert list(per_class["class"]) == list(report["per_class"])
    assert list(per_class["support"]) == [c["support"] for c in report["per_class"].values()]
    assert report["top_k"] == 2
    assert report["accuracy"] <= report["top_k_accuracy"] <= 1
    assert 0 <= report["calibration"]["ece"] <= 1
    assert {"test_top2_accuracy", "test_ece", "test_macro_f1", "test_weighted_recall"} <= set(
        metrics
    )
    plots = catalog.load("evaluation_plots")
    assert set(plots) == {"confusion_matrix.png", "learning_curve.png",
                          "reliability_diagram.png", "per_class_metrics.png",
                          "prediction_gallery.png"}
    assert all(isinstance(figure, Figure) for figure in plots.values())
    predictions = catalog.load("test_predictions")
    assert list(predictions.columns) == ["path", "true", "predicted", "probability", "entropy"]
    assert len(predictions) == test_size
    assert (predictions["true"] == predictions["predicted"]).mean() == report["accuracy"]
    state_dict = catalog.load("trained_state_dict")
    assert all(t.device.type == "cpu" for t in state_dict.values())
    assert len(list((tmp_path / "ckpt").glob("*/step-*.pt"))) == 1
    spec = catalog.load("model_spec")
    assert spec == {"model_name": "small_cnn", "channels": 1, "image_size": 8, "mean": [0.5],
                    "std": [0.5], "model_kwargs": {"width": 8}, "load_size": None,
                    "eval_transforms": [], "task": "image_classification"}
    packaged = catalog.load("mlflow_model")
    assert packaged["registered_model_name"] == "digits"
    assert packaged["metrics"]["test_accuracy"] == report["accuracy"]
    assert packaged["model_spec"] == spec


@pytest.mark.e2e
@pytest.mark.parametrize("cache", ["memory", "disk"])
def test_evaluate_reruns_from_the_saved_files_alone(small_digits, tmp_path, cache):
    """`--from-nodes evaluate`: a new catalog over the files a run saved, nothing in
    memory, gives the report the run gave (from the image cache, or the files)."""
    data = {**DATA, "cache": cache}

    def saved_files() -> DataCatalog:
        return run_catalog(small_digits, tmp_path, {**TRAINING, "epochs": 1}, **{
            "params:data": MemoryDataset(data),
            "model_input": ParquetDataset(filepath=str(tmp_path / "model_input.parquet")),
            "label_map": JSONDataset(filepath=str(tmp_path / "label_map.json")),
            "model_spec": JSONDataset(filepath=str(tmp_path / "model_spec.json")),
        })

    first = saved_files()
    SequentialRunner().run(create_pipeline(), first)
    (tmp_path / "report.json").rename(tmp_path / "first_report.json")
    again = saved_files()
    SequentialRunner().run(create_pipeline().from_nodes("evaluate"), again)
    assert again.load("evaluation_report") == JSONDataset(
        filepath=str(tmp_path / "first_report.json")).load()


@pytest.mark.e2e
def test_the_packaged_model_predicts_what_evaluation_measured(small_digits, tmp_path):
    """With a load size and eval transforms of its own, the spec rebuilds the test
    split's preprocessing: predicting the test files gives evaluation's probabilities."""
    data = {**DATA, "load_size": 12,
            "transforms": {"eval": [{"name": "CenterCrop", "kwargs": {"size": 10}}]}}
    catalog = run_catalog(small_digits, tmp_path, {**TRAINING, "epochs": 1}, **{
        "params:data": MemoryDataset(data),
        "label_map": JSONDataset(filepath=str(tmp_path / "label_map.json")),
        "model_spec": JSONDataset(filepath=str(tmp_path / "model_spec.json")),
    })
    SequentialRunner().run(create_pipeline(), catalog)
    spec = catalog.load("model_spec")
    assert spec["load_size"] == 12
    assert spec["eval_transforms"] == [{"name": "CenterCrop", "kwargs": {"size": 10}}]
    classifier = ImageClassifier.from_state_dict(
        catalog.load("trained_state_dict"), ModelSpec.from_dict(spec), catalog.load("label_map")
    )
    evaluated = catalog.load("test_predictions")
    predicted, failures = classifier.predict_paths(evaluated["path"].tolist(), top_k=1)
    assert failures.empty
    assert predicted["label"].tolist() == evaluated["predicted"].astype(str).tolist()
    assert predicted["probability"].to_numpy() == pytest.approx(
        evaluated["probability"].to_numpy(), abs=1e-6
    )


@pytest.mark.e2e
def test_a_truncated_jpeg_and_an_empty_file_are_set_aside_and_training_finishes(
    small_digits, tmp_path
):
    root = shutil.copytree(small_digits, tmp_path / "images")
    write_truncated_jpeg(root / "3" / "cut short.jpg")
    write_empty_file(root / "7" / "empty.png")
    catalog = run_catalog(
        root, tmp_path,
        data_quality_report=JSONDataset(filepath=str(tmp_path / "quality.json")),
    )
    SequentialRunner().run(create_pipeline(), catalog)
    report = catalog.load("data_quality_report")
    assert [(bad["relative_path"], bad["reason"][:30]) for bad in report["bad_files"]] == [
        ("3/cut short.jpg", "cannot decode: image file is t"),
        ("7/empty.png", "empty file (0 bytes)"),
    ]
    assert report["files_checked"] == 202
    assert report["images_used"] == 200
    assert len(catalog.load("training_history")) == TRAINING["epochs"]
    assert "accuracy" in catalog.load("evaluation_report")
