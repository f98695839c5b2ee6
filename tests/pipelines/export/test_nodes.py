"""The export nodes: exports that match the eager model pass; a mismatch fails."""

import pandas as pd
import pytest
import torch

from kedro_torch.pipelines.export import nodes
from kedro_torch.pytorch.models import build_model

SPEC = {"model_name": "small_cnn", "channels": 1, "image_size": 8, "mean": [0.5],
        "std": [0.5], "model_kwargs": {"width": 4}}
LABEL_MAP = {"a": 0, "b": 1}


@pytest.fixture
def model_input(small_digits):
    paths = sorted(str(p) for p in small_digits.glob("*/*.png"))[:9]
    return pd.DataFrame({"path": paths, "split": ["test"] * 8 + ["train"]})


@pytest.fixture
def state_dict():
    torch.manual_seed(0)
    return build_model("small_cnn", 2, 1, width=4).state_dict()


def test_exports_are_checked_on_the_test_split(state_dict, model_input):
    script, program = nodes.export_model(state_dict, SPEC, LABEL_MAP)
    report = nodes.verify_exports(script, program, state_dict, SPEC, LABEL_MAP, model_input, {},
                                  {"batch_sizes": [1, 3]})
    assert report["samples"] == 8
    assert report["within_tolerance"]
    assert set(report["max_abs_difference"]["exported_program"]) == {"batch_size_1",
                                                                      "batch_size_3"}


def test_an_export_of_other_weights_fails_the_check(state_dict, model_input):
    torch.manual_seed(1)
    other = build_model("small_cnn", 2, 1, width=4).state_dict()
    script, program = nodes.export_model(other, SPEC, LABEL_MAP)
    with pytest.raises(ValueError, match=r"export\.tolerance"):
        nodes.verify_exports(script, program, state_dict, SPEC, LABEL_MAP, model_input, {}, {})


def test_exports_are_checked_on_the_samples_of_a_torchvision_dataset(state_dict):
    """The test images are read as training read them: here FakeData's samples."""
    data = {"source": "torchvision",
            "torchvision": {"name": "FakeData", "kwargs": {"size": 6, "image_size": [1, 8, 8]}}}
    model_input = pd.DataFrame({"path": [f"torchvision://FakeData/all/{i}" for i in range(6)],
                                "split": ["test"] * 5 + ["train"]})
    script, program = nodes.export_model(state_dict, SPEC, LABEL_MAP)
    report = nodes.verify_exports(script, program, state_dict, SPEC, LABEL_MAP, model_input,
                                  data, {"batch_sizes": [2]})
    assert report["samples"] == 5
    assert report["within_tolerance"]
