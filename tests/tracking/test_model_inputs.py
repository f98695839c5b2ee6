"""The MLflow model given what a caller may try first: a plain list of image paths.

MLflow checks the input against the model's signature before ``predict`` sees it, and
leaves out what the signature does not name: a list's column ``0``. What is left has no
column and no row, and the model says what it takes and the one-line fix, rather than
``got columns []``."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from kedro_torch.pytorch.inference import ModelSpec
from kedro_torch.pytorch.models import build_model
from kedro_torch.tracking.model import log_image_classifier

SPEC = ModelSpec(model_name="small_cnn", channels=1, image_size=8, mean=[0.5], std=[0.5],
                 model_kwargs={"width": 4})


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """The logged model, loaded back as a caller loads it, from a store of its own."""
    folder = tmp_path_factory.mktemp("mlflow")
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{folder / 'mlflow.db'}")
    try:
        mlflow.set_experiment("inputs")
        with mlflow.start_run():
            info = log_image_classifier("model", build_model("small_cnn", 2, 1, width=4)
                                        .state_dict(), SPEC, {"cat": 0, "dog": 1}, top_k=1,
                                        batch_size=4)
        yield mlflow.pyfunc.load_model(info.model_uri)
    finally:
        mlflow.set_tracking_uri(previous)


@pytest.fixture
def image(tmp_path) -> str:
    path = tmp_path / "digit.png"
    Image.fromarray(np.zeros((12, 12), dtype=np.uint8)).save(path)
    return str(path)


def test_a_plain_list_of_paths_is_refused_with_the_one_line_fix(model, image):
    with pytest.raises(ValueError, match=r"a plain list of paths") as refusal:
        model.predict([image, image])
    message = str(refusal.value)
    assert "'path' column" in message
    assert "pandas.DataFrame({'path': paths})" in message
    assert "got columns []" not in message


def test_the_fix_the_message_gives_predicts_the_list(model, image):
    predictions = model.predict(pd.DataFrame({"path": [image, image]}))
    assert predictions["path"].tolist() == [image, image]
    assert predictions["error"].isna().all()
    assert set(predictions["label"]) <= {"cat", "dog"}
