"""The detection model as MLflow logs and loads it, against a real SQLite store: an
image in, by path, bytes or a request's base64, its boxes out in the image's own
pixels, as the project's detector predicts them."""

from __future__ import annotations

import base64
import io
import json

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient
from mlflow.pyfunc.scoring_server import infer_and_parse_data, predictions_to_json
from PIL import Image

from kedro_torch.pytorch import models
from kedro_torch.pytorch.detection_inference import DetectionSpec, Detector
from kedro_torch.tracking.model import detection_signature, log_image_model

# An untrained detector keeps nothing at its own score_thresh (0.05): with 0 it keeps its
# five surest boxes of every image, so that each answer has boxes to compare.
SPEC = DetectionSpec(model_name="small_fcos", image_size=48, mean=[0.5] * 3, std=[0.25] * 3,
                     classes=["square", "circle"], colors=[[255, 0, 0], [0, 0, 255]],
                     score_threshold=0.0,
                     model_kwargs={"width": 8, "fpn_channels": 32, "score_thresh": 0.0,
                                   "detections_per_img": 5})
OUTPUTS = ["path", "boxes", "labels", "scores", "error"]


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """The detector is tiny: on a busy 2-core machine a second thread made its
    predictions many times slower. Module-wide, for the logged model's fixture."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def logged(sqlite_tracking):
    torch.manual_seed(0)
    state_dict = models.build(SPEC.model_name, SPEC.model_arguments(),
                              SPEC.model_kwargs).state_dict()
    with mlflow.start_run():
        info = log_image_model("model", state_dict, SPEC, batch_size=4,
                               registered_model_name="detector")
    return (mlflow.pyfunc.load_model(info.model_uri),
            Detector.from_state_dict(state_dict, SPEC, batch_size=4), sqlite_tracking)


def png(size: tuple[int, int], seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def assert_answers(answer: pd.DataFrame, found: list[dict[str, torch.Tensor]]) -> None:
    """Rows of the served model's answer hold the detector's detections."""
    for row, expected in zip(answer.itertuples(), found, strict=True):
        assert len(row.boxes) > 0
        np.testing.assert_allclose(np.array(row.boxes, dtype=float).reshape(-1, 4),
                                   expected["boxes"].numpy(), rtol=0, atol=1e-4)
        assert list(row.labels) == [SPEC.classes[label - 1]
                                    for label in expected["labels"].tolist()]
        np.testing.assert_allclose(np.array(row.scores, dtype=float),
                                   expected["scores"].numpy(), rtol=0, atol=1e-5)
        assert pd.isna(row.error)


def test_the_served_boxes_are_the_detectors_in_the_images_own_pixels(logged, tmp_path):
    served, detector, _ = logged
    paths = [tmp_path / "wide.png", tmp_path / "square.png"]
    paths[0].write_bytes(png((40, 24), 1))
    paths[1].write_bytes(png((32, 32), 2))
    answer = served.predict(pd.DataFrame({"path": [*map(str, paths),
                                                   str(tmp_path / "gone.png")]}))
    assert answer.columns.tolist() == OUTPUTS
    assert answer["path"].tolist() == [*map(str, paths), str(tmp_path / "gone.png")]
    assert_answers(answer.head(2), detector.predict_files([str(path) for path in paths]))
    wide = np.array(answer["boxes"][0], dtype=float).reshape(-1, 4)
    assert (wide >= 0).all() and (wide[:, [0, 2]] <= 40).all() and (wide[:, [1, 3]] <= 24).all()
    assert "cannot read" in answer["error"][2]
    assert not isinstance(answer["boxes"][2], list)


def test_bytes_and_a_requests_base64_give_the_boxes_of_their_file(logged, tmp_path):
    served, detector, _ = logged
    data = png((24, 40), 3)
    (tmp_path / "tall.png").write_bytes(data)
    by_path = served.predict(pd.DataFrame({"path": [str(tmp_path / "tall.png")]}))
    by_bytes = served.predict(pd.DataFrame({"image": [data, b"not an image"]}))
    assert by_bytes["path"].tolist() == ["", ""]
    assert_answers(by_bytes.head(1), detector.predict_files([data]))
    np.testing.assert_allclose(np.array(by_bytes["boxes"][0], dtype=float),
                               np.array(by_path["boxes"][0], dtype=float), rtol=0, atol=1e-4)
    assert "not an image" in by_bytes["error"][1]
    request = {"dataframe_split": {"columns": ["image"],
                                   "data": [[base64.b64encode(data).decode("ascii")]]}}
    parsed = infer_and_parse_data(request, served.metadata.get_input_schema())
    answer = served.predict(parsed)
    assert_answers(answer, detector.predict_files([data]))
    response = io.StringIO()
    predictions_to_json(answer, response)
    (returned,) = json.loads(response.getvalue())["predictions"]
    assert returned["labels"] == list(answer["labels"][0])
    assert len(returned["boxes"]) == len(returned["scores"]) == 5


def test_the_logged_model_declares_images_in_and_boxes_out_and_is_registered(logged):
    served, _, uri = logged
    signature = served.metadata.signature
    assert signature.inputs.input_names() == ["path", "image"]
    assert signature.outputs.input_names() == OUTPUTS == detection_signature().outputs.input_names()
    versions = MlflowClient(uri).search_model_versions("name='detector'")
    assert [str(version.version) for version in versions] == ["1"]
