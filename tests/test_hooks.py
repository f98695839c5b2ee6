"""Parameters are validated before a run opens anything: the data section's names too."""

import pytest

from kedro_torch.hooks import validate_parameters


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
