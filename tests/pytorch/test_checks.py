"""The parameters checked at the door, before any data is read: keys, types, ranges,
names, and the arguments of the optimizer, scheduler and loss, tried on a probe."""

from __future__ import annotations

import pytest
import torch
import yaml

from kedro_torch.pytorch import tasks
from kedro_torch.pytorch.checks import validate_parameters
from kedro_torch.pytorch.config import ParameterError
from kedro_torch.pytorch.optimizers import optimizer_classes
from tests.conftest import PROJECT_ROOT
from tests.pytorch.test_optimizers_and_schedulers import OPTIMIZER_KWARGS, SCHEDULERS

CONF = PROJECT_ROOT / "conf" / "base"


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
    with pytest.raises(ValueError,
                       match=r"data\.transforms\.train_batch\[0\]\.kwargs\.alpha: MixUp"):
        validate_parameters(parameters, {"data"})


def training(**settings) -> dict:
    return {"training": settings}


@pytest.mark.parametrize("monitor", tasks.monitors())
def test_every_metric_an_epoch_records_may_be_monitored(monitor):
    validate_parameters(training(monitor=monitor), {"training"})


def test_a_metric_no_epoch_records_is_refused_even_when_nothing_monitors_it():
    with pytest.raises(ParameterError, match=r"^training\.monitor must be one of train_loss, "
                       r"train_accuracy, val_loss, val_accuracy, .*got 'val_f1'"):
        validate_parameters(training(monitor="val_f1"), {"training"})


def test_a_validation_metric_without_a_validation_split_is_refused_where_it_is_needed():
    no_val = {"data": {"split": {"train": 0.85, "val": 0}}}
    validate_parameters(no_val, {"data", "training"})  # nothing monitors it
    for needs in ({"keep_best": True}, {"scheduler": {"name": "ReduceLROnPlateau"}}):
        with pytest.raises(ParameterError, match=r"^training\.monitor: .* data\.split\.val is 0"):
            validate_parameters(no_val | training(**needs), {"data", "training"})
    validate_parameters(no_val | training(keep_best=True, monitor="train_loss"),
                        {"data", "training"})


@pytest.mark.parametrize(("settings", "message"), [
    # Read only at the scheduler's first step, or the loss's first call.
    ({"scheduler": {"kwargs": {"T_max": "abc"}}},
     r"^training\.scheduler\.kwargs\.T_max: a step of CosineAnnealingLR failed"),
    ({"scheduler": {"name": "ReduceLROnPlateau", "kwargs": {"patience": "abc"}}},
     r"^training\.scheduler\.kwargs\.patience: a step of ReduceLROnPlateau failed"),
    ({"loss": {"kwargs": {"label_smoothing": "abc"}}},
     r"^training\.loss\.kwargs\.label_smoothing: CrossEntropyLoss on outputs and class-index "
     r"targets failed"),
    ({"loss": {"name": "BCEWithLogitsLoss"}},
     r"^training\.loss\.name: BCEWithLogitsLoss on outputs and class-index targets failed"),
    # Refused as the class is built.
    ({"optimizer": {"kwargs": {"betas": [0.9]}}}, r"^training\.optimizer\.kwargs\.betas: AdamW\("),
    ({"optimizer": {"name": "Muon", "fallback": {"name": "AdamW", "kwargs": {"lr": "abc"}}}},
     r"^training\.optimizer\.fallback\.kwargs\.lr: AdamW\(lr='abc'\) failed"),
])
def test_arguments_are_tried_on_a_probe_at_the_door(settings, message):
    with pytest.raises(ValueError, match=message):
        validate_parameters(training(**settings), {"training"})


def test_the_loss_is_tried_on_the_targets_of_training_and_of_validation():
    """After MixUp a loss gets soft targets in training, but class indices in validation."""
    mixed = {"data": {"transforms": {"train_batch": [{"name": "MixUp"}]}}}
    with pytest.raises(ParameterError, match=r"NLLLoss on outputs and soft \(MixUp/CutMix\)"):
        validate_parameters(mixed | training(loss={"name": "NLLLoss"}), {"data", "training"})
    with pytest.raises(ParameterError, match=r"BCEWithLogitsLoss on outputs and class-index"):
        validate_parameters(mixed | training(loss={"name": "BCEWithLogitsLoss"}),
                            {"data", "training"})
    no_val = {"data": {**mixed["data"], "split": {"train": 0.85, "val": 0}}}
    validate_parameters(no_val | training(loss={"name": "BCEWithLogitsLoss"}),
                        {"data", "training"})


@pytest.mark.parametrize("name", sorted(optimizer_classes()))
def test_every_optimizer_the_engine_trains_with_passes_the_door(name):
    kwargs = OPTIMIZER_KWARGS.get(name, {"lr": 0.01})
    validate_parameters(training(optimizer={"name": name, "kwargs": kwargs}), {"training"})


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_every_scheduler_the_engine_trains_with_passes_the_door(name):
    scheduler = {"name": name, "kwargs": SCHEDULERS[name][0]}
    validate_parameters(training(scheduler=scheduler, epochs=3), {"training"})


def test_a_null_kwarg_takes_away_the_yaml_default_the_class_refuses():
    """``--params training.optimizer.name=Rprop,training.optimizer.kwargs.weight_decay=null``
    as Kedro merges it into the project's parameters: the default weight_decay stays in
    the mapping, as None."""
    parameters = yaml.safe_load((CONF / "parameters_training.yml").read_text())
    optimizer = parameters["training"]["optimizer"]
    optimizer["name"] = "Rprop"
    with pytest.raises(ValueError, match=r"unexpected keyword argument 'weight_decay'"):
        validate_parameters(parameters, {"data", "model", "training"})
    optimizer["kwargs"]["weight_decay"] = None
    validate_parameters(parameters, {"data", "model", "training"})


def test_the_parsed_sections_come_back_with_their_defaults():
    configs = validate_parameters({"training": {"epochs": 3}}, {"data", "training"})
    assert configs["training"].epochs == 3
    assert configs["data"].source == "folder"


def test_the_probe_leaves_the_random_state_alone():
    torch.manual_seed(0)
    validate_parameters({}, {"training"})
    after = torch.rand(3)
    torch.manual_seed(0)
    assert torch.equal(torch.rand(3), after)
