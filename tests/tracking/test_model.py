"""The MLflow model on raw images, and the champion alias, against a real SQLite store."""

from __future__ import annotations

import io

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient
from PIL import Image

from kedro_torch.pytorch.inference import ModelSpec
from kedro_torch.pytorch.models import build_model
from kedro_torch.tracking.model import image_files, log_image_classifier, promote_if_better

SPEC = ModelSpec(model_name="small_cnn", channels=1, image_size=8, mean=[0.5], std=[0.5],
                 model_kwargs={"width": 4})
LABEL_MAP = {"cat": 0, "dog": 1}


@pytest.fixture(scope="module")
def tracking(sqlite_tracking):
    return MlflowClient(sqlite_tracking)


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


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_logged_model_predicts_paths_and_bytes_in_input_order(tracking, tmp_path):
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
    from_bytes = model.predict(pd.DataFrame({"image": [png_bytes(p) for p in pixels]}))
    assert len(from_bytes) == 3
    assert set(from_bytes["label"]) <= {"cat", "dog"}
    assert from_bytes["path"].isna().all()
    from_paths = model.predict(pd.DataFrame({"path": [str(path), str(tmp_path / "gone.png")]}))
    assert from_paths["label"].iloc[0] == from_bytes["label"].iloc[0]
    assert from_paths["probability"].iloc[0] == pytest.approx(from_bytes["probability"].iloc[0])
    assert from_paths["error"].iloc[1].startswith("FileNotFoundError")
    assert pd.isna(from_paths["label"].iloc[1])
    mixed = model.predict(pd.DataFrame({"path": [None, str(path)],
                                        "image": [png_bytes(pixels[1]), None]}))
    assert mixed["probability"].tolist() == pytest.approx(
        [from_bytes["probability"].iloc[1], from_paths["probability"].iloc[0]])
    requirements = mlflow.pyfunc.get_model_dependencies(info.model_uri)
    with open(requirements) as file:
        assert "torch==" in file.read()


def test_logged_model_declares_its_inputs_outputs_and_an_example(tracking):
    state_dict = build_model("small_cnn", 2, 1, width=4).state_dict()
    with mlflow.start_run():
        info = log_image_classifier("model", state_dict, SPEC, LABEL_MAP, top_k=3,
                                    batch_size=4)
    inputs = {spec.name: spec.type.name for spec in info.signature.inputs.inputs}
    assert inputs == {"path": "string", "image": "binary"}
    outputs = info.signature.outputs.input_names()
    # top_k is 3 but there are two classes: two guesses.
    assert outputs == ["path", "label", "probability", "top1_label", "top1_probability",
                       "top2_label", "top2_probability", "error"]
    example = mlflow.models.Model.load(info.model_uri).load_input_example()
    image = Image.open(io.BytesIO(example["image"].iloc[0]))
    assert image.size == (SPEC.image_size, SPEC.image_size)


def test_a_table_without_a_path_or_image_column_is_refused_naming_both():
    with pytest.raises(ValueError, match=r"'path' column.*'image' column"):
        image_files(pd.DataFrame({"file": ["a.png"]}))


def test_each_row_gives_its_bytes_else_its_path():
    table = pd.DataFrame({"path": ["a.png", None, None], "image": [None, b"PNG", None]})
    assert image_files(table) == ["a.png", b"PNG", ""]
    assert image_files(pd.DataFrame({"path": ["a.png"]})) == ["a.png"]
    assert image_files(pd.DataFrame({"image": [bytearray(b"x")]})) == [b"x"]
