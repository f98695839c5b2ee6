"""The parameters checked at the door, before any data is read."""

from __future__ import annotations

import pytest

from kedro_torch.pytorch.checks import validate_parameters
from kedro_torch.pytorch.config import ParameterError


def test_new_sections_are_validated_at_the_door():
    with pytest.raises(ParameterError, match=r"export\.tolerance"):
        validate_parameters({"export": {"tolerance": -1}}, {"export"})
    validate_parameters({}, {"evaluation", "mlflow", "inference", "export"})


def test_an_unknown_transform_name_stops_the_run_at_the_door():
    parameters = {"data": {"transforms": {"eval": [{"name": "CenterCrop", "kwargs": {"size": 8}},
                                                   {"name": "CentreCrop"}]}}}
    with pytest.raises(ValueError, match=r"data\.transforms\.eval\[1\]\.name: unknown name"):
        validate_parameters(parameters, {"data"})


def test_transform_arguments_are_tried_at_the_door():
    parameters = {"data": {"transforms": {"train_batch": [{"name": "MixUp",
                                                           "kwargs": {"alpha": -1}}]}}}
    with pytest.raises(ValueError, match=r"data\.transforms\.train_batch\[0\] \(MixUp\)"):
        validate_parameters(parameters, {"data"})
