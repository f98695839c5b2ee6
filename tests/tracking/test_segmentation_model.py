"""The segmentation model as MLflow logs and loads it, against a real SQLite store: an
image in, by path or bytes, its mask out at the image's own size, as the project's
segmenter predicts it."""

from __future__ import annotations

import io

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from kedro_torch.pytorch import models
from kedro_torch.pytorch.segmentation_inference import SegmentationSpec, Segmenter
from kedro_torch.tracking.model import log_image_model, segmentation_signature

SPEC = SegmentationSpec(model_name="unet", channels=3, image_size=16, mean=[0.5], std=[0.5],
                        classes=["background", "thing"], colors=[[0, 0, 0], [255, 0, 0]],
                        model_kwargs={"width": 4, "depth": 2})


@pytest.fixture(scope="module")
def logged(sqlite_tracking):
    torch.manual_seed(0)
    state_dict = models.build("unet", SPEC.model_arguments(), SPEC.model_kwargs).state_dict()
    with mlflow.start_run():
        info = log_image_model("model", state_dict, SPEC, batch_size=4,
                                      registered_model_name="segmenter")
    return mlflow.pyfunc.load_model(info.model_uri), Segmenter.from_state_dict(state_dict,
                                                                                SPEC)


def png(size: tuple[int, int], seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_the_served_mask_is_the_segmenters_at_the_images_own_size(logged, tmp_path):
    served, segmenter = logged
    path = tmp_path / "wide.png"
    path.write_bytes(png((24, 12), 1))
    answer = served.predict(pd.DataFrame({"path": [str(path), str(tmp_path / "gone.png")]}))
    assert answer.columns.tolist() == [c.name for c in segmentation_signature(SPEC).outputs]
    mask = np.asarray(Image.open(io.BytesIO(answer["mask"][0])))
    assert mask.shape == (12, 24)
    np.testing.assert_array_equal(mask, segmenter.predict_files([str(path)])[0])
    assert answer["share_background"][0] + answer["share_thing"][0] == pytest.approx(1)
    assert pd.isna(answer["error"][0])
    assert "gone.png" in answer["error"][1] and answer["mask"].isna()[1]


def test_bytes_give_the_same_mask_as_their_file(logged, tmp_path):
    served, _ = logged
    data = png((16, 16), 2)
    (tmp_path / "a.png").write_bytes(data)
    by_path = served.predict(pd.DataFrame({"path": [str(tmp_path / "a.png")]}))
    by_bytes = served.predict(pd.DataFrame({"image": [data]}))
    assert by_path["mask"][0] == by_bytes["mask"][0]
    assert by_bytes["path"][0] == ""


def test_the_signature_declares_the_mask_and_each_classs_share():
    signature = segmentation_signature(SPEC)
    assert signature.inputs.input_names() == ["path", "image"]
    assert {"mask", "share_background", "share_thing", "error"} <= set(
        signature.outputs.input_names())
