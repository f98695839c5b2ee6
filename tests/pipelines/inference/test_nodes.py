"""The inference pipeline on an in-memory catalog: a folder in, predictions and a
report of unreadable files out."""

import shutil

import pytest
import torch
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner

from kedro_torch.datasets import ImageFolderDataset
from kedro_torch.pipelines.inference import create_pipeline, nodes
from kedro_torch.pytorch.config import ParameterError
from kedro_torch.pytorch.models import build_model

SPEC = {"model_name": "small_cnn", "channels": 1, "image_size": 8, "mean": [0.5],
        "std": [0.5], "model_kwargs": {"width": 4}}
LABEL_MAP = {str(d): d for d in range(10)}


@pytest.fixture
def folder(small_digits, tmp_path):
    shutil.copy(small_digits / "3" / sorted(p.name for p in (small_digits / "3").iterdir())[0],
                tmp_path / "a.png")
    (tmp_path / "deep" / "er").mkdir(parents=True)
    shutil.copy(tmp_path / "a.png", tmp_path / "deep" / "er" / "b.png")
    (tmp_path / "c.png").write_bytes(b"broken")
    return tmp_path


@pytest.mark.e2e
def test_pipeline_predicts_every_image_and_reports_broken_ones(folder):
    torch.manual_seed(0)
    catalog = DataCatalog({
        "inference_images": ImageFolderDataset(path=str(folder)),
        "inference_table": MemoryDataset(None),
        "trained_state_dict": MemoryDataset(build_model("small_cnn", 10, 1, width=4).state_dict()),
        "model_spec": MemoryDataset(SPEC),
        "label_map": MemoryDataset(LABEL_MAP),
        "params:inference": MemoryDataset({"top_k": 2}),
        "inference_predictions": MemoryDataset(),
        "inference_failures": MemoryDataset(),
    })
    SequentialRunner().run(create_pipeline(), catalog)
    predictions = catalog.load("inference_predictions")
    assert predictions["relative_path"].tolist() == ["a.png", "deep/er/b.png"]
    assert list(predictions.columns) == [
        "path", "relative_path", "label", "probability", "top1_label", "top1_probability",
        "top2_label", "top2_probability",
    ]
    # The same pixels give the same answer wherever the file sits.
    assert predictions["label"].nunique() == 1
    failures = catalog.load("inference_failures")
    assert failures[["relative_path", "error"]].to_dict("records") == [
        {"relative_path": "c.png", "error": "not an image file PIL can decode"}
    ]


def test_bad_inference_parameter_names_its_key(folder):
    with pytest.raises(ParameterError, match=r"inference\.top_k must be greater than 0"):
        nodes.predict(ImageFolderDataset(path=str(folder)).load(), None, {}, SPEC, LABEL_MAP,
                      {"top_k": 0})
