"""The MLflow model on raw images, and the champion alias, against a real SQLite store."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient
from PIL import Image

from kedro_torch.pytorch.inference import ModelSpec
from kedro_torch.pytorch.models import build_model
from kedro_torch.tracking.model import as_input_list, log_image_classifier, promote_if_better

SPEC = ModelSpec(model_name="small_cnn", channels=1, image_size=8, mean=[0.5], std=[0.5],
                 model_kwargs={"width": 4})
LABEL_MAP = {"cat": 0, "dog": 1}


@pytest.fixture(scope="module")
def tracking(tmp_path_factory):
    """A fresh SQLite tracking store and registry, set for this module only."""
    folder = tmp_path_factory.mktemp("mlflow")
    previous = mlflow.get_tracking_uri()
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("tests")
    yield MlflowClient(uri)
    mlflow.set_tracking_uri(previous)


def version_with_metric(client: MlflowClient, name: str, value: float | None) -> str:
    with mlflow.start_run() as run:
        if value is not None:
            mlflow.log_metric("test_accuracy", value)
    return client.create_model_version(name, source=run.info.artifact_uri,
                                       run_id=run.info.run_id).version


def test_champion_moves_only_to_a_better_version(tracking):
    tracking.create_registered_model("champions")
    first = version_with_metric(tracking, "champions", 0.8)
    assert promote_if_better(tracking, "champions", first, "test_accuracy", 0.8)
    worse = version_with_metric(tracking, "champions", 0.5)
    assert not promote_if_better(tracking, "champions", worse, "test_accuracy", 0.5)
    tie = version_with_metric(tracking, "champions", 0.8)
    assert not promote_if_better(tracking, "champions", tie, "test_accuracy", 0.8)
    assert tracking.get_model_version_by_alias("champions", "champion").version == first
    better = version_with_metric(tracking, "champions", 0.9)
    assert promote_if_better(tracking, "champions", better, "test_accuracy", 0.9)
    assert tracking.get_model_version_by_alias("champions", "champion").version == better


def test_a_champion_without_the_metric_is_replaced(tracking):
    tracking.create_registered_model("unmeasured")
    old = version_with_metric(tracking, "unmeasured", None)
    tracking.set_registered_model_alias("unmeasured", "champion", old)
    new = version_with_metric(tracking, "unmeasured", 0.1)
    assert promote_if_better(tracking, "unmeasured", new, "test_accuracy", 0.1)


def test_logged_model_predicts_paths_and_arrays_in_input_order(tracking, tmp_path):
    torch.manual_seed(0)
    state_dict = build_model("small_cnn", 2, 1, width=4).state_dict()
    with mlflow.start_run():
        info = log_image_classifier("model", state_dict, SPEC, LABEL_MAP, top_k=2,
                                    batch_size=4, registered_model_name="classifier")
    assert info.registered_model_version == 1
    model = mlflow.pyfunc.load_model("models:/classifier/1")
    pixels = np.random.default_rng(0).integers(0, 256, (3, 12, 12), dtype=np.uint8)
    path = tmp_path / "x.png"
    Image.fromarray(pixels[0]).save(path)
    from_arrays = model.predict(pixels)
    assert len(from_arrays) == 3
    assert set(from_arrays["label"]) <= {"cat", "dog"}
    from_paths = model.predict(pd.DataFrame({"path": [str(path), str(tmp_path / "gone.png")]}))
    assert from_paths["label"].iloc[0] == from_arrays["label"].iloc[0]
    assert from_paths["probability"].iloc[0] == pytest.approx(from_arrays["probability"].iloc[0])
    assert from_paths["error"].iloc[1].startswith("FileNotFoundError")
    assert pd.isna(from_paths["label"].iloc[1])
    requirements = mlflow.pyfunc.get_model_dependencies(info.model_uri)
    with open(requirements) as file:
        assert "torch==" in file.read()


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (["a.png", "b.png"], ["a.png", "b.png"]),
        ("a.png", ["a.png"]),
        (pd.Series(["a.png"]), ["a.png"]),
        (pd.DataFrame({"other": [1], "path": ["a.png"]}), ["a.png"]),
        (pd.DataFrame({"file": ["a.png"]}), ["a.png"]),
        (np.array(["a.png", "b.png"]), ["a.png", "b.png"]),
    ],
)
def test_paths_come_out_as_a_list_whatever_the_container(given, expected):
    assert as_input_list(given) == expected


def test_pixel_arrays_come_out_one_per_image():
    assert len(as_input_list(np.zeros((5, 8, 8), dtype=np.uint8))) == 5
    assert len(as_input_list(np.zeros((5, 8, 8, 3), dtype=np.uint8))) == 5
    assert len(as_input_list(np.zeros((8, 8), dtype=np.uint8))) == 1
    column = pd.DataFrame({"image": [np.zeros((8, 8), dtype=np.uint8)] * 2})
    assert len(as_input_list(column)) == 2
