"""Parameters are checked at the door, with errors naming the full YAML key."""

from __future__ import annotations

import re

import pytest

from kedro_torch.pytorch.config import (
    DataConfig,
    EvaluationConfig,
    ExportConfig,
    InferenceConfig,
    MlflowConfig,
    ModelConfig,
    NamedSpec,
    NormalizeConfig,
    ParameterError,
    SplitConfig,
    TrainingConfig,
    parse,
)


def test_missing_sections_give_the_documented_defaults():
    assert parse(DataConfig, None, "data") == DataConfig()
    assert parse(ModelConfig, {}, "model") == ModelConfig()
    training = parse(TrainingConfig, None, "training")
    assert training.epochs == 10
    assert training.device == "auto"
    assert training.optimizer.name == "AdamW"
    assert training.optimizer.kwargs == {"lr": 0.003, "weight_decay": 0.0001}
    assert training.optimizer.fallback == NamedSpec("AdamW", {})
    assert (training.scheduler.name, training.scheduler.kwargs) == ("CosineAnnealingLR", {})
    assert training.loss.name is None  # the task's own


def test_nested_sections_become_dataclasses():
    data = parse(
        DataConfig,
        {
            "channels": 3,
            "normalize": {"mean": [0, 0.5, 1], "std": [1, 1, 1]},
            "split": {"train": 0.8, "val": 0.1, "test": 0.1, "seed": 7},
        },
        "data",
    )
    assert data.normalize == NormalizeConfig(mean=[0.0, 0.5, 1.0], std=[1.0, 1.0, 1.0])
    # YAML integers are accepted where floats are expected, and become floats.
    assert all(isinstance(value, float) for value in data.normalize.mean)
    assert data.split == SplitConfig(train=0.8, val=0.1, test=0.1, seed=7)
    # Keys not given keep their defaults.
    assert data.image_size == 16

    training = parse(
        TrainingConfig,
        {"optimizer": {"name": "SGD", "kwargs": {"lr": 0.1, "momentum": 0.9}},
         "scheduler": {"name": None}},
        "training",
    )
    assert (training.optimizer.name, training.optimizer.kwargs) == (
        "SGD", {"lr": 0.1, "momentum": 0.9}
    )
    assert (training.scheduler.name, training.scheduler.kwargs) == (None, {})


def test_unknown_key_is_named_with_its_path_and_valid_keys_listed():
    with pytest.raises(ParameterError) as error:
        parse(TrainingConfig, {"optimzer": {"name": "SGD"}, "epochs": 2}, "training")
    message = str(error.value)
    assert "training.optimzer" in message
    for valid in ("epochs", "seed", "device", "optimizer", "scheduler", "loss"):
        assert valid in message


def test_unknown_nested_key_is_named_with_its_full_path():
    with pytest.raises(ParameterError, match=r"training\.optimizer\.nmae"):
        parse(TrainingConfig, {"optimizer": {"nmae": "SGD"}}, "training")
    with pytest.raises(ParameterError, match=r"data\.split\.tset"):
        parse(DataConfig, {"split": {"tset": 0.15}}, "data")


def test_every_unknown_key_is_listed():
    with pytest.raises(ParameterError) as error:
        parse(ModelConfig, {"nam": "x", "kwarg": {}}, "model")
    assert "model.kwarg" in str(error.value)
    assert "model.nam" in str(error.value)


@pytest.mark.parametrize(
    ("cls", "data", "key", "expected"),
    [
        (TrainingConfig, {"optimizer": {"name": 3}}, "training",
         "training.optimizer.name must be str, got int"),
        (TrainingConfig, {"epochs": "10"}, "training", "training.epochs must be int, got str"),
        # bool is an int subclass in Python, but `epochs: true` is a mistake.
        (TrainingConfig, {"epochs": True}, "training", "training.epochs must be int, got bool"),
        (TrainingConfig, {"progress_bar": "yes"}, "training",
         "training.progress_bar must be bool, got str"),
        (DataConfig, {"batch_size": 3.5}, "data", "data.batch_size must be int, got float"),
        (DataConfig, {"normalize": {"mean": [0.5, "x"]}}, "data",
         "data.normalize.mean[1] must be float, got str"),
        (DataConfig, {"normalize": {"std": 0.5}}, "data", "data.normalize.std must be a list"),
        (ModelConfig, {"kwargs": [1, 2]}, "model", "model.kwargs must be a mapping"),
        (TrainingConfig, {"optimizer": "Adam"}, "training",
         "training.optimizer must be a mapping, got str"),
    ],
)
def test_type_errors_name_the_key(cls, data, key, expected):
    with pytest.raises(ParameterError, match=re.escape(expected)):
        parse(cls, data, key)


def test_optional_int_accepts_null_and_checks_values():
    assert parse(DataConfig, {"eval_batch_size": None}, "data").eval_batch_size is None
    assert parse(DataConfig, {"eval_batch_size": 8}, "data").eval_batch_size == 8
    with pytest.raises(ParameterError, match=r"data\.eval_batch_size must be int"):
        parse(DataConfig, {"eval_batch_size": "8"}, "data")
    with pytest.raises(ParameterError, match=r"data\.eval_batch_size must be greater than 0"):
        parse(DataConfig, {"eval_batch_size": 0}, "data")


def test_literal_choices_are_listed():
    with pytest.raises(ParameterError) as error:
        parse(TrainingConfig, {"device": "gpu"}, "training")
    message = str(error.value)
    assert "training.device" in message
    assert "'gpu'" in message
    for choice in ("'auto'", "'cpu'", "'cuda'", "'mps'"):
        assert choice in message
    with pytest.raises(ParameterError, match=r"data\.channels must be one of 1, 3, got 2"):
        parse(DataConfig, {"channels": 2}, "data")
    assert parse(TrainingConfig, {"device": "cpu"}, "training").device == "cpu"


@pytest.mark.parametrize("channels", [True, 3.0])
def test_literal_rejects_values_only_equal_to_a_choice(channels):
    with pytest.raises(ParameterError, match=r"data\.channels"):
        parse(DataConfig, {"channels": channels}, "data")


@pytest.mark.parametrize(
    "split",
    [
        {"train": 0.5, "val": 0.3, "test": 0.3},
        {"train": 0.6, "val": 0.1, "test": 0.1},
    ],
)
def test_split_fractions_must_sum_to_one(split):
    with pytest.raises(ParameterError, match=r"data\.split\.train \+ data\.split\.val \+ "
                                             r"data\.split\.test must sum to 1"):
        parse(DataConfig, {"split": split}, "data")


def test_split_fractions_that_sum_to_one_with_float_noise_are_accepted():
    # 0.7 + 0.2 + 0.1 is 0.9999999999999999 in floating point.
    config = parse(DataConfig, {"split": {"train": 0.7, "val": 0.2, "test": 0.1}}, "data")
    assert config.split.val == 0.2
    # val may be 0: no validation split.
    assert parse(DataConfig, {"split": {"train": 0.8, "val": 0, "test": 0.2}}, "data")


def test_split_fraction_out_of_range_or_empty_train_test():
    with pytest.raises(ParameterError, match=r"data\.split\.val must lie in \[0, 1\]"):
        parse(DataConfig, {"split": {"train": 0.9, "val": -0.1, "test": 0.2}}, "data")
    with pytest.raises(ParameterError, match=r"data\.split\.test must be greater than 0"):
        parse(DataConfig, {"split": {"train": 0.8, "val": 0.2, "test": 0}}, "data")


@pytest.mark.parametrize(
    ("channels", "values", "ok"),
    [(1, [0.5], True), (1, [0.5, 0.5, 0.5], False), (3, [0.5], True),
     (3, [0.4, 0.5, 0.6], True), (3, [0.4, 0.5], False)],
)
def test_normalize_length_must_match_channels(channels, values, ok):
    data = {"channels": channels, "normalize": {"mean": values, "std": [1.0]}}
    if ok:
        assert parse(DataConfig, data, "data").normalize.mean == values
    else:
        with pytest.raises(ParameterError,
                           match=rf"data\.normalize\.mean needs 1 or {channels} values"):
            parse(DataConfig, data, "data")


def test_normalize_std_must_be_positive():
    with pytest.raises(ParameterError, match=r"data\.normalize\.std values must be greater"):
        parse(DataConfig, {"normalize": {"std": [0.0]}}, "data")


def test_range_checks_name_the_key():
    with pytest.raises(ParameterError, match=r"training\.epochs must be greater than 0, got 0"):
        parse(TrainingConfig, {"epochs": 0}, "training")
    with pytest.raises(ParameterError, match=r"data\.num_workers must be 0 or more"):
        parse(DataConfig, {"num_workers": -1}, "data")
    with pytest.raises(ParameterError, match=r"data\.image_size must be greater than 0"):
        parse(DataConfig, {"image_size": 0}, "data")


def test_optimizer_needs_a_name_but_scheduler_and_loss_may_be_null():
    with pytest.raises(ParameterError, match=r"training\.optimizer\.name is required"):
        parse(TrainingConfig, {"optimizer": {"name": None}}, "training")
    assert parse(TrainingConfig, {"scheduler": {"name": None}}, "training").scheduler.name is None
    assert parse(TrainingConfig, {"loss": {"name": None}}, "training").loss.name is None


def test_section_without_name_key_keeps_the_default_name():
    training = parse(TrainingConfig, {"optimizer": {"kwargs": {"lr": 0.1}}}, "training")
    assert (training.optimizer.name, training.optimizer.kwargs) == ("AdamW", {"lr": 0.1})
    with pytest.raises(ParameterError, match=r"training\.optimizer\.name is required"):
        parse(TrainingConfig, {"optimizer": {"name": None}}, "training")


def test_configs_are_frozen():
    config = parse(TrainingConfig, {}, "training")
    with pytest.raises(AttributeError):
        config.epochs = 3


def test_evaluation_mlflow_inference_export_defaults():
    assert parse(EvaluationConfig, None, "evaluation") == EvaluationConfig(
        top_k=3, calibration_bins=10, gallery_size=8
    )
    assert parse(MlflowConfig, None, "mlflow").registered_model_name == "kedro_torch"
    assert parse(InferenceConfig, None, "inference") == InferenceConfig(top_k=3, batch_size=64)
    assert parse(ExportConfig, None, "export") == ExportConfig(batch_sizes=[1, 7],
                                                               tolerance=1e-5)


@pytest.mark.parametrize(
    ("cls", "key", "data", "message"),
    [
        (EvaluationConfig, "evaluation", {"top_k": 0}, "evaluation.top_k must be greater than 0"),
        (EvaluationConfig, "evaluation", {"bins": 5}, "unknown parameter evaluation.bins"),
        (MlflowConfig, "mlflow", {"registered_model_name": " "},
         "mlflow.registered_model_name must not be empty"),
        (MlflowConfig, "mlflow", {"system_metrics_interval": -1},
         "mlflow.system_metrics_interval must be greater than 0"),
        (InferenceConfig, "inference", {"batch_size": "64"}, "inference.batch_size must be int"),
        (ExportConfig, "export", {"batch_sizes": [1, 0]},
         "export.batch_sizes[1] must be greater than 0"),
        (ExportConfig, "export", {"batch_sizes": []}, "export.batch_sizes needs at least one"),
        (ExportConfig, "export", {"tolerance": -0.1}, "export.tolerance must be 0 or more"),
    ],
)
def test_new_sections_name_the_key_of_a_bad_value(cls, key, data, message):
    with pytest.raises(ParameterError, match=re.escape(message)):
        parse(cls, data, key)


def test_system_metrics_can_be_switched_off():
    assert parse(MlflowConfig, {"system_metrics_interval": None}, "mlflow") == MlflowConfig(
        system_metrics_interval=None
    )


# --- data keys of the data layer ------------------------------------------------------


def test_data_transforms_become_named_specs():
    data = parse(
        DataConfig,
        {"transforms": {"train": [{"name": "RandomHorizontalFlip"},
                                  {"name": "RandAugment", "kwargs": {"num_ops": 2}}],
                        "train_batch": [{"name": "MixUp", "kwargs": {"alpha": 0.2}}]}},
        "data",
    )
    assert data.transforms.train == [NamedSpec("RandomHorizontalFlip", {}),
                                     NamedSpec("RandAugment", {"num_ops": 2})]
    assert data.transforms.eval == []
    assert data.transforms.train_batch == [NamedSpec("MixUp", {"alpha": 0.2})]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"transforms": {"train": [{"kwargs": {"p": 1}}]}},
         "data.transforms.train[0].name is required"),
        ({"transforms": {"train": ["RandomHorizontalFlip"]}},
         "data.transforms.train[0] must be a mapping"),
        ({"source": "folders"}, "data.source: unknown source 'folders'. Valid: folder, "),
        ({"task": "detection"}, "data.task: unknown task 'detection'. Valid: "),
        ({"source": "table"}, "data.task image_classification reads folder or manifest or "),
        ({"task": "tabular_regression", "source": "table"}, "data.table.target is required"),
        ({"cache": "ram"}, "data.cache must be one of 'none', 'memory', 'disk'"),
        ({"sampler": "weighted"}, "data.sampler must be one of 'shuffle', 'balanced'"),
        ({"max_bad_fraction": 1.5}, "data.max_bad_fraction must lie in [0, 1]"),
        ({"load_size": 0}, "data.load_size must be greater than 0"),
        ({"prefetch_factor": 0}, "data.prefetch_factor must be greater than 0"),
        ({"manifest": {"path_col": "file"}}, "unknown parameter data.manifest.path_col"),
        ({"split": {"group_column": 3}}, "data.split.group_column must be str"),
        ({"normalize": {"mean": None, "std": [0.5]}},
         "data.normalize.mean and data.normalize.std must both be given, or both be null"),
        ({"normalize_on": "gpu"}, "data.normalize_on must be one of 'loader', 'device'"),
        ({"normalize_on": "device",
          "transforms": {"train_batch": [{"name": "MixUp", "kwargs": {"alpha": 0.2}}]}},
         "data.normalize_on: device leaves batches as uint8 pixels, but "
         "data.transforms.train_batch (MixUp, CutMix)"),
    ],
)
def test_data_layer_keys_are_checked(data, expected):
    with pytest.raises(ParameterError, match=re.escape(expected)):
        parse(DataConfig, data, "data")


def test_null_normalization_means_computed_and_null_workers_means_every_cpu():
    config = parse(DataConfig, {"normalize": {"mean": None, "std": None},
                                "num_workers": None}, "data")
    assert config.normalize.computed
    assert config.num_workers is None
    assert parse(DataConfig, {"image_size": 24}, "data").decode_size == 24
    assert parse(DataConfig, {"image_size": 24, "load_size": 32}, "data").decode_size == 32
